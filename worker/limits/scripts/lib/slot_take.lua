-- #include worker.limits:admission_queue
-- A library: the function `acquire_slot`, the start of an endpoint call. Included by the
-- guard's slot_acquire.lua and by the script that starts a task (worker.delivery's
-- task_start.lua), which tries for a slot in passing. With a `running` claim key (and the task
-- `record`), the task is claimed for this worker and its attempt counted in the same step.
-- With `queue` (the endpoint's admission queue, admission_queue.lua: a table of its keys admit,
-- byage, info, age and the waiter's band, tenant, weight, owner (its grant list), every, wait), a
-- free slot is taken only when no task waits for one; with `queue.wait`, a task that finds none
-- joins the queue (or keeps its place). A token the queue granted a slot to takes it here.
-- Returns {code, wait ms}: 1 slot taken, 0 no free slot, 2 breaker open, 3 over a rate limit,
-- 4 the task is claimed by another worker, 5 the waiting task was cancelled. With a claim,
-- code 1 also returns the task's attempt numbers, in all and on this endpoint. A granted slot
-- that is refused (2, 3, 4, 5) goes on to the next in the queue.
-- A delivery that waits in the queue is forgiven while it waits (worker.delivery's
-- task_start.lua counts each delivery, and names its field in the record's `delivery_field`):
-- a worker killed then is no fault of the task's, and must not make it poison
-- (GENQUEUE_MAX_DELIVERIES). The delivery counts again when it takes its slot.
local function forgive_wait(record, token)
  local field = record and redis.call('HGET', record, 'delivery_field')
  if not field or redis.call('HGET', record, 'forgiven:' .. field) == token then return end
  if tonumber(redis.call('HGET', record, field) or '0') > 0 then
    redis.call('HINCRBY', record, field, -1)
    redis.call('HSET', record, 'forgiven:' .. field, token)
  end
end
local function count_again(record, token)
  local field = record and redis.call('HGET', record, 'delivery_field')
  if field and redis.call('HGET', record, 'forgiven:' .. field) == token then
    redis.call('HINCRBY', record, field, 1)
    redis.call('HDEL', record, 'forgiven:' .. field)
  end
end

local function acquire_slot(lease, breaker, probe, rate, running, record, limit, ttl, token,
                            cooldown, rpm, tpm, claim_token, claim_ttl, endpoint, now, queue)
  -- Only a waiter (queue.wait) may have been granted a slot already.
  local granted = queue and queue.wait and redis.call('ZSCORE', lease, token)
  local function refuse(answer)
    if granted then
      redis.call('ZREM', lease, token)
      admit_next(lease, queue, limit, queue.every, now)
    end
    return answer
  end
  -- The limit in force: a fixed cap, the one found for "auto" (auto_limit.lua), or a pool's,
  -- its healthy replicas' (pool_limit.lua); with all of those open, it is refused as an open
  -- breaker is, until the soonest of their cooldowns ends.
  local pool_open
  limit, pool_open = slot_limit(limit, lease, now)
  if pool_open then return refuse({2, pool_open - now}) end
  local open_until = tonumber(redis.call('HGET', breaker, 'open_until') or '0')
  if open_until > now then
    return refuse({2, open_until - now})
  end
  rpm, tpm = tonumber(rpm), tonumber(tpm)
  if rpm > 0 or tpm > 0 then
    local window = math.floor(now / 60000)
    if tonumber(redis.call('HGET', rate, 'w') or '-1') ~= window then
      redis.call('HSET', rate, 'w', window, 'r', 0, 't', 0)
      redis.call('PEXPIRE', rate, 120000)
    end
    local used = redis.call('HMGET', rate, 'r', 't')
    if (rpm > 0 and tonumber(used[1]) >= rpm) or (tpm > 0 and tonumber(used[2]) >= tpm) then
      return refuse({3, (window + 1) * 60000 - now})
    end
  end
  local probing = false
  if open_until > 0 then
    -- The probe's lock lasts as long as a lease: it covers the probe call.
    if not redis.call('SET', probe, token, 'NX', 'PX', ttl) then
      return refuse({2, 1000})
    end
    probing = true
  end
  if not granted then
    redis.call('ZREMRANGEBYSCORE', lease, '-inf', now)
    if queue and admit_next(lease, queue, limit, queue.every, now) > 0 and queue.wait then
      granted = redis.call('ZSCORE', lease, token)  -- a waiter asking again may be next
    end
    -- With a queue, the slots left free go to its waiters first: a free one means none waits,
    -- or one is held for a task more urgent than the queue's head (admit_next).
    local full = not granted and redis.call('ZCARD', lease) >= tonumber(limit)
    if queue and not granted and not full then
      local head = redis.call('ZRANGE', queue.admit, 0, 0)[1]
      if head and tonumber(string.sub(head, 1, 1)) <= tonumber(queue.band) then
        full = true  -- not more urgent than the head: the held slot is not for this one
      elseif head then
        redis.call('HDEL', queue.info, 'hold')  -- more urgent: the held slot is this one's
      end
    end
    if full and queue and queue.wait then
      local created = record and redis.call('HGET', record, 'created_at')
      admit_enqueue(queue, token, queue.band, queue.tenant, queue.weight, queue.owner, ttl,
        admit_created(created, now), now)
      forgive_wait(running and record, token)
      -- A slot held for a task more urgent than the queue's head: this one, if it is the head.
      local head = redis.call('ZRANGE', queue.admit, 0, 0)[1]
      if head and string.sub(head, -#token) == token
          and redis.call('ZCARD', lease) < tonumber(limit) then
        admit_drop(queue, token, admit_entry(queue, token))
        redis.call('HDEL', queue.info, 'hold')
        full = false
      end
    end
    if full then
      if probing then redis.call('DEL', probe) end
      return {0, 0}
    end
  end
  local attempts = {}
  -- A task cancelled while it waited (the API's DELETE flags its record) takes no slot: the
  -- slot goes on to the next waiter. (The start script checks the flag before it tries.)
  if running and queue and queue.wait
      and redis.call('HEXISTS', record, 'cancel_requested') == 1 then
    if probing then redis.call('DEL', probe) end
    return refuse({5, 0})
  end
  if running then
    if not redis.call('SET', running, claim_token, 'NX', 'PX', claim_ttl)
        and redis.call('GET', running) ~= claim_token then
      if probing then redis.call('DEL', probe) end
      return refuse({4, 0})
    end
    if queue and queue.wait then count_again(record, token) end
    redis.call('HSETNX', record, 'first_attempt_at', string.format('%.3f', now / 1000))
    attempts[1] = redis.call('HINCRBY', record, 'attempts', 1)
    attempts[2] = redis.call('HINCRBY', record, 'attempts:' .. endpoint, 1)
  end
  redis.call('ZADD', lease, now + tonumber(ttl), token)
  redis.call('PEXPIRE', lease, tonumber(ttl) * 2)
  if rpm > 0 or tpm > 0 then redis.call('HINCRBY', rate, 'r', 1) end
  return {1, 0, attempts[1], attempts[2]}
end
