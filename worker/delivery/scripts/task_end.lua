-- A task ended (worker.delivery.task_scripts.Lifecycle.finish), in one round trip: records
-- the end, releases the running claim, writes Celery's SUCCESS result (Celery's own write of it
-- is skipped), adds the completion stream's entry, and releases the endpoint slot of a
-- successful call (handed off by worker.limits.guard) and the message's unacked entries.
-- A success found cancelled meanwhile is neither stored nor announced nor acknowledged (the
-- caller finishes the task again, cancelled), unless it is stored already in a result Redis of
-- its own (ARGV[10]); a task that had already finished (a replayed result) gets no second stream
-- entry. A final end removes the message's unacked entries (what kombu's ack does) and the
-- task from the inbox of the lost-message sweep (worker.delivery.lost_message_sweep), which
-- then holds only the tasks that have not ended.
-- The first final end adds to the tenant's usage (tasks by outcome, tokens, GPU-milliseconds,
-- per endpoint and UTC day) and settles what the submission reserved of its day budget; the
-- record's usage_counted flag makes a redelivered or replayed end count for nothing.
--
-- KEYS[1]  record_key         the task's record (genqueue:task:<id>)
-- KEYS[2]  events_key         the completion stream
-- KEYS[3]  result_key         Celery's result key of the task
-- KEYS[4]  running_key        the task's running claim
-- KEYS[5]  unacked_index_key  kombu's unacked index
-- KEYS[6]  unacked_key        kombu's unacked hash
-- KEYS[7]  inbox_key          the inbox of the lost-message sweep
-- KEYS[8]  usage_key          the tenant's usage of the day (genqueue:usage:<tenant>:<day>)
-- KEYS[9]  usage_tenants_key  the tenants with usage that day
-- KEYS[10] usage_totals_key   every tenant's totals since it was first counted (metrics)
-- KEYS[11] reserved_key       the tenant's reserved tokens by day (the token budget)
-- KEYS[12+]? slot_release_keys  with a slot to release, its keys
--                                (worker.limits.guard.SlotRelease.keys):
--   KEYS[12] lease_key          the endpoint's leases (the concurrency cap)
--   KEYS[13] breaker_key        the endpoint's circuit breaker
--   KEYS[14] probe_key          the breaker's probe
--   KEYS[15] rate_key           the endpoint's per-minute counts
--   KEYS[16..19]                the endpoint's admission queue: admit, byage, info, age
--                             (optional: with them, the freed slot goes to the queue's head)
--
-- ARGV[1]  record_ttl_s       the record's time to live
-- ARGV[2]  events_maxlen      the completion stream's approximate length cap
-- ARGV[3]  task_id            the task's id
-- ARGV[4]  status             succeeded, failed or cancelled
-- ARGV[5]  error_type         the error's type, or ''
-- ARGV[6]  finished_at        the end's time (ISO)
-- ARGV[7]  error_json         the record's error ({type, message} JSON), or ''
-- ARGV[8]  result_ttl_s       the SUCCESS result's time to live
-- ARGV[9]  success_meta       Celery's SUCCESS meta (JSON), or ''
-- ARGV[10] success_apart      '1' when Celery's results live in a Redis of their own
--                             (GENQUEUE_RESULT_REDIS_URL) and the caller stored the success
--                             there already: it is not written here, and a cancellation asked
--                             meanwhile loses to it (the end goes on as a success); else ''
-- ARGV[11] claim_token        this worker's running claim token, or ''
-- ARGV[12] delivery_tag       the message's delivery tag, or '' (no broker entries to remove)
-- ARGV[13] tenant             the tenant the task belongs to
-- ARGV[14] endpoint           the endpoint it used last, or '-'
-- ARGV[15] prompt_tokens      as the endpoint counted them (0 without a result)
-- ARGV[16] completion_tokens
-- ARGV[17] gpu_ms             the duration of the endpoint call that gave the result
-- ARGV[18] usage_ttl_s        how long the usage keys are kept
-- ARGV[19+]? slot_release_args  with a slot to release, its arguments
--                                (worker.limits.guard.SlotRelease.args, then its settle):
--   ARGV[19..23]                the release's:
--          slot_token, outcome, failure_threshold, cooldown ("first_ms:max_ms"), tokens_used
--   ARGV[24..26]                with the admission queue: limit, every, queues (worker.limits'
--                             lib/admission_queue.lua)
--   ARGV[27]                    the call's sample for an "auto" limit (worker.limits'
--                             lib/slot_give_back.lua)
--   ARGV[28..31]                at an endpoint fair by tokens (worker.limits.cost): the turn's
--          estimated tokens, its admission band, the tenant's weight, and the queue list the
--          message came from (or ''): the first success settles the estimate with the real
--          usage in the admission queue and that list's backlog
--
-- Returns {cancel_requested, attempts, created_at} of the record.
local record_key, events_key, result_key, running_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local unacked_index_key, unacked_key, inbox_key = KEYS[5], KEYS[6], KEYS[7]
local usage_key, usage_tenants_key, usage_totals_key = KEYS[8], KEYS[9], KEYS[10]
local reserved_key = KEYS[11]
local lease_key, breaker_key, probe_key, rate_key = KEYS[12], KEYS[13], KEYS[14], KEYS[15]
local record_ttl_s, events_maxlen, task_id, status = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local error_type, finished_at, error_json = ARGV[5], ARGV[6], ARGV[7]
local result_ttl_s, success_meta, success_apart = ARGV[8], ARGV[9], ARGV[10]
local claim_token, delivery_tag = ARGV[11], ARGV[12]
local tenant, endpoint = ARGV[13], ARGV[14]
local prompt_tokens, completion_tokens = tonumber(ARGV[15]), tonumber(ARGV[16])
local gpu_ms, usage_ttl_s = tonumber(ARGV[17]), ARGV[18]
local slot_token, outcome, failure_threshold = ARGV[19], ARGV[20], ARGV[21]
local cooldown, tokens_used = ARGV[22], ARGV[23]
local admit_key, admit_byage_key, admit_info_key, admit_age_key = KEYS[16], KEYS[17], KEYS[18],
  KEYS[19]
