-- A message of a task was taken (worker.delivery.task_scripts.Lifecycle.begin): counts the
-- delivery, reads the task's progress and any stored result, and writes Celery's STARTED state
-- (what task_track_started would write, without Celery's extra read), in one round trip.
-- With a slot offer (worker.limits.guard.SlotOffer), it also tries for the endpoint slot in
-- passing when the task is about to call its expected endpoint: no stored success, no
-- cancellation, no move to a fallback endpoint, no serverless job to poll, not too many
-- deliveries. A granted slot claims the task as running here and counts its attempt.
--
-- KEYS[1]  record_key        the task's record (genqueue:task:<id>)
-- KEYS[2]  result_key        Celery's result key of the task
-- KEYS[3+]? slot_offer_keys  with a slot offer, its keys (worker.limits.guard.SlotOffer.keys):
--   KEYS[3]  lease_key         the endpoint's leases (the concurrency cap)
--   KEYS[4]  breaker_key       the endpoint's circuit breaker
--   KEYS[5]  probe_key         the breaker's probe
--   KEYS[6]  rate_key          the endpoint's per-minute counts
--   KEYS[7]  running_key       the task's running claim
--   KEYS[8]  claim_record_key  the task's record again (where the attempt is counted)
--   KEYS[9..12]                the endpoint's admission queue: admit, byage, info, age
--                            (optional: without them the slot is taken whenever one is free)
--
-- ARGV[1]  created_at        the record's created_at, if it has none yet (ISO time)
-- ARGV[2]  deliveries_field  the record's field counting this retry round's deliveries
-- ARGV[3]  record_ttl_s      the record's time to live
-- ARGV[4]  result_ttl_s      the STARTED state's time to live
-- ARGV[5]  started_meta      Celery's STARTED meta (JSON)
-- ARGV[6]  result_apart      '' when Celery's results live in this Redis (KEYS[2] is read, and
--                            STARTED written, here); otherwise they live in a Redis of their
--                            own (GENQUEUE_RESULT_REDIS_URL), KEYS[2] is not touched, and this
--                            says what the caller read there: 'succeeded' or 'pending'
-- ARGV[7]?  max_deliveries   with a slot offer: past this many deliveries, no slot is tried for
-- ARGV[8+]?  slot_offer_args  the offer's arguments (worker.limits.guard.SlotOffer.args):
--   ARGV[8..16]                the slot's:
--          limit, lease_ttl_ms, slot_token, cooldown, requests_per_minute,
--          tokens_per_minute, claim_token, claim_ttl_ms, endpoint
--   ARGV[17..22]               with the admission queue: band, tenant, weight, grant list,
--                            every, cost (worker.limits' lib/admission_queue.lua); the slot
--                            is taken only when no task waits in the queue (this one does not
--                            join it)
--
-- Returns {deliveries, progress fields, result meta (false when apart), slot answer}: the
-- progress fields are the
-- record's attempts, first_attempt_at, cancel_requested, endpoint, endpoints_tried, job_id
-- and polls; the slot answer is acquire_slot's, or false when no slot was tried for.
local record_key, result_key = KEYS[1], KEYS[2]
local lease_key, breaker_key, probe_key, rate_key = KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local running_key, claim_record_key = KEYS[7], KEYS[8]
local created_at, deliveries_field = ARGV[1], ARGV[2]
local record_ttl_s, result_ttl_s, started_meta = ARGV[3], ARGV[4], ARGV[5]
local result_apart, max_deliveries = ARGV[6], ARGV[7]
local limit, lease_ttl_ms, slot_token, cooldown = ARGV[8], ARGV[9], ARGV[10], ARGV[11]
local requests_per_minute, tokens_per_minute = ARGV[12], ARGV[13]
local claim_token, claim_ttl_ms, endpoint = ARGV[14], ARGV[15], ARGV[16]
local admit_key, admit_byage_key, admit_info_key, admit_age_key = KEYS[9], KEYS[10], KEYS[11],
  KEYS[12]
local band, tenant, weight, grant_list, every = ARGV[17], ARGV[18], ARGV[19], ARGV[20], ARGV[21]
local cost = ARGV[22]

-- The guard's own function, written once in worker/limits/scripts/lib/slot_take.lua.
-- #include worker.limits:now_ms
-- #include worker.limits:slot_take

redis.call('HSETNX', record_key, 'created_at', created_at)
local deliveries = redis.call('HINCRBY', record_key, deliveries_field, 1)
redis.call('HSET', record_key, 'delivery_field', deliveries_field)  -- acquire_slot's forgive_wait
local fields = redis.call('HMGET', record_key, 'attempts', 'first_attempt_at', 'cancel_requested',
  'endpoint', 'endpoints_tried', 'job_id', 'polls')
local cancel_requested, moved_to, job_id = fields[3], fields[4], fields[6]
redis.call('EXPIRE', record_key, record_ttl_s)
local meta = false
local succeeded = result_apart == 'succeeded'
if result_apart == '' then
  meta = redis.call('GET', result_key)
  if meta then
    local ok, stored = pcall(cjson.decode, meta)
    succeeded = ok and type(stored) == 'table' and stored['status'] == 'SUCCESS'
  end
end
if result_apart == '' and not succeeded and not cancel_requested then
  redis.call('SET', result_key, started_meta, 'EX', result_ttl_s)
  redis.call('PUBLISH', result_key, started_meta)
end
local slot = false
if lease_key and not succeeded and not cancel_requested and not moved_to and not job_id
    and deliveries <= tonumber(max_deliveries) then
  slot = acquire_slot(lease_key, breaker_key, probe_key, rate_key, running_key, claim_record_key,
    limit, lease_ttl_ms, slot_token, cooldown, requests_per_minute, tokens_per_minute,
    claim_token, claim_ttl_ms, endpoint, now, admit_key and {admit = admit_key,
      byage = admit_byage_key, info = admit_info_key, age = admit_age_key, band = band,
      tenant = tenant, weight = weight, owner = grant_list, every = every, cost = cost,
      wait = false})
end
return {deliveries, fields, meta, slot}
