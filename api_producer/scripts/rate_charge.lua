-- A caller's submissions counted against its per-minute limit, checked and counted in one step
-- so that concurrent submissions cannot both take the last of it (api_producer.rate_limit).
--
-- KEYS[1] window_key    the caller's counter for this window (genqueue:rate:<caller>:<window>)
-- ARGV[1] cost          the submissions to count
-- ARGV[2] limit         the most a caller may submit per window
-- ARGV[3] key_ttl_s     how long the counter is kept, in seconds
--
-- Returns the window's count after this charge, or -1 (nothing counted) when it would pass
-- the limit.
local window_key = KEYS[1]
local cost, limit, key_ttl_s = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])

local used = tonumber(redis.call('GET', window_key) or '0')
if used + cost > limit then
  return -1
end
redis.call('INCRBY', window_key, cost)
redis.call('EXPIRE', window_key, key_ttl_s)
return used + cost
