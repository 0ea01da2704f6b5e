-- A fragment, included by the scripts that need it: Redis's own clock in ms as `now`
-- (scored leases and breaker times agree across every worker's machine).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
