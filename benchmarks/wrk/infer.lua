-- wrk script: POST one-document `_infer` bodies, texts read from a file (one per line).
--
--   wrk -t <threads> -s benchmarks/wrk/infer.lua <url> -- <texts_file> <mode> <tag> <threads> [<repeat_count>] [<format>]
--
-- mode "distinct": every request sends a text nobody sent before: "<tag> <n> <line>", where n
--   counts across all wrk threads (thread k sends k, k + threads, k + 2 * threads, ...) and the
--   line cycles through the file. No two requests of one run (or of two runs with different
--   tags) share a text, so none is a cache hit.
-- mode "repeat": cycles through the first <repeat_count> lines as they are (cache hits once
--   warmed).
-- Texts must be JSON-safe as they are (the benchmark writes plain ASCII words).
-- format: the body shape: "es" (inferq / Elasticsearch _infer, the default), "triton" (KServe v2
--   /v2/models/<m>/infer with one BYTES input "text"), "openai" (infinity-emb /embeddings).
--
-- done() prints one line "WRK_JSON {...}" with the counts, statuses and latency percentiles
-- (microseconds) that benchmarks/throughput.py parses.

local threads = {}
local next_id = 0

function setup(thread)
  thread:set("thread_id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

local texts = {}
local mode = "distinct"
local tag = "t"
local repeat_count = 0
local thread_count = 1
local sent = 0
local headers = { ["Content-Type"] = "application/json" }
local format = "es"

status_200 = 0
status_429 = 0
status_other = 0

function init(args)
  for line in io.lines(args[1]) do
    texts[#texts + 1] = line
  end
  mode = args[2] or "distinct"
  tag = args[3] or "t"
  thread_count = tonumber(args[4] or "1")
  repeat_count = tonumber(args[5] or "0")
  format = args[6] or "es"
  if repeat_count <= 0 or repeat_count > #texts then
    repeat_count = #texts
  end
end

function request()
  local n = thread_id + sent * thread_count
  sent = sent + 1
  local text
  if mode == "repeat" then
    text = texts[(n % repeat_count) + 1]
  else
    text = tag .. " " .. n .. " " .. texts[(n % #texts) + 1]
  end
  local body
  if format == "triton" then
    body = '{"inputs":[{"name":"text","shape":[1,1],"datatype":"BYTES","data":["' .. text .. '"]}]}'
  elseif format == "openai" then
    body = '{"model":"minilm","input":["' .. text .. '"]}'
  else
    body = '{"docs":[{"text_field":"' .. text .. '"}]}'
  end
  return wrk.format("POST", nil, headers, body)
end

function response(status, resp_headers, body)
  if status == 200 then
    status_200 = status_200 + 1
  elseif status == 429 then
    status_429 = status_429 + 1
  else
    status_other = status_other + 1
  end
end

function done(summary, latency, requests)
  local s200, s429, sother = 0, 0, 0
  for _, thread in ipairs(threads) do
    s200 = s200 + thread:get("status_200")
    s429 = s429 + thread:get("status_429")
    sother = sother + thread:get("status_other")
  end
  local parts = {
    string.format('"requests":%d', summary.requests),
    string.format('"duration_us":%d', summary.duration),
    string.format('"bytes":%d', summary.bytes),
    string.format('"errors_connect":%d', summary.errors.connect),
    string.format('"errors_read":%d', summary.errors.read),
    string.format('"errors_write":%d', summary.errors.write),
    string.format('"errors_status":%d', summary.errors.status),
    string.format('"errors_timeout":%d', summary.errors.timeout),
    string.format('"status_200":%d', s200),
    string.format('"status_429":%d', s429),
    string.format('"status_other":%d', sother),
    string.format('"latency_mean_us":%.1f', latency.mean),
    string.format('"latency_max_us":%d', latency.max),
  }
  for _, p in ipairs({ 50, 90, 99, 99.9 }) do
    local name = string.gsub(tostring(p), "%.", "_")
    parts[#parts + 1] = string.format('"latency_p%s_us":%d', name, latency:percentile(p))
  end
  io.write("WRK_JSON {" .. table.concat(parts, ",") .. "}\n")
end
