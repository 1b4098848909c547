-- wrk script: one pre-signed request body per request (each nonce used once), read from the
-- file named by BODIES and shared out between wrk's threads; DELAY_MS paces each connection
-- (connections x 1000 / DELAY_MS requests a second); METHOD and TARGET_PATH pick the handler.
local threads = 0
function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end

local bodies = {}
local i, step = 0, 1
local delay_ms = tonumber(os.getenv("DELAY_MS") or "0")
local method = os.getenv("METHOD") or "POST"
local path = os.getenv("TARGET_PATH") or "/v1/break-glass"

function init(args)
  step = tonumber(os.getenv("THREADS") or "1")
  i = id
  if method == "POST" then
    for line in io.lines(os.getenv("BODIES")) do bodies[#bodies + 1] = line end
  end
end

function request()
  if method ~= "POST" then return wrk.format(method, path) end
  local body = bodies[(i % #bodies) + 1]
  i = i + step
  return wrk.format("POST", path, { ["Content-Type"] = "application/json" }, body)
end

function delay()
  return delay_ms
end

function done(summary, latency, requests)
  io.write(string.format("RESULT rps=%.0f p50_us=%d p90_us=%d p99_us=%d max_us=%d requests=%d non2xx=%d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, summary.requests, summary.errors.status))
end

local shown = false
function response(status, headers, body)
  if status >= 300 and not shown then
    shown = true
    io.stderr:write("first refusal: " .. status .. " " .. body .. "\n")
  end
end
