-- Per-(deployment, node) inference counters in one hash (keys.stats(dep, node)).
-- Fields: inference_count, inference_time_ms_sum, nohit_count, nohit_time_ms_sum,
-- cache_hit_count, error_count, rejected_execution_count, timeout_count, last_access_ms,
-- peak_throughput_per_minute, and two 1-minute buckets aligned to the node's start time:
-- bucket_{index,count,time_ms_sum,hits} (the newest) and prev_bucket_{...} (the one before).
-- gateway/stats.py reads the hash back and renders Elasticsearch's stats objects.

-- Add `results` completed inferences (cache hits included, errors excluded), `cache_hits` of
-- them served from the cache; `time_ms_sum` is the summed time of all of them,
-- `nohit_time_ms_sum` that of the non-hits; `errors` adds to error_count.
local function stats_record(stats_key, start_ms, now_ms, results, cache_hits, time_ms_sum, nohit_time_ms_sum, errors)
  start_ms, now_ms = tonumber(start_ms), tonumber(now_ms)
  results, cache_hits = math.floor(tonumber(results) or 0), math.floor(tonumber(cache_hits) or 0)
  time_ms_sum, nohit_time_ms_sum = tonumber(time_ms_sum) or 0, tonumber(nohit_time_ms_sum) or 0
  errors = math.floor(tonumber(errors) or 0)
  if errors > 0 then
    redis.call('HINCRBY', stats_key, 'error_count', errors)
  end
  if results <= 0 then
    return
  end

  redis.call('HINCRBY', stats_key, 'inference_count', results)
  redis.call('HINCRBYFLOAT', stats_key, 'inference_time_ms_sum', time_ms_sum)
  if cache_hits > 0 then
    redis.call('HINCRBY', stats_key, 'cache_hit_count', cache_hits)
  end
  if results > cache_hits then
    redis.call('HINCRBY', stats_key, 'nohit_count', results - cache_hits)
    redis.call('HINCRBYFLOAT', stats_key, 'nohit_time_ms_sum', nohit_time_ms_sum)
  end
  redis.call('HSET', stats_key, 'last_access_ms', string.format('%d', now_ms))

  -- Roll the buckets forward to the one `now_ms` falls in.
  local index = math.floor((now_ms - start_ms) / 60000)
  local current = tonumber(redis.call('HGET', stats_key, 'bucket_index'))
  if current == nil or index > current + 1 then
    redis.call('HSET', stats_key,
      'prev_bucket_index', index - 1, 'prev_bucket_count', 0,
      'prev_bucket_time_ms_sum', 0, 'prev_bucket_hits', 0,
      'bucket_index', index, 'bucket_count', 0, 'bucket_time_ms_sum', 0, 'bucket_hits', 0)
    current = index
  elseif index == current + 1 then
    local live = redis.call('HMGET', stats_key, 'bucket_count', 'bucket_time_ms_sum', 'bucket_hits')
    redis.call('HSET', stats_key,
      'prev_bucket_index', current, 'prev_bucket_count', live[1] or 0,
      'prev_bucket_time_ms_sum', live[2] or 0, 'prev_bucket_hits', live[3] or 0,
      'bucket_index', index, 'bucket_count', 0, 'bucket_time_ms_sum', 0, 'bucket_hits', 0)
    current = index
  end

  -- A result stamped a little in the past (another process's clock) still lands in its own
  -- bucket when that bucket is one of the two kept; older ones only count in the totals.
  local prefix = nil
  if index == current then
    prefix = 'bucket'
  elseif index == tonumber(redis.call('HGET', stats_key, 'prev_bucket_index')) then
    prefix = 'prev_bucket'
  end
  if prefix then
    local count = redis.call('HINCRBY', stats_key, prefix .. '_count', results)
    redis.call('HINCRBYFLOAT', stats_key, prefix .. '_time_ms_sum', time_ms_sum)
    if cache_hits > 0 then
      redis.call('HINCRBY', stats_key, prefix .. '_hits', cache_hits)
    end
    local peak = tonumber(redis.call('HGET', stats_key, 'peak_throughput_per_minute')) or 0
    if count > peak then
      redis.call('HSET', stats_key, 'peak_throughput_per_minute', count)
    end
  end
end

-- Add n to one plain counter: rejected_execution_count or timeout_count.
local function stats_incr(stats_key, field, n)
  return redis.call('HINCRBY', stats_key, field, math.floor(tonumber(n) or 1))
end

-- Add `n` field/increment pairs read from `args` at `first` (histogram buckets and sums; see
-- shared/histograms.py). Returns the index after the last pair.
local function stats_add(stats_key, args, first, n)
  local i = first
  for _ = 1, n do
    redis.call('HINCRBYFLOAT', stats_key, args[i], args[i + 1])
    i = i + 2
  end
  return i
end
