-- wrk script for citygate's benchmarks: POST GraphQL request bodies, check every response,
-- and optionally stop after a bounded number of responses.
--
--   wrk -t2 -c32 -d120s -s bench/post.lua URL -- BODY_FILE PER_THREAD_LIMIT EXPECTED
--
-- BODY_FILE holds one JSON request body per line; with several, requests cycle through them.
-- PER_THREAD_LIMIT (0: none) stops each thread after that many responses, so a run is bounded
-- by count as well as by wrk's -d. EXPECTED is a substring every correct response contains,
-- so a wrong answer counts even as a 200 without `errors`. done() prints the totals as
-- `citygate-bench: name=value` lines, which bench/wrk.py parses.
--
-- wrk 4.1's main thread sleeps the whole -d even when every thread has stopped, so its own
-- duration and Requests/sec are wrong for a bounded run; each thread therefore notes when it
-- started and when it stopped (LuaJIT's ffi reaches clock_gettime), and done() prints the
-- span from the first start to the last stop.

local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } citygate_timespec;
int clock_gettime(int clock_id, citygate_timespec *tp);
]]
local CLOCK_MONOTONIC = 1

local function now_us()
  local ts = ffi.new("citygate_timespec")
  ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
  return tonumber(ts.tv_sec) * 1000000 + tonumber(ts.tv_nsec) / 1000
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

responses, non2xx, graphql_errors, mismatched = 0, 0, 0, 0
started_us, stopped_us = 0, 0
local limit, expected, bodies, next_body = 0, nil, {}, 1

function init(args)
  local file = assert(io.open(args[1], "rb"))
  for line in file:lines() do
    if line ~= "" then table.insert(bodies, line) end
  end
  file:close()
  wrk.method = "POST"
  wrk.body = bodies[1]
  wrk.headers["Content-Type"] = "application/json"
  limit = tonumber(args[2] or "0")
  if args[3] and args[3] ~= "" then expected = args[3] end
  started_us = now_us()
end

function request()
  local body = bodies[next_body]
  next_body = next_body % #bodies + 1
  return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
  responses = responses + 1
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  elseif string.find(body, '"errors"', 1, true) then
    graphql_errors = graphql_errors + 1
  elseif expected and not string.find(body, expected, 1, true) then
    mismatched = mismatched + 1
  end
  if limit > 0 and responses >= limit and stopped_us == 0 then
    stopped_us = now_us()
    wrk.thread:stop()
    -- bench/wrk.py interrupts wrk's sleep once every thread has said this
    io.write("citygate-bench: thread stopped\n")
    io.flush()
  end
end

function done(summary, latency, requests)
  local totals = {responses = 0, non2xx = 0, graphql_errors = 0, mismatched = 0}
  local first_start, last_stop, all_stopped = nil, 0, true
  for _, thread in ipairs(threads) do
    for name, _ in pairs(totals) do
      totals[name] = totals[name] + thread:get(name)
    end
    local started, stopped = thread:get("started_us"), thread:get("stopped_us")
    if first_start == nil or started < first_start then first_start = started end
    if stopped == 0 then all_stopped = false elseif stopped > last_stop then last_stop = stopped end
  end
  for _, name in ipairs({"responses", "non2xx", "graphql_errors", "mismatched"}) do
    io.write(string.format("citygate-bench: %s=%d\n", name, totals[name]))
  end
  io.write(string.format("citygate-bench: requests=%d\n", summary.requests))
  -- a bounded run lasts until its last thread stopped; an unbounded one wrk's whole -d
  local duration = summary.duration
  -- (done() runs in wrk's main Lua state, where init() never ran: judge by the threads)
  if all_stopped and last_stop > 0 then duration = last_stop - first_start end
  io.write(string.format("citygate-bench: duration_us=%d\n", duration))
  io.write(string.format("citygate-bench: socket_errors=%d\n",
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
  for _, p in ipairs({50, 90, 95, 99, 99.9}) do
    io.write(string.format("citygate-bench: latency_p%s_us=%d\n", p, latency:percentile(p)))
  end
  io.write(string.format("citygate-bench: latency_mean_us=%.1f\n", latency.mean))
  io.write(string.format("citygate-bench: latency_max_us=%d\n", latency.max))
end
