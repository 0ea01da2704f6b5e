-- A waiter leaves the endpoint's admission queue (lib/admission_queue.lua): its task stopped
-- waiting. A slot it was granted and never took goes on to the next in the queue.
-- Returns 1 (it left its place), 2 (it gave its granted slot on), or 0 (neither was found).
--
-- KEYS[1]  lease     the endpoint's leases: sorted set of slot tokens by expiry
-- KEYS[2]  admit     the endpoint's admission queue (lib/admission_queue.lua): its order
-- KEYS[3]  byage     its waiters by band, tenant and age
-- KEYS[4]  info      its waiters' entries and clocks
-- KEYS[5]  age       its waiters by their task's creation time
-- ARGV[1]  token     the waiter's token
-- ARGV[2]  limit     the endpoint's cap
-- ARGV[3]  every     see lib/admission_queue.lua
local lease = KEYS[1]
local q = {admit = KEYS[2], byage = KEYS[3], info = KEYS[4], age = KEYS[5]}
local token, limit, every = ARGV[1], ARGV[2], ARGV[3]
-- #include worker.limits:now_ms
-- #include worker.limits:admission_queue
return admit_leave(lease, q, token, limit, every, now)
