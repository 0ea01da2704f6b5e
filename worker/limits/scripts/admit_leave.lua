-- A waiter leaves the endpoint's admission queue (lib/admission_queue.lua): its task stopped
-- waiting. A slot it was granted and never took goes on to the next in the queue.
-- Returns 1 (it left its place), 2 (it gave its granted slot on), or 0 (neither was found).
--
-- KEYS: lease, admit, byage, info, age
-- ARGV: token, limit, every
local lease = KEYS[1]
local q = {admit = KEYS[2], byage = KEYS[3], info = KEYS[4], age = KEYS[5]}
local token, limit, every = ARGV[1], ARGV[2], ARGV[3]
-- #include worker.limits:now_ms
-- #include worker.limits:admission_queue
return admit_leave(lease, q, token, limit, every, now)
