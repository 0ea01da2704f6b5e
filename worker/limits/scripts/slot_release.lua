-- Give back a slot, count the call's tokens, and move the breaker by the call's outcome.
-- Returns the cooldown in ms when this call opened the breaker, else 0.
--
-- KEYS: lease, breaker, probe, rate
-- ARGV: token, outcome (ok, failure, or anything else: says nothing of the endpoint),
--       threshold (consecutive failures that open the breaker), cooldown ("first_ms:max_ms"),
--       tokens used
local lease, breaker, probe, rate = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local token, outcome, threshold, cooldown, tokens = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
-- #include worker.limits:now_ms
-- #include worker.limits:release_slot
return release_slot(lease, breaker, probe, rate, token, outcome, threshold, cooldown, tokens, now)