local limit, every, queues, sample = ARGV[24], ARGV[25], ARGV[26], ARGV[27]
local estimate, settle_band, settle_weight = tonumber(ARGV[28]), ARGV[29], ARGV[30]
local settle_list = ARGV[31]

-- The guard's own function, written once in worker/limits/scripts/lib/slot_give_back.lua.
-- #include worker.limits:now_ms
-- #include worker.limits:slot_give_back

if lease_key then
  release_slot(lease_key, breaker_key, probe_key, rate_key, slot_token, outcome,
    failure_threshold, cooldown, tokens_used, now, admit_key and {admit = admit_key,
      byage = admit_byage_key, info = admit_info_key, age = admit_age_key, limit = limit,
      every = every, queues = queues}, sample)
end
local function acknowledge()
  redis.call('ZREM', inbox_key, task_id)
  if delivery_tag ~= '' then
    redis.call('ZREM', unacked_index_key, delivery_tag)
    redis.call('HDEL', unacked_key, delivery_tag)
  end
end
-- The tenant's usage, counted at the task's first final end only.
local function add(key, field, amount)
  if amount > 0 then redis.call('HINCRBY', key, field, amount) end
end
-- #include worker.delivery:reservation_settle
local function count_usage()
  if redis.call('HSETNX', record_key, 'usage_counted', '1') == 0 then return end
  local at = endpoint .. ':'
  redis.call('HINCRBY', usage_key, at .. status, 1)
  add(usage_key, at .. 'prompt_tokens', prompt_tokens)
  add(usage_key, at .. 'completion_tokens', completion_tokens)
  add(usage_key, at .. 'gpu_ms', gpu_ms)
  add(usage_key, 'total_tokens', prompt_tokens + completion_tokens)
  redis.call('EXPIRE', usage_key, usage_ttl_s)
  redis.call('SADD', usage_tenants_key, tenant)
  redis.call('EXPIRE', usage_tenants_key, usage_ttl_s)
  local total = tenant .. '|' .. endpoint .. '|'
  add(usage_totals_key, total .. 'prompt', prompt_tokens)
  add(usage_totals_key, total .. 'completion', completion_tokens)
  add(usage_totals_key, total .. 'gpu_ms', gpu_ms)
  redis.call('EXPIRE', usage_totals_key, usage_ttl_s)
  settle_reservation(record_key, reserved_key)
  -- Fair by tokens: the tenant's clocks move by what the task used beyond its estimate (or
  -- back by what it did not use), where the tenant has one still. Once, as the usage.
  local used = prompt_tokens + completion_tokens
  if estimate and status == 'succeeded' and used > 0 then
    admit_settle({info = admit_info_key}, settle_band, tenant, settle_weight, used - estimate)
    backlog_settle(settle_list or '', tenant, settle_weight, used - estimate)
  end
end

-- A task sent through Celery has a record only from its start: its tenant is written here.
redis.call('HSETNX', record_key, 'tenant', tenant)
-- One read and one write of the record (each command here is paid by every task): the fields
-- read are not among those written.
local read = redis.call('HMGET', record_key, 'finished_at', 'cancel_requested', 'attempts',
  'created_at')
local prior, found = read[1], {read[2], read[3], read[4]}
if error_json ~= '' then
  redis.call('HSET', record_key, 'finished_at', finished_at, 'error', error_json)
else
  redis.call('HSET', record_key, 'finished_at', finished_at)
end
redis.call('EXPIRE', record_key, record_ttl_s)
if claim_token ~= '' and redis.call('GET', running_key) == claim_token then
  redis.call('DEL', running_key)
end
if status == 'succeeded' then
  if found[1] then
    if success_apart == '' then return found end
    found[1] = false  -- stored already: the success stands, the cancellation came too late
  end
  count_usage()
  if success_meta ~= '' then
    redis.call('SET', result_key, success_meta, 'EX', result_ttl_s)
    redis.call('PUBLISH', result_key, success_meta)
  end
  acknowledge()
  if prior then return found end
else
  count_usage()
  acknowledge()
end
redis.call('XADD', events_key, 'MAXLEN', '~', events_maxlen, '*',
  'task_id', task_id, 'status', status, 'error_type', error_type,
  'finished_at', finished_at, 'attempts', found[2] or '0')
return found
