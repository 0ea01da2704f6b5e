-- What a refused batch was charged, given back to its caller's window (api_producer.rate_limit);
-- never below zero, since the window may have ended and its counter lapsed meanwhile.
--
-- KEYS[1] window_key    the caller's counter for the window charged
-- ARGV[1] cost          the submissions to give back
--
-- Returns what was given back.
local window_key = KEYS[1]
local cost = tonumber(ARGV[1])

local used = tonumber(redis.call('GET', window_key) or '0')
local back = math.min(used, cost)
if back > 0 then
  redis.call('DECRBY', window_key, back)
end
return back
