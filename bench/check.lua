-- wrk script: check every response's status and body size, print exact figures.
-- EXPECT_SIZE (env) is the body size every response must have.
local expected = tonumber(os.getenv("EXPECT_SIZE") or "-1")
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  responses = 0
  bad_status = 0
  bad_size = 0
end

function response(status, headers, body)
  responses = responses + 1
  if status ~= 200 then
    bad_status = bad_status + 1
  end
  if expected >= 0 and (body == nil or #body ~= expected) then
    bad_size = bad_size + 1
  end
end

function done(summary, latency, requests)
  local r, bs, bz = 0, 0, 0
  for _, t in ipairs(threads) do
    r = r + t:get("responses")
    bs = bs + t:get("bad_status")
    bz = bz + t:get("bad_size")
  end
  local e = summary.errors
  io.write(string.format(
    "BENCH responses=%d bad_status=%d bad_size=%d requests=%d duration_us=%d "
      .. "connect=%d read=%d write=%d status=%d timeout=%d "
      .. "p50=%d p90=%d p99=%d mean=%.1f max=%d\n",
    r, bs, bz, summary.requests, summary.duration,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max))
end
