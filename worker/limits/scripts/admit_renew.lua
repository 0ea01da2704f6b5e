-- Push the expiry of this worker's waiters in the endpoint's admission queue (admission.lua)
-- a lease ttl ahead, and say which of them no longer wait: those granted a slot (their grant
-- may not have reached the worker) and those the queue lost (dropped when Redis lost data).
--
-- KEYS: lease, admit, info, age
-- ARGV: lease ttl ms, token...
-- Returns the tokens that no longer wait.
local lease, admit, info, age = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local ttl = tonumber(ARGV[1])
-- #include worker.limits:now_ms
-- #include worker.limits:admission
local gone = {}
for i = 2, #ARGV do
  local token = ARGV[i]
  local entry = admit_entry(info, token)
  if entry then
    redis.call('HSET', info, 'w:' .. token,
      entry.member .. '\t' .. entry.owner .. '\t' .. (now + ttl) .. '\t' .. entry.ttl)
  else
    gone[#gone + 1] = token
  end
end
admit_keep(admit, info, age, ttl)
return gone
