-- This worker's running claims, pushed forward by its heartbeat (worker.delivery.heartbeat).
-- A claim that lapsed while Redis was away (its holder could not renew it) is taken again,
-- unless another worker has it meanwhile.
--
-- KEYS[1+]  running_keys      the running claims held here, any number
-- ARGV[1]   ttl_ms            the claims' new time to live in milliseconds
-- ARGV[2+]  tokens            the claim token of each running key, in their order (ARGV[i + 1]
--                             is KEYS[i]'s)
--
-- Returns 1.
local running_keys = KEYS
local ttl_ms = ARGV[1]

for i, running_key in ipairs(running_keys) do
  local token = ARGV[i + 1]  -- by index: a long list would overflow unpack's stack
  if redis.call('PEXPIRE', running_key, ttl_ms) == 0 then
    redis.call('SET', running_key, token, 'NX', 'PX', ttl_ms)
  end
end
return 1
