-- #include worker.limits:admission_queue
-- A library: the function `release_slot`, the end of an endpoint call. Included by the
-- guard's slot_release.lua and by the script that ends a task (worker.delivery's task_end.lua),
-- which takes over the release of a successful call's slot. `cooldown` is "first_ms:max_ms".
-- With `queue` (the endpoint's admission queue: a table of its keys admit, byage, info, age, and
-- limit, every and queues, see admission_queue.lua), the freed slot goes to the queue's head at
-- once (or is held a moment for a more urgent task still in the Redis lists of the queues).
-- `sample` ("<latency ms>:<output tokens>:<signal>", or nil) feeds the controller of an endpoint
-- whose limit is "auto" (auto_limit.lua), before the freed slot is given on.
-- `breaker` and `probe` are the endpoint's, or for a pool's slot its replica's
-- (worker.limits.pool). Returns the cooldown in ms when this call opened the breaker, else 0.
local BREAKER_TTL_MS = 3600000
local function release_breaker(breaker, probe, token, outcome, threshold, cooldown, now)
  if outcome == 'ok' then
    redis.call('HINCRBY', breaker, 'served', 1)
    if redis.call('HDEL', breaker, 'failures', 'open_until', 'cooldown') > 0 then
      redis.call('DEL', probe)
    end
    redis.call('PEXPIRE', breaker, BREAKER_TTL_MS)
    return 0
  end
  if outcome ~= 'failure' then
    -- A probe whose call said nothing of the endpoint lets the next one go at once.
    if redis.call('GET', probe) == token then redis.call('DEL', probe) end
    return 0
  end
  local failures = redis.call('HINCRBY', breaker, 'failures', 1)
  redis.call('PEXPIRE', breaker, BREAKER_TTL_MS)
  if failures < tonumber(threshold) then return 0 end
  local open_until = tonumber(redis.call('HGET', breaker, 'open_until') or '0')
  if open_until > now then return 0 end  -- a call that started before it opened
  local first, most = string.match(cooldown, '^(%d+):(%d+)$')
  local wait = tonumber(first)
  if open_until > 0 then  -- the probe failed: wait longer this time
    wait = math.min(tonumber(most), math.floor(tonumber(redis.call('HGET', breaker, 'cooldown')
      or first) * 1.5))
  end
  redis.call('HSET', breaker, 'open_until', now + wait, 'cooldown', wait)
  redis.call('DEL', probe)
  return wait
end

-- The breaker moves before the freed slot is granted: a pool's limit (pool_limit.lua) counts
-- the replica of `breaker` by its state after this call.
local function release_slot(lease, breaker, probe, rate, token, outcome, threshold, cooldown,
                            tokens, now, queue, sample)
  if queue and sample then
    auto_limit_sample(queue.limit, sample, lease, token, redis.call('EXISTS', queue.admit) == 1)
  end
  redis.call('ZREM', lease, token)
  if tonumber(tokens) > 0 and redis.call('EXISTS', rate) == 1 then
    redis.call('HINCRBY', rate, 't', tokens)
  end
  local opened = release_breaker(breaker, probe, token, outcome, threshold, cooldown, now)
  if queue then
    admit_next(lease, queue, queue.limit, queue.every, now)
  end
  return opened
end
