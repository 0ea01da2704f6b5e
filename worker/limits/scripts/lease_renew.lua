-- Push the expiry of this process's slot leases a lease ttl ahead.
--
-- The lease of a call still running is added back when it is missing: it lapsed while Redis
-- was away longer than a lease ttl (another worker's acquire then pruned it), or Redis came
-- back without it. The call holds its slot whatever Redis forgot, and a cap that no longer
-- counted it would let one call too many reach the endpoint. The lease of a call that ended,
-- whose release another script does (worker.limits.guard's hand-off), is renewed only while it
-- exists: that script may have released it already.
--
-- KEYS[1]  lease    the endpoint's leases: sorted set of slot tokens by expiry
-- ARGV[1]  ttl_ms   a lease's time to live
-- ARGV[2]  running  the number n of running calls' tokens
-- ARGV[3+] tokens   the n running calls' tokens, then the ended calls'
local lease = KEYS[1]
local ttl_ms = tonumber(ARGV[1])
local running = tonumber(ARGV[2])
-- #include worker.limits:now_ms
for i = 3, #ARGV do
  if i <= running + 2 then
    redis.call('ZADD', lease, now + ttl_ms, ARGV[i])
  else
    redis.call('ZADD', lease, 'XX', now + ttl_ms, ARGV[i])
  end
end
redis.call('PEXPIRE', lease, ttl_ms * 2)
return 1
