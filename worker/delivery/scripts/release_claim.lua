-- A task's running claim given up, if this worker still holds it (worker.delivery.heartbeat).
--
-- KEYS[1] running_key    the task's running claim (genqueue:running:<task id>)
-- ARGV[1] token          the claim token this worker set
--
-- Returns 1 when the claim was deleted, 0 when it had lapsed or another worker holds it.
local running_key = KEYS[1]
local token = ARGV[1]

if redis.call('GET', running_key) == token then return redis.call('DEL', running_key) end
return 0
