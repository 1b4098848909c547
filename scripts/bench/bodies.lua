-- wrk script: one pre-signed request body per request (each nonce used once), read from the
-- file named by BODIES and shared out between wrk's threads; METHOD and TARGET_PATH pick the
-- handler.
--
-- RATE=<req/s> sends at a fixed rate, evenly spaced: each thread owns every THREADS-th slot of
-- a schedule 1/RATE apart (on the monotonic clock, so the threads interleave), and a
-- connection that comes free takes the next slot. Slots are never skipped: a request whose
-- slot has passed goes at once and is counted as late (wrk times a request from when it is
-- sent, so many late requests would mean the latencies leave out time spent waiting to be
-- sent: coordinated omission). Without RATE, every connection sends again as soon as it has
-- its answer (peak throughput).
--
-- OFFSET=<n> starts at the n-th body (a run in slices takes each slice's bodies after the ones
-- before it: a nonce is used once). HISTOGRAM=<file> appends every latency measured (µs) and
-- how many requests took it, a line each, so that slices can be pooled (histograms.py --pool).
local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
  int clock_gettime(int clock, bench_timespec *ts);
]]
local CLOCK_MONOTONIC = 1
local ts = ffi.new("bench_timespec")
local function now_ms()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local threads = {}
function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

local bodies = {}
local i, step = 0, 1
local rate = tonumber(os.getenv("RATE") or "0")
local method = os.getenv("METHOD") or "POST"
local path = os.getenv("TARGET_PATH") or "/v1/break-glass"
local period, slot
late = 0

function init(args)
  step = tonumber(os.getenv("THREADS") or "1")
  i = id + tonumber(os.getenv("OFFSET") or "0")
  if method == "POST" then
    for line in io.lines(os.getenv("BODIES")) do bodies[#bodies + 1] = line end
  end
  if rate > 0 then
    period = 1000 * step / rate
    -- this thread's slots: id/RATE after every multiple of `period`
    local offset = id * 1000 / rate
    slot = (math.floor((now_ms() - offset) / period) + 1) * period + offset
  end
end

function request()
  if method ~= "POST" then return wrk.format(method, path) end
  local body = bodies[(i % #bodies) + 1]
  i = i + step
  return wrk.format("POST", path, { ["Content-Type"] = "application/json" }, body)
end

if rate > 0 then
  function delay()
    local wait = slot - now_ms()
    slot = slot + period
    if wait < -1 then late = late + 1 end
    -- wrk's timers count whole milliseconds
    return math.max(0, math.floor(wait + 0.5))
  end
end

function done(summary, latency, requests)
  local late_total = 0
  for _, t in ipairs(threads) do late_total = late_total + (t:get("late") or 0) end
  io.write(string.format("RESULT rps=%.0f p50_us=%d p90_us=%d p99_us=%d max_us=%d requests=%d non2xx=%d late=%d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, summary.requests, summary.errors.status, late_total))
  local histogram = os.getenv("HISTOGRAM")
  if histogram then
    local f = assert(io.open(histogram, "a"))
    for k = 1, #latency do
      local value, count = latency(k)
      f:write(string.format("%d %d\n", value, count))
    end
    f:close()
  end
end

local shown = false
function response(status, headers, body)
  if status >= 300 and not shown then
    shown = true
    io.stderr:write("first refusal: " .. status .. " " .. body .. "\n")
  end
end
