"""Lua scripts of the request path, and the reliable-pop operations around them.

Keys (all of one ``{dep|node}`` hash tag): ``queue``, ``bulk:queue``, ``processing:<allocation>``, ``stats``
and the result cache under ``cache``. Each script touches one tag only, so it runs
unchanged on Redis Cluster.

- ``DISPATCH``: cache lookup (a hit is touched, counted and returned: no worker needed),
  else the bounded LPUSH; a full queue counts a rejection. One round trip.
- ``TAKE``: move up to N items into an allocation's processing list (batching), at most its
  share of the queue; the interactive lane first, the bulk lane when it is empty or when the
  allocation's bounded bulk share is due (the search lane); with a budget, no more than fit
  a padded-token budget (documents x the longest estimated row).
- ``COMPLETE``: drop the processing list, cache the new results (while Redis has headroom),
  record stats.
- ``REQUEUE``: move a list's items back to a queue (an allocation's own work after a Redis error).
- ``REQUEUE_COUNTED``: the same for the work of a worker that died holding it: each request's
  delivery count goes up by one (``InferRequest.deliveries``; a worker answers a request past
  its ``max_redeliveries`` with an error instead of running it again).
"""

from __future__ import annotations

from shared.lua import compose

# KEYS: queue, stats.  ARGV: cache_prefix, digest, policy, now_ms, start_ms, capacity,
# payload, count_rejection (1/0).  Returns {0} queued, {1, value} cache hit, {2} full.
DISPATCH = compose(
    "cache",
    "stats",
    "queue",
    body="""
local queue_key, stats_key = KEYS[1], KEYS[2]
local cache_prefix, digest, policy = ARGV[1], ARGV[2], ARGV[3]
local now_ms, start_ms, capacity = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
if digest ~= '' then
  local value = cache_get(cache_prefix, digest, policy, now_ms)
  if value then
    stats_record(stats_key, start_ms, now_ms, 1, 1, 0, 0, 0)
    return {1, value}
  end
end
if queue_push_bounded(queue_key, capacity, ARGV[7]) == 1 then
  return {0}
end
if ARGV[8] == '1' then
  stats_incr(stats_key, 'rejected_execution_count', 1)
end
return {2}
""",
)

# KEYS: queue (interactive), processing, bulk queue.  ARGV: n, peers (allocations serving the
# queues), bulk_n, bulk_first (1/0).  The search lane: up to n interactive items, but no more
# than a 1/peers share of what is queued; only when there are none (or ``bulk_first``, the
# allocation's bounded bulk share) up to bulk_n bulk items, at most a 1/peers share of the bulk
# lane. A take never mixes the lanes. Returns {interactive items, bulk items, interactive left,
# bulk left}; the items are in the processing list.
# Optional ARGV 5-8: budget_tokens, overhead_bytes, bytes_per_token, max_row_tokens
# (workers.batch_plan.TokenEstimate): a lane's take then also stops before items x the longest
# estimated row would pass the budget (shared/lua/queue.lua queue_take_tokens).
TAKE = compose(
    "queue",
    body="""
local n, peers = tonumber(ARGV[1]), tonumber(ARGV[2] or '1')
local bulk_n, bulk_first = tonumber(ARGV[3] or '0'), ARGV[4] == '1'
local function share(key, most)
  local queued = redis.call('LLEN', key)
  if peers > 1 then most = math.min(most, math.ceil(queued / peers)) end
  return math.min(most, queued), queued
end
local budget = tonumber(ARGV[5] or '0')
local function take(key, count)
  if budget > 0 then
    return queue_take_tokens(key, KEYS[2], count, budget, tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]))
  end
  return queue_take(key, KEYS[2], count)
end
local interactive, bulk = {}, {}
local ni, li = share(KEYS[1], n)
local nb, lb = share(KEYS[3], bulk_n)
if nb > 0 and (ni == 0 or bulk_first) then
  bulk = take(KEYS[3], nb)
else
  interactive = take(KEYS[1], ni)
end
return {interactive, bulk, li - #interactive, lb - #bulk}
""",
)

# KEYS: stats, processing.  ARGV: cache_prefix, budget_bytes, policy, now_ms, start_ms,
# results, time_ms_sum, errors, memory_ceiling_bytes (0: none), n, then n stats field/increment
# pairs (histograms, shared.histograms), then digest/value pairs to cache.
# The processing list goes first: a write that frees memory, so the bookkeeping after it is never
# refused for memory (Redis checks maxmemory only before a script's first write), and the cache
# inserts grow Redis only under the ceiling (cache.lua), never into what queues and state need.
COMPLETE = compose(
    "cache",
    "stats",
    body="""
local stats_key, processing_key = KEYS[1], KEYS[2]
local cache_prefix, budget, policy = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local now_ms, start_ms = tonumber(ARGV[4]), tonumber(ARGV[5])
local results, time_sum, errors = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
redis.call('DEL', processing_key)
local first_pair = stats_add(stats_key, ARGV, 11, tonumber(ARGV[10]))
if budget > 0 then
  local headroom = cache_headroom(ARGV[9], now_ms)
  for i = first_pair, #ARGV, 2 do
    cache_put(cache_prefix, ARGV[i], ARGV[i + 1], budget, policy, now_ms, headroom)
  end
  cache_save_headroom(headroom, cache_prefix .. ':meta')
elseif #ARGV >= first_pair then
  cache_trim(cache_prefix, 0, 64)  -- the budget went to 0: empty the cache, a little per batch
end
if results > 0 or errors > 0 then
  stats_record(stats_key, start_ms, now_ms, results, 0, time_sum, time_sum, errors)
end
return 1
""",
)

# KEYS: src, dst.  Returns the number of items moved.
REQUEUE = compose("queue", body="return queue_requeue(KEYS[1], KEYS[2])")

# KEYS: src, dst.  Returns the number of items moved.
REQUEUE_COUNTED = compose("queue", body="return queue_requeue_counted(KEYS[1], KEYS[2])")

DISPATCH_QUEUED, DISPATCH_HIT, DISPATCH_FULL = 0, 1, 2

# Lanes: the queue a request waits in (``keys.queue`` / ``keys.bulk_queue``).
INTERACTIVE, BULK = "interactive", "bulk"
LANES = (INTERACTIVE, BULK)


def lane_for_input_type(input_type: str | None) -> str:
    """The lane of an inference-endpoint call: ``ingest`` is bulk; ``search``, unset and the
    rest are interactive."""
    return BULK if input_type is not None and input_type.lower() == "ingest" else INTERACTIVE
