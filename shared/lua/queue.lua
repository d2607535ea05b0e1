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

-- Like queue_take, but within a padded-token budget: items are taken oldest first while
-- (items x the longest estimated row) stays within budget, counting what processing_key
-- already holds (the item just popped). A row's tokens are estimated from the item's size:
-- min(max_row, ceil((#item - overhead) / bytes_per_token) + 2) (workers/batch_plan.py).
local function queue_take_tokens(queue_key, processing_key, n, budget, overhead, bytes_per_token, max_row)
  local function estimate(item)
    return math.min(max_row, math.ceil(math.max(#item - overhead, 0) / bytes_per_token) + 2)
  end
  local count, longest = 0, 0
  for _, held in ipairs(redis.call('LRANGE', processing_key, 0, -1)) do
    count = count + 1
    longest = math.max(longest, estimate(held))
  end
  local items = {}
  if n <= 0 then return items end
  local window = redis.call('LRANGE', queue_key, -n, -1)
  for i = #window, 1, -1 do
    local grown = math.max(longest, estimate(window[i]))
    if count > 0 and (count + 1) * grown > budget then break end
    items[#items + 1] = redis.call('LMOVE', queue_key, processing_key, 'RIGHT', 'LEFT')
    count, longest = count + 1, grown
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

-- A request's delivery count, raised by one: requests are msgpack maps, and the count is
-- their last entry "deliveries" (a positive fixint), appended on the first redelivery. What
-- is not such a map (or is past 127) goes back unchanged.
local DELIVERIES_ENTRY = '\170deliveries'  -- fixstr of 10 bytes (0xa0 + 10)
local function queue_count_delivery(item)
  local ok, message = pcall(cmsgpack.unpack, item)
  if not ok or type(message) ~= 'table' then return item end
  local count = tonumber(message['deliveries']) or 0
  if count > 0 then
    if count < 127 and string.sub(item, -12) == DELIVERIES_ENTRY .. string.char(count) then
      return string.sub(item, 1, -2) .. string.char(count + 1)
    end
    return item
  end
  local head = string.byte(item, 1)
  if head >= 128 and head < 143 then  -- fixmap of fewer than 15 entries
    return string.char(head + 1) .. string.sub(item, 2) .. DELIVERIES_ENTRY .. '\1'
  elseif head == 222 then  -- map16
    local n = string.byte(item, 2) * 256 + string.byte(item, 3) + 1
    return string.char(222, math.floor(n / 256), n % 256) .. string.sub(item, 4) .. DELIVERIES_ENTRY .. '\1'
  end
  return item
end

-- queue_requeue for the work of a worker that died holding it: each item counts a delivery.
local function queue_requeue_counted(src_key, dst_key)
  local moved = 0
  while true do
    local item = redis.call('LPOP', src_key)
    if not item then break end
    redis.call('RPUSH', dst_key, queue_count_delivery(item))
    moved = moved + 1
  end
  return moved
end
