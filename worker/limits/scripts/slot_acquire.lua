-- Take a slot of an endpoint's concurrency cap, unless its breaker is open or a rate limit
-- is spent; with a claim, claim the task and count its attempt too. Answers as acquire_slot.
-- A caller that finds no free slot joins the endpoint's admission queue (lib/admission_queue.lua),
-- or keeps its place there; the slot it is granted later is taken by calling this again.
--
-- KEYS[1]   lease        sorted set of slot tokens by expiry
-- KEYS[2]   breaker      the endpoint's circuit breaker (hash)
-- KEYS[3]   probe        the breaker's probe lock
-- KEYS[4]   rate         hash of this minute's counts
-- KEYS[5]   admit        the endpoint's admission queue (lib/admission_queue.lua): its order
-- KEYS[6]   byage        its waiters by band, tenant and age
-- KEYS[7]   info         its waiters' entries and clocks
-- KEYS[8]   age          its waiters by their task's creation time
-- KEYS[9]?  running      with a claim: the task's running claim
-- KEYS[10]? record       with a claim: the task's record (where its attempt is counted)
-- ARGV[1]   limit        the endpoint's cap (lib/pool_limit.lua)
-- ARGV[2]   ttl_ms       a lease's time to live
-- ARGV[3]   token        the slot's token
-- ARGV[4]   cooldown     "first_ms:max_ms"
-- ARGV[5]   rpm          requests per minute (0: no limit)
-- ARGV[6]   tpm          tokens per minute (0: no limit)
-- ARGV[7]   band         9 - priority
-- ARGV[8]   tenant       the task's tenant
-- ARGV[9]   weight       the tenant's weight
-- ARGV[10]  owner        the grant list (the waiter's worker's)
-- ARGV[11]  every        see lib/admission_queue.lua
-- ARGV[12]  cost         a turn's: 1, or the task's tokens when the endpoint is fair by tokens
-- ARGV[13]? claim_token  with a claim: its token
-- ARGV[14]? claim_ttl_ms the claim's time to live
-- ARGV[15]? endpoint     the endpoint the attempt is counted on
local lease, breaker, probe, rate = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local admit, byage, info, age = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local running, record = KEYS[9], KEYS[10]
local limit, ttl_ms, token, cooldown = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local rpm, tpm = ARGV[5], ARGV[6]
local band, tenant, weight, owner, every = ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11]
local cost = ARGV[12]
local claim_token, claim_ttl_ms, endpoint = ARGV[13], ARGV[14], ARGV[15]
-- #include worker.limits:now_ms
-- #include worker.limits:slot_take
local queue = {admit = admit, byage = byage, info = info, age = age, band = band, tenant = tenant,
  weight = weight, owner = owner, every = every, cost = cost, wait = true}
return acquire_slot(lease, breaker, probe, rate, running, record, limit, ttl_ms, token, cooldown,
  rpm, tpm, claim_token, claim_ttl_ms, endpoint, now, queue)
