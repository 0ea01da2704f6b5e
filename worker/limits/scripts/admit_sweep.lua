-- Slots freed without a release (leases that lapsed: their worker was killed) go to the head
-- of the endpoint's admission queue (lib/admission_queue.lua). Run by a worker with waiters, when
-- its grant list has been quiet for a while. Returns how many slots were granted.
--
-- KEYS[1]  lease     the endpoint's leases: sorted set of slot tokens by expiry
-- KEYS[2]  admit     the endpoint's admission queue (lib/admission_queue.lua): its order
-- KEYS[3]  byage     its waiters by band, tenant and age
-- KEYS[4]  info      its waiters' entries and clocks
-- KEYS[5]  age       its waiters by their task's creation time
-- ARGV[1]  limit     the endpoint's cap
-- ARGV[2]  every     see lib/admission_queue.lua
local lease = KEYS[1]
local q = {admit = KEYS[2], byage = KEYS[3], info = KEYS[4], age = KEYS[5]}
local limit, every = ARGV[1], ARGV[2]
-- #include worker.limits:now_ms
-- #include worker.limits:admission_queue
return admit_next(lease, q, limit, every, now)
