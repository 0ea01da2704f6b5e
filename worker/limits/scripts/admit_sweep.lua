-- Slots freed without a release (leases that lapsed: their worker was killed) go to the head
-- of the endpoint's admission queue (admission.lua). Run by a worker with waiters, when its
-- grant list has been quiet for a while. Returns how many slots were granted.
--
-- KEYS: lease, admit, info, age
-- ARGV: limit, every (see admission.lua)
local lease, admit, info, age = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local limit, every = ARGV[1], ARGV[2]
-- #include worker.limits:now_ms
-- #include worker.limits:admission
return admit_next(lease, admit, info, age, limit, every, now)
