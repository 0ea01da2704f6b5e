-- #include worker.delivery:backlog_keys
-- #include worker.limits:auto_limit
-- #include worker.limits:pool_limit
-- A library: the admission queue of an endpoint, the tasks held by workers and waiting for a
-- slot of its concurrency cap (see docs/scheduling.md). Included by slot_take.lua and
-- slot_give_back.lua, so that every slot that frees goes to the head of the queue in the same
-- script, and by the guard's admission scripts. `q` is a table of the queue's keys:
--
-- q.admit  sorted set, every score 0, ordered by its members: "<band>:<finish>:<token>", where
--          band is 9 - the task's priority (0 first) and finish a virtual finish time on its
--          tenant's clock (self-clocked weighted fair queuing: a tenant of weight w moves its
--          clock on by c/w a task, from no earlier than the band's clock, where c, q.cost, is 1
--          when the endpoint is fair by tasks, the task's estimated tokens when by tokens;
--          admit_settle corrects the estimate at the task's end): a tenant's turns
-- q.byage  sorted set, every score 0: "<band>\t<tenant>\t<created>\t<token>", the waiters of
--          each band and tenant, oldest first: a tenant's turn goes to its oldest waiter
-- q.info   hash: "w:<token>" -> "<member>\t<grant list>\t<expiry ms>\t<lease ttl ms>\t<tenant>
--          \t<created>" for each waiter (created: "<ms>.<join count>", ties in join order);
--          "V:<band>" the band's clock (the finish time of its last grant); "F:<band>:<tenant>"
--          the tenant's last finish time; "n" the grants counted; "seq" the joins counted
-- q.age    sorted set: waiter token -> when its task was created (ms)
-- A waiter whose expiry passed (its worker stopped renewing it: killed) is dropped when met.
-- Every `every`-th grant goes to the band of the longest-waiting task, so that low priorities
-- progress under a steady stream of high ones (0: strict priority).

local function admit_entry(q, token)
  local raw = redis.call('HGET', q.info, 'w:' .. token)
  if not raw then return nil end
  local member, owner, expiry, ttl, tenant, created = string.match(raw,
    '^([^\t]*)\t([^\t]*)\t(%d+)\t(%d+)\t([^\t]*)\t([%d.]+)$')
  return {member = member, owner = owner, expiry = tonumber(expiry), ttl = tonumber(ttl),
    tenant = tenant, created = created, band = string.sub(member, 1, 1)}
end

local function admit_store(q, token, e)
  redis.call('HSET', q.info, 'w:' .. token, table.concat({e.member, e.owner, e.expiry, e.ttl,
    e.tenant, e.created}, '\t'))
end

local function admit_byage(e, token)
  return e.band .. '\t' .. e.tenant .. '\t' .. e.created .. '\t' .. token
end

local function admit_drop(q, token, e)
  redis.call('ZREM', q.admit, e.member)
  redis.call('ZREM', q.byage, admit_byage(e, token))
  redis.call('ZREM', q.age, token)
  redis.call('HDEL', q.info, 'w:' .. token)
  -- A tenant with no waiter left in the band keeps no clock there: its next task starts from
  -- the band's clock (no credit for its absence, no debt for tasks that left), and the hash
  -- holds a field per tenant waiting, not per tenant ever seen.
  local prefix = e.band .. '\t' .. e.tenant .. '\t'
  if not redis.call('ZRANGEBYLEX', q.byage, '[' .. prefix, '(' .. prefix .. '\255',
      'LIMIT', 0, 1)[1] then
    redis.call('HDEL', q.info, 'F:' .. e.band .. ':' .. e.tenant)
  end
end

local function admit_keep(q, ttl)
  for _, key in ipairs({q.admit, q.byage, q.info, q.age}) do
    redis.call('PEXPIRE', key, ttl * 4)
  end
end

