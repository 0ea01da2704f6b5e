-- Push the expiry of this process's slot leases (those that still exist) a lease ttl ahead.
--
-- KEYS: lease
-- ARGV: token..., lease ttl ms (the last argument)
local lease = KEYS[1]
local ttl = tonumber(ARGV[#ARGV])
-- #include worker.limits:now_ms
for i = 1, #ARGV - 1 do
  redis.call('ZADD', lease, 'XX', now + ttl, ARGV[i])
end
redis.call('PEXPIRE', lease, ttl * 2)
return 1
