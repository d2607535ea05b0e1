-- Bounded per-(deployment, node) request queues with reliable pop.
-- Producers LPUSH; allocations move items from the right into their processing list
-- (so a dead worker's in-flight items can be put back), and delete that list once
-- every item in it has been answered.

local function queue_push_bounded(queue_key, capacity, payload)
  if redis.call('LLEN', queue_key) >= capacity then
    return 0
  end
  redis.call('LPUSH', queue_key, payload)
  return 1
end

local function queue_take(queue_key, processing_key, n)
  local items = {}
  for i = 1, n do
    local item = redis.call('LMOVE', queue_key, processing_key, 'RIGHT', 'LEFT')
    if not item then break end
    items[#items + 1] = item
  end
  return items
end

-- Put every item of src back at the head of dst (the end that is served next), oldest first.
local function queue_requeue(src_key, dst_key)
  local moved = 0
  while true do
    local item = redis.call('LMOVE', src_key, dst_key, 'LEFT', 'RIGHT')
    if not item then break end
    moved = moved + 1
  end
  return moved
end