-- A task's creation time in ms, from its record's ISO time (YYYY-MM-DDTHH:MM:SS.mmmZ).
local function admit_created(iso, now)
  local y, mo, d, h, mi, s, ms = string.match(iso or '',
    '^(%d+)-(%d+)-(%d+)T(%d+):(%d+):(%d+)%.?(%d*)Z$')
  if not y then return now end
  y, mo = tonumber(y), tonumber(mo)
  if mo <= 2 then y = y - 1 end  -- days from the civil date (Howard Hinnant's algorithm)
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local doy = math.floor((153 * (mo + (mo > 2 and -3 or 9)) + 2) / 5) + tonumber(d) - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  local days = era * 146097 + doe - 719468
  return ((days * 24 + tonumber(h)) * 60 + tonumber(mi)) * 60000 + tonumber(s) * 1000
    + tonumber(ms ~= '' and ms or '0')
end

-- The token's place in the queue, kept if it has one already (its expiry pushed on).
local function admit_enqueue(q, token, band, tenant, weight, owner, ttl, created, now)
  ttl = tonumber(ttl)
  local e = admit_entry(q, token)
  if not e then
    local clock = tonumber(redis.call('HGET', q.info, 'V:' .. band) or '0')
    local tenant_field = 'F:' .. band .. ':' .. tenant
    local last = tonumber(redis.call('HGET', q.info, tenant_field) or '0')
    -- A turn costs 1 (fair by tasks) or the task's estimated tokens (fair by tokens, q.cost:
    -- the Virtual Token Counter's charge), over the tenant's weight.
    local finish = math.max(clock, last)
      + math.max(tonumber(q.cost or '1') or 1, 0) / math.max(tonumber(weight), 0.001)
    redis.call('HSET', q.info, tenant_field, string.format('%.6f', finish))
    e = {member = string.format('%d:%020.6f:%s', band, finish, token), owner = owner,
      ttl = ttl, tenant = tenant, band = tostring(band),
      -- ties (the same ms) in the order they joined
      created = string.format('%015d.%012d', created, redis.call('HINCRBY', q.info, 'seq', 1))}
    redis.call('ZADD', q.admit, 0, e.member)
    redis.call('ZADD', q.byage, 0, admit_byage(e, token))
    redis.call('ZADD', q.age, created, token)
  end
  e.expiry = now + ttl
  admit_store(q, token, e)
  admit_keep(q, ttl)
end

-- The member whose turn is next: the queue's head, or every `every`-th time the head of the
-- band of the longest-waiting task.
local function admit_pick(q, every)
  every = tonumber(every)
  if every > 0 and redis.call('HINCRBY', q.info, 'n', 1) % every == 0 then
    local oldest = redis.call('ZRANGE', q.age, 0, 0)[1]
    local e = oldest and admit_entry(q, oldest)
    if e then
      local head = redis.call('ZRANGEBYLEX', q.admit, '[' .. e.band .. ':',
        '(' .. e.band .. ';', 'LIMIT', 0, 1)[1]
      if head then return head end
    end
  end
  return redis.call('ZRANGE', q.admit, 0, 0)[1]
end

-- The turn `member` goes to the oldest waiter of its band and tenant: that one is returned,
-- and the turn's own waiter takes the later turn the oldest had.
local function admit_oldest(q, member, token, e)
  local prefix = e.band .. '\t' .. e.tenant .. '\t'
  local oldest = redis.call('ZRANGEBYLEX', q.byage, '[' .. prefix, '(' .. prefix .. '\255',
    'LIMIT', 0, 1)[1]
  local other = oldest and string.match(oldest, '\t([^\t]+)$')
  local o = other and other ~= token and admit_entry(q, other)
  if not o then return token, e end
  redis.call('ZREM', q.admit, o.member)
  e.member = string.sub(o.member, 1, #o.member - #other) .. token
  redis.call('ZADD', q.admit, 0, e.member)
  admit_store(q, token, e)
  o.member = member
  return other, o
end

-- How long a freed slot is held for a more urgent task still in the Redis lists (see
-- admit_next), in ms.
local HOLD_MS = 250
-- After a hold that no task took, how long until the next may start, in ms: a message that is
-- never fetched (for another endpoint's workers) costs one slot at most 250 ms in 1.25 s.
local HOLD_GAP_MS = 1000

-- Whether a message more urgent than `band` waits in the Redis lists of `queues` ("a,b"), or
-- in their backlogs (sorted by tenant: worker.delivery:backlog_keys):
-- a list's priority step is the band (kombu's "<queue>\x06\x16<step>", step 0 the queue).
local function admit_sooner(queues, band)
  for queue in string.gmatch(queues or '', '[^,]+') do
    for step = 0, band - 1 do
      local list = step == 0 and queue or (queue .. '\6\22' .. step)
      if redis.call('LLEN', list) > 0 or backlog_waiting(list) then
        return true
      end
    end
  end
  return false
end

-- Free slots (lapsed leases too) go to the queue's head, one by one: each granted token gets a
-- lease and is pushed on its worker's grant list. Returns how many were granted.
-- With `q.queues` (a release), a slot whose head is less urgent than a message still in the
-- Redis lists is held free for HOLD_MS, for that task to take when its worker fetches it
-- (acquire_slot); while one is held, the others are granted.
local function admit_next(lease, q, limit, every, now)
  if redis.call('EXISTS', q.admit) == 0 then return 0 end  -- nobody waits: nothing to do
  redis.call('ZREMRANGEBYSCORE', lease, '-inf', now)
  local granted = 0
  -- A fixed cap, the one the controller found (auto_limit.lua), or a pool's: its healthy
  -- replicas' (pool_limit.lua).
  limit = slot_limit(limit, lease, now)
  local hold = tonumber(redis.call('HGET', q.info, 'hold') or '0')
  if hold > now then limit = limit - 1 end
  while redis.call('ZCARD', lease) < limit do
    local member = admit_pick(q, every)
    if not member then break end  -- (the last pick counted one grant too many: no matter)
    local band, finish, token = string.match(member, '^(%d):([%d.]+):(.+)$')
    if q.queues and band ~= '0' and now >= hold + HOLD_GAP_MS
        and admit_sooner(q.queues, tonumber(band)) then
      redis.call('HSET', q.info, 'hold', now + HOLD_MS)
      break
    end
    local e = admit_entry(q, token)
    if not e then
      redis.call('ZREM', q.admit, member)
    else
      token, e = admit_oldest(q, member, token, e)
      admit_drop(q, token, e)
      if e.expiry > now then
        redis.call('ZADD', lease, now + e.ttl, token)
        redis.call('PEXPIRE', lease, e.ttl * 2)
        redis.call('HSET', q.info, 'V:' .. band, finish)
        redis.call('RPUSH', e.owner, token)
        redis.call('PEXPIRE', e.owner, e.ttl)
        granted = granted + 1
      end
    end
  end
  return granted
end

-- The token leaves: its place in the queue, or the slot it was granted and never took.
local function admit_leave(lease, q, token, limit, every, now)
  local e = admit_entry(q, token)
  if e then
    admit_drop(q, token, e)
    return 1
  end
  if redis.call('ZREM', lease, token) == 1 then
    admit_next(lease, q, limit, every, now)
    return 2
  end
  return 0
end

-- A task of `tenant` (band `band`, weight `weight`) ended at an endpoint fair by tokens: its
-- tenant's clock moves by (actual - estimate) / weight, while the tenant has a clock in the
-- band (a waiter), so that its next turns are placed by what it really used. (Virtual Token
-- Counter, Sheng et al., OSDI 2024.) A tenant with no clock left has nothing to correct: it
-- starts from the band's clock when it comes back. Returns 1 if the clock moved.
local function admit_settle(q, band, tenant, weight, delta)
  local field = 'F:' .. band .. ':' .. tenant
  local last = redis.call('HGET', q.info, field)
  if not last or delta == 0 then return 0 end
  redis.call('HSET', q.info, field, string.format('%.6f',
    tonumber(last) + delta / math.max(tonumber(weight) or 1, 0.001)))
  return 1
end
