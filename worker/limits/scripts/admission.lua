-- A library: the admission queue of an endpoint, the tasks held by workers and waiting for a
-- slot of its concurrency cap (see docs/scheduling.md). Included by acquire_slot.lua and
-- release_slot.lua, so that every slot that frees goes to the head of the queue in the same
-- script, and by the guard's admission scripts.
--
-- admit  sorted set, every score 0, ordered by its members: "<band>:<finish>:<token>", where
--        band is 9 - the task's priority (0 first) and finish the task's virtual finish time
--        among its tenant's (self-clocked weighted fair queuing: a tenant of weight w advances
--        its own clock by 1/w a task, from no earlier than the band's clock)
-- info   hash: "w:<token>" -> "<member>\t<grant list>\t<expiry ms>\t<lease ttl ms>" for each
--        waiter; "V:<band>" the band's clock (the finish time of its last grant);
--        "F:<band>:<tenant>" the tenant's last finish time; "n" the grants counted
-- age    sorted set: waiter token -> the time it joined (ms)
-- A waiter whose expiry passed (its worker stopped renewing it: killed) is dropped when met.
-- Every `every`-th grant goes to the head of the band of the longest-waiting task, so that
-- low priorities progress under a steady stream of high ones (0: strict priority).

local function admit_entry(info, token)
  local raw = redis.call('HGET', info, 'w:' .. token)
  if not raw then return nil end
  local member, owner, expiry, ttl = string.match(raw, '^([^\t]*)\t([^\t]*)\t(%d+)\t(%d+)$')
  return {member = member, owner = owner, expiry = tonumber(expiry), ttl = tonumber(ttl)}
end

local function admit_drop(admit, info, age, token, member)
  if member then redis.call('ZREM', admit, member) end
  redis.call('ZREM', age, token)
  redis.call('HDEL', info, 'w:' .. token)
end

local function admit_keep(admit, info, age, ttl)
  for _, key in ipairs({admit, info, age}) do redis.call('PEXPIRE', key, ttl * 4) end
end

-- The token's place in the queue, kept if it has one already (its expiry pushed on).
-- Returns true when it waits (it had no place, or still has one).
local function admit_enqueue(admit, info, age, token, band, tenant, weight, owner, ttl, now)
  ttl = tonumber(ttl)
  local entry = admit_entry(info, token)
  local member
  if entry then
    member = entry.member
  else
    local clock = tonumber(redis.call('HGET', info, 'V:' .. band) or '0')
    local tenant_field = 'F:' .. band .. ':' .. tenant
    local last = tonumber(redis.call('HGET', info, tenant_field) or '0')
    local finish = math.max(clock, last) + 1 / math.max(tonumber(weight), 0.001)
    redis.call('HSET', info, tenant_field, string.format('%.6f', finish))
    member = string.format('%d:%020.6f:%s', band, finish, token)
    redis.call('ZADD', admit, 0, member)
    redis.call('ZADD', age, now, token)
  end
  redis.call('HSET', info, 'w:' .. token,
    member .. '\t' .. owner .. '\t' .. (now + ttl) .. '\t' .. ttl)
  admit_keep(admit, info, age, ttl)
  return true
end

-- The member to grant next: the queue's head, or every `every`-th time the head of the band
-- of the longest-waiting task.
local function admit_pick(admit, info, age, every)
  every = tonumber(every)
  if every > 0 and redis.call('HINCRBY', info, 'n', 1) % every == 0 then
    local oldest = redis.call('ZRANGE', age, 0, 0)[1]
    local entry = oldest and admit_entry(info, oldest)
    if entry then
      local band = string.sub(entry.member, 1, 1)
      local head = redis.call('ZRANGEBYLEX', admit, '[' .. band .. ':', '(' .. band .. ';',
        'LIMIT', 0, 1)[1]
      if head then return head end
    end
  end
  return redis.call('ZRANGE', admit, 0, 0)[1]
end

-- Free slots (lapsed leases too) go to the queue's head, one by one: each granted token gets a
-- lease and is pushed on its worker's grant list. Returns how many were granted.
local function admit_next(lease, admit, info, age, limit, every, now)
  redis.call('ZREMRANGEBYSCORE', lease, '-inf', now)
  local granted = 0
  limit = tonumber(limit)
  while redis.call('ZCARD', lease) < limit do
    local member = admit_pick(admit, info, age, every)
    if not member then break end
    local band, finish, token = string.match(member, '^(%d):([%d.]+):(.+)$')
    local entry = admit_entry(info, token)
    admit_drop(admit, info, age, token, member)
    if entry and entry.expiry > now then
      redis.call('ZADD', lease, now + entry.ttl, token)
      redis.call('PEXPIRE', lease, entry.ttl * 2)
      redis.call('HSET', info, 'V:' .. band, finish)
      redis.call('RPUSH', entry.owner, token)
      redis.call('PEXPIRE', entry.owner, entry.ttl)
      granted = granted + 1
    end
  end
  return granted
end

-- The token leaves: its place in the queue, or the slot it was granted and never took.
local function admit_leave(lease, admit, info, age, token, limit, every, now)
  local entry = admit_entry(info, token)
  if entry then
    admit_drop(admit, info, age, token, entry.member)
    return 1
  end
  if redis.call('ZREM', lease, token) == 1 then
    admit_next(lease, admit, info, age, limit, every, now)
    return 2
  end
  return 0
end
