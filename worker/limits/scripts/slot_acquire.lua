-- Take a slot of an endpoint's concurrency cap, unless its breaker is open or a rate limit
-- is spent; with a claim, claim the task and count its attempt too. Answers as acquire_slot.
--
-- KEYS: lease (sorted set of slot tokens by expiry), breaker (hash), probe (the probe's lock),
--       rate (hash of this minute's counts), [running claim, task record]
-- ARGV: limit, lease ttl ms, token, cooldown ("first_ms:max_ms"), requests per minute,
--       tokens per minute (0: no limit), [claim token, claim ttl ms, endpoint name]
local lease, breaker, probe, rate, running, record = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5],
  KEYS[6]
local limit, ttl, token, cooldown, rpm, tpm = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local claim_token, claim_ttl, endpoint = ARGV[7], ARGV[8], ARGV[9]
-- #include worker.limits:now_ms
-- #include worker.limits:acquire_slot
return acquire_slot(lease, breaker, probe, rate, running, record, limit, ttl, token, cooldown,
  rpm, tpm, claim_token, claim_ttl, endpoint, now)
