-- Take a slot of an endpoint's concurrency cap, unless its breaker is open or a rate limit
-- is spent; with a claim, claim the task and count its attempt too. Answers as acquire_slot.
-- A caller that finds no free slot joins the endpoint's admission queue (lib/admission_queue.lua),
-- or keeps its place there; the slot it is granted later is taken by calling this again.
--
-- KEYS: lease (sorted set of slot tokens by expiry), breaker (hash), probe (the probe's lock),
--       rate (hash of this minute's counts), admit, byage, info, age (the admission queue),
--       [running claim, task record]
-- ARGV: limit, lease ttl ms, token, cooldown ("first_ms:max_ms"), requests per minute,
--       tokens per minute (0: no limit), band (9 - priority), tenant, weight, grant list (the
--       waiter's worker's), every, cost (a turn's: 1, or the task's tokens when the endpoint is
--       fair by tokens; see lib/admission_queue.lua), [claim token, claim ttl ms, endpoint]
local lease, breaker, probe, rate = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local admit, byage, info, age = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local running, record = KEYS[9], KEYS[10]
local limit, ttl, token, cooldown, rpm, tpm = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local band, tenant, weight, owner, every = ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11]
local cost = ARGV[12]
local claim_token, claim_ttl, endpoint = ARGV[13], ARGV[14], ARGV[15]
-- #include worker.limits:now_ms
-- #include worker.limits:slot_take
local queue = {admit = admit, byage = byage, info = info, age = age, band = band, tenant = tenant,
  weight = weight, owner = owner, every = every, cost = cost, wait = true}
return acquire_slot(lease, breaker, probe, rate, running, record, limit, ttl, token, cooldown,
  rpm, tpm, claim_token, claim_ttl, endpoint, now, queue)
