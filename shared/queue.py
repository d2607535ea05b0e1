"""Lua scripts of the request path, and the reliable-pop operations around them.

Keys (all of one ``{dep|node}`` hash tag): ``queue``, ``processing:<allocation>``, ``stats``
and the result cache under ``cache``. Each script touches one tag only, so it runs
unchanged on Redis Cluster.

- ``DISPATCH``: cache lookup (a hit is touched, counted and returned: no worker needed),
  else the bounded LPUSH; a full queue counts a rejection. One round trip.
- ``TAKE``: move up to N more items into an allocation's processing list (batching), at
  most its share of the queue.
- ``COMPLETE``: cache the new results, record stats, drop the processing list.
- ``REQUEUE``: move a list's items back to a queue (a dead or restarted node's work).
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

# KEYS: queue, processing.  ARGV: n, peers (allocations serving the queue).  Moves up to n
# items, but no more than a 1/peers share of what is queued; returns the items moved.
TAKE = compose(
    "queue",
    body="""
local n, peers = tonumber(ARGV[1]), tonumber(ARGV[2] or '1')
if peers > 1 then
  n = math.min(n, math.ceil(redis.call('LLEN', KEYS[1]) / peers))
end
return queue_take(KEYS[1], KEYS[2], n)
""",
)

# KEYS: stats, processing.  ARGV: cache_prefix, budget_bytes, policy, now_ms, start_ms,
# results, time_ms_sum, errors, n, then n stats field/increment pairs (histograms,
# shared.histograms), then digest/value pairs to cache.
COMPLETE = compose(
    "cache",
    "stats",
    body="""
local stats_key, processing_key = KEYS[1], KEYS[2]
local cache_prefix, budget, policy = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local now_ms, start_ms = tonumber(ARGV[4]), tonumber(ARGV[5])
local results, time_sum, errors = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local first_pair = stats_add(stats_key, ARGV, 10, tonumber(ARGV[9]))
if budget > 0 then
  for i = first_pair, #ARGV, 2 do
    cache_put(cache_prefix, ARGV[i], ARGV[i + 1], budget, policy, now_ms)
  end
end
if results > 0 or errors > 0 then
  stats_record(stats_key, start_ms, now_ms, results, 0, time_sum, time_sum, errors)
end
redis.call('DEL', processing_key)
return 1
""",
)

# KEYS: src, dst.  Returns the number of items moved.
REQUEUE = compose("queue", body="return queue_requeue(KEYS[1], KEYS[2])")

DISPATCH_QUEUED, DISPATCH_HIT, DISPATCH_FULL = 0, 1, 2
