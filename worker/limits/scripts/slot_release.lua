-- Give back a slot, count the call's tokens, and move the breaker by the call's outcome; the
-- slot goes to the head of the endpoint's admission queue (lib/admission_queue.lua).
-- Returns the cooldown in ms when this call opened the breaker, else 0.
--
-- KEYS[1]  lease     sorted set of slot tokens by expiry
-- KEYS[2]  breaker   the endpoint's (or the pool replica's) circuit breaker
-- KEYS[3]  probe     the breaker's probe lock
-- KEYS[4]  rate      hash of this minute's counts
-- KEYS[5]  admit     the endpoint's admission queue (lib/admission_queue.lua): its order
-- KEYS[6]  byage     its waiters by band, tenant and age
-- KEYS[7]  info      its waiters' entries and clocks
-- KEYS[8]  age       its waiters by their task's creation time
-- ARGV[1]  token     the slot's token
-- ARGV[2]  outcome   ok, failure, or anything else: says nothing of the endpoint
-- ARGV[3]  threshold consecutive failures that open the breaker
-- ARGV[4]  cooldown  "first_ms:max_ms"
-- ARGV[5]  tokens    the tokens the call used
-- ARGV[6]  limit     the endpoint's cap
-- ARGV[7]  every     see lib/admission_queue.lua
-- ARGV[8]  queues    the endpoint's queues ("a,b": a freed slot may be held for a more urgent
--                    task still in their Redis lists)
-- ARGV[9]  sample    the call's sample for an "auto" limit (lib/slot_give_back.lua; '' for none)
local lease, breaker, probe, rate = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local admit, byage, info, age = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local token, outcome, threshold, cooldown, tokens = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local limit, every, queues, sample = ARGV[6], ARGV[7], ARGV[8], ARGV[9]
-- #include worker.limits:now_ms
-- #include worker.limits:slot_give_back
local queue = {admit = admit, byage = byage, info = info, age = age, limit = limit,
  every = every, queues = queues}
return release_slot(lease, breaker, probe, rate, token, outcome, threshold, cooldown, tokens, now,
  queue, sample)
