-- Result cache of one (deployment, node), held in Redis and bounded in bytes.
--
-- A fragment: `local function`s only, composed into scripts by shared.lua.compose("cache", ...,
-- body=...). Every function name starts with `cache_`.
--
-- Keys (shared.keys.cache_index / cache_meta / cache_entries: one {dep|node} hash tag, so one
-- cluster slot), passed in by the scripts that call these functions (every script declares every
-- key it touches in KEYS; nothing here builds a key):
--   entries  hash    digest -> HEADER .. value
--   idx      zset    member HEADER .. digest; score = LFU count or LRU tick;
--                    ZPOPMIN gives the next entry to evict
--   meta     hash    bytes, entries, hits, misses, evictions, stored,
--                    rejected_too_large, no_headroom, last_evicted_count, tick,
--                    headroom_bytes, headroom_ms (see Headroom)
--
-- HEADER (26 bytes, fixed width, decimal) = 10 digits of (9999999999 - footprint_bytes)
-- followed by 16 digits of the insert tick. Within one score the zset orders members
-- lexicographically, so equal LFU counts evict the largest footprint first, then the oldest
-- insert (then the digest). The header doubles as the per-entry record of the footprint that was
-- added to meta.bytes, so an eviction subtracts exactly what the insert added. The entry string
-- carries the same header, so a hit can name its zset member without another lookup.
--
-- Tick: max(now_ms * 1000, last tick + 1), kept in meta.tick: strictly increasing per cache and
-- close to wall-clock microseconds. The LRU score is the tick of the last access.
--
-- Footprint of an entry (what meta.bytes counts; see cache_entry_footprint): the field's buffer
-- (the digest) + the value's buffer (SDS header + 26-byte header + value + NUL, each rounded up to
-- jemalloc's size class, as MEMORY USAGE reports it) + zset member bytes + 8 (the score) +
-- cache_overhead_bytes(), a constant for what Redis adds per entry and that does not grow with
-- the value (the entries hash's dict entry and bucket, the zset's dict entry, bucket and skiplist
-- node, the member's SDS header and rounding). It was calibrated against redis-server 7.0.15
-- (jemalloc 5.3) by filling caches with values of 1-40 B up to 20-60 KB and solving for the
-- constant that makes meta.bytes equal sum(MEMORY USAGE key SAMPLES 0) over the cache's three
-- keys: 117-137 across caches of 200-3000 entries (errors under 2%); `python -m
-- benchmarks.cache_policy --calibrate` repeats it. Small hashes and zsets
-- (up to 128 entries, short values) are listpacks, cheaper than assumed here: small caches are
-- over-counted (never under).
--
-- Headroom (docs/operations-redis-memory.md): an insert that would grow the cache (it is under
-- its budget, so nothing is evicted to make room) first checks that Redis's used_memory plus
-- the entry stays under `ceiling_bytes` (maxmemory minus what queues and state are guaranteed).
-- used_memory comes from INFO memory at most every 100 ms per cache (the room left is kept in
-- meta.headroom_bytes/headroom_ms and lowered by each insert); never while the cache is full and
-- inserts only replace evicted bytes. What other writers add within those 100 ms is the
-- reserve's to absorb. Short of headroom (meta.no_headroom counts it) the entry goes
-- in only in place of evicted ones, so Redis does not grow; an empty cache skips it. Queues,
-- replies, heartbeats and state keep the rest.
-- ceiling_bytes <= 0: no limit is known, nothing is checked.
--
-- Numbers handed to redis.call are formatted with "%.0f": Lua 5.1 would otherwise print large
-- ones with 14 significant digits ("1.7e+15") and lose precision.

local function cache_header_bytes()
  return 26
end

local function cache_overhead_bytes()
  return 136
end

local function cache_num(n)
  return string.format("%.0f", n)
end

-- Bytes jemalloc hands out for a request of n bytes: 16-byte steps up to 128, then four size
-- classes per doubling (160, 192, 224, 256, 320, ...). This is what MEMORY USAGE reports for a
-- large string's buffer.
local function cache_alloc_bytes(n)
  if n <= 8 then
    return 8
  end
  if n <= 128 then
    return math.ceil(n / 16) * 16
  end
  local group = 128
  while group * 2 < n do
    group = group * 2
  end
  local step = group / 4
  return math.ceil(n / step) * step
end

-- Bytes of the SDS buffer holding a string of n bytes: its header (3, 5 or 9 bytes by length),
-- the string and a NUL, rounded up to the allocator's size class.
local function cache_sds_bytes(n)
  local sds_header = 9
  if n < 256 then
    sds_header = 3
  elseif n < 65536 then
    sds_header = 5
  end
  return cache_alloc_bytes(sds_header + n + 1)
end

local function cache_entry_footprint(value_bytes, digest_bytes)
  local header = cache_header_bytes()
  return cache_sds_bytes(digest_bytes) + cache_sds_bytes(header + value_bytes) + header + digest_bytes + 8
    + cache_overhead_bytes()
end

local function cache_header(footprint_bytes, tick)
  return string.format("%010.0f%016.0f", 9999999999 - footprint_bytes, tick)
end

local function cache_member_footprint(member)
  return 9999999999 - tonumber(string.sub(member, 1, 10))
end

local function cache_member_digest(member)
  return string.sub(member, cache_header_bytes() + 1)
end

local function cache_next_tick(last_tick, now_ms)
  return math.max(math.floor(now_ms) * 1000, last_tick + 1)
end

local function cache_tick(meta, now_ms)
  local tick = cache_next_tick(tonumber(redis.call("HGET", meta, "tick")) or 0, now_ms)
  redis.call("HSET", meta, "tick", cache_num(tick))
  return tick
end

-- Pop the lowest-scored entries while used_bytes > target_bytes; the caller updates meta.
-- Returns the bytes still used, the number evicted, the last evicted score (nil if none) and
-- whether the index ran dry (then nothing is accounted any more: counters had drifted).
local function cache_evict_until(idx, entries_key, used_bytes, target_bytes)
  local evicted = 0
  local last_score = nil
  while used_bytes > target_bytes do
    local popped = redis.call("ZPOPMIN", idx)
    if popped[1] == nil then
      return 0, evicted, last_score, true
    end
    redis.call("HDEL", entries_key, cache_member_digest(popped[1]))
    used_bytes = math.max(used_bytes - cache_member_footprint(popped[1]), 0)
    evicted = evicted + 1
    last_score = popped[2]
  end
  return used_bytes, evicted, last_score, false
end

-- The stored value on a hit (and the entry's bookkeeping is touched), false on a miss.
-- now_ms: the caller's clock in milliseconds (it drives the LRU ticks).
local function cache_get(idx, meta, entries_key, digest, policy, now_ms)
  local stored = redis.call("HGET", entries_key, digest)
  if stored then
    local member = string.sub(stored, 1, cache_header_bytes()) .. digest
    local indexed
    if policy == "lru" then
      indexed = redis.call("ZADD", idx, "XX", "CH", cache_num(cache_tick(meta, now_ms)), member) == 1
    else
      indexed = redis.call("ZADD", idx, "XX", "INCR", 1, member) ~= false
    end
    if indexed then
      redis.call("HINCRBY", meta, "hits", 1)
      return string.sub(stored, cache_header_bytes() + 1)
    end
    -- an entry nobody accounts for (counters that drifted): drop it
    redis.call("HDEL", entries_key, digest)
  end
  redis.call("HINCRBY", meta, "misses", 1)
  return false
end

-- A headroom tracker for one script run: {ceiling = bytes, now_ms}. The room left under the
-- ceiling is what the cache remembers in meta (headroom_bytes, read at headroom_ms) while that
-- reading is under cache_headroom_max_age_ms() old, else INFO memory again; each insert lowers it
-- by what it adds, and cache_save_headroom writes it back.
local function cache_headroom(ceiling_bytes, now_ms)
  return {ceiling = tonumber(ceiling_bytes) or 0, now_ms = tonumber(now_ms) or 0, room = nil, read_ms = nil}
end

local function cache_headroom_max_age_ms()
  return 100
end

-- Whether `growth_bytes` more fit under the ceiling (and take them if so).
local function cache_take_headroom(headroom, meta, growth_bytes)
  if headroom.ceiling <= 0 or growth_bytes <= 0 then
    return true
  end
  if headroom.room == nil then
    local remembered = redis.call("HMGET", meta, "headroom_bytes", "headroom_ms")
    headroom.room, headroom.read_ms = tonumber(remembered[1]), tonumber(remembered[2])
  end
  if headroom.room == nil or headroom.now_ms - headroom.read_ms >= cache_headroom_max_age_ms()
      or headroom.now_ms < headroom.read_ms then
    local info = redis.call("INFO", "memory")
    local used = tonumber(string.match(info, "used_memory:(%d+)")) or 0
    headroom.room, headroom.read_ms = headroom.ceiling - used, headroom.now_ms
  end
  if growth_bytes > headroom.room then
    return false
  end
  headroom.room = headroom.room - growth_bytes
  return true
end

-- Remember the room left for the next scripts (see cache_headroom): once per script, after its
-- inserts.
local function cache_save_headroom(headroom, meta)
  if headroom.room ~= nil then
    redis.call("HSET", meta, "headroom_bytes", cache_num(headroom.room), "headroom_ms", cache_num(headroom.read_ms))
  end
end

-- Store value under digest, evicting inside this call until it fits in budget_bytes, and only
-- while Redis has headroom (see the top of this file; headroom from cache_headroom, saved with
-- cache_save_headroom after the script's inserts).
-- 1 if the value is in the cache afterwards (stored now or already there), 0 if refused.
local function cache_put(idx, meta, entries_key, digest, value, budget_bytes, policy, now_ms, headroom)
  local footprint = cache_entry_footprint(#value, #digest)
  if budget_bytes <= 0 then
    return 0
  end
  if footprint > budget_bytes then
    redis.call("HINCRBY", meta, "rejected_too_large", 1)
    return 0
  end
  if redis.call("HEXISTS", entries_key, digest) == 1 then
    return 1
  end
  local m = redis.call("HMGET", meta, "bytes", "entries", "evictions", "stored", "tick", "last_evicted_count")
  local entries = tonumber(m[2]) or 0
  local last_evicted_count = tonumber(m[6]) or 0
  local used_before = tonumber(m[1]) or 0
  local limit = budget_bytes
  -- what Redis grows by at most: the entry, less what is evicted to keep the budget
  if not cache_take_headroom(headroom, meta, math.min(footprint, budget_bytes - used_before)) then
    -- short of headroom: the entry goes in only in place of evicted ones (Redis does not grow)
    redis.call("HINCRBY", meta, "no_headroom", 1)
    if footprint > used_before then
      return 0
    end
    limit = used_before
  end
  local used, evicted, last_score, drained = cache_evict_until(idx, entries_key, used_before, limit - footprint)
  if drained then
    entries = 0
  else
    entries = entries - evicted
  end
  if last_score and policy ~= "lru" then
    last_evicted_count = tonumber(last_score)
  end
  local tick = cache_next_tick(tonumber(m[5]) or 0, now_ms)
  local score = tick
  if policy ~= "lru" then
    -- Space-Saving: a newcomer starts just above the last item evicted
    score = last_evicted_count + 1
  end
  local header = cache_header(footprint, tick)
  redis.call("HSET", entries_key, digest, header .. value)
  redis.call("ZADD", idx, cache_num(score), header .. digest)
  redis.call("HSET", meta,
    "bytes", cache_num(used + footprint),
    "entries", cache_num(entries + 1),
    "evictions", cache_num((tonumber(m[3]) or 0) + evicted),
    "stored", cache_num((tonumber(m[4]) or 0) + 1),
    "tick", cache_num(tick),
    "last_evicted_count", cache_num(last_evicted_count))
  return 1
end

-- Evict at most max_evictions entries while the cache holds more than budget_bytes (a budget
-- the planner lowered: caches settle within it a few entries per call, never in one long script).
local function cache_trim(idx, meta, entries_key, budget_bytes, max_evictions)
  local m = redis.call("HMGET", meta, "bytes", "entries", "evictions")
  local used = tonumber(m[1]) or 0
  if used <= budget_bytes then
    return 0
  end
  local evicted = 0
  while used > budget_bytes and evicted < max_evictions do
    local popped = redis.call("ZPOPMIN", idx)
    if popped[1] == nil then
      used = 0
      break
    end
    redis.call("HDEL", entries_key, cache_member_digest(popped[1]))
    used = math.max(used - cache_member_footprint(popped[1]), 0)
    evicted = evicted + 1
  end
  redis.call("HSET", meta,
    "bytes", cache_num(used),
    "entries", cache_num(math.max((tonumber(m[2]) or 0) - evicted, 0)),
    "evictions", cache_num((tonumber(m[3]) or 0) + evicted))
  return evicted
end

-- Drop every entry, the index and the meta hash (counters included), atomically: three keys,
-- freed off the main thread (UNLINK). Returns the number of entries dropped.
local function cache_clear(idx, meta, entries_key)
  local count = redis.call("ZCARD", idx)
  redis.call("UNLINK", idx, meta, entries_key)
  return count
end

-- {meta.bytes, sum of the footprints recorded in the index, meta.entries, ZCARD index}.
-- O(entries): for tests and diagnostics, not for the request path.
local function cache_audit(idx, meta)
  local members = redis.call("ZRANGE", idx, 0, -1)
  local recorded = 0
  for i = 1, #members do
    recorded = recorded + cache_member_footprint(members[i])
  end
  return {
    tonumber(redis.call("HGET", meta, "bytes")) or 0,
    recorded,
    tonumber(redis.call("HGET", meta, "entries")) or 0,
    #members,
  }
end
