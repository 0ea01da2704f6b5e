-- #include worker.delivery:backlog_fair_order
-- #include worker.limits:admission_queue
-- A queued task's place: how many tasks will get a slot of its endpoint before it, as the
-- scheduler sees them now, and the endpoint's recent completions per second (see
-- docs/scheduling.md, "Where a task is in the queue"). Read only; a bounded number of commands
-- whatever the backlog's size: a count or two per priority band and per tenant (the first
-- TENANTS_MAX tenants of the task's band), no scan of a list.
--
-- KEYS[1]  record_key     the task's record (its tenant, queue, priority, backlog number)
-- KEYS[2]  events_key     the completion stream (genqueue:events)
-- ARGV[1]  default_endpoint  the endpoint of genqueue's own queue
-- ARGV[2]  weights        "tenant=weight\n..." for the tenants whose weight is not 1
-- ARGV[3]  default_tenant the tenant of a task that names none
--
-- Returns {position, rate}: both false when the task is over (its record's finished_at);
-- position false when the record names no queue; rate (completions
-- a second over the last RATE_ENTRIES entries of the last RATE_WINDOW_MS) false when fewer than
-- two tasks ended then.
local TENANTS_MAX = 64
local RATE_ENTRIES = 50
local RATE_WINDOW_MS = 60000
local record_key, events_key = KEYS[1], KEYS[2]
local default_endpoint, weights, default_tenant = ARGV[1], backlog_weights(ARGV[2]), ARGV[3]

local f = redis.call('HMGET', record_key, RECORD_TENANT, 'queue', 'priority', RECORD_SEQ,
  'created_at', 'finished_at')
if f[6] then return {false, false} end  -- over: nothing to count
local queue = f[2]
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

local rate = false
local recent = redis.call('XREVRANGE', events_key, '+', '-', 'COUNT', RATE_ENTRIES)
local n, oldest = 0, nil
for _, entry in ipairs(recent) do
  local ms = tonumber(string.match(entry[1], '^(%d+)'))
  if ms and ms >= now - RATE_WINDOW_MS then
    n = n + 1
    oldest = ms
  end
end
if n >= 2 and now > oldest then rate = string.format('%.6f', n * 1000 / (now - oldest)) end
if not queue then return {false, rate} end

local tenant = backlog_tenant_name(f[1]) and f[1] or default_tenant
local band = math.max(0, math.min(9, tonumber(f[3] or '0') or 0))
local function band_list(b) return b == 0 and queue or (queue .. '\6\22' .. b) end
local list = band_list(band)
local prefix = 'genqueue.'
local endpoint = string.sub(queue, 1, #prefix) == prefix and string.sub(queue, #prefix + 1)
  or default_endpoint
local admit = 'genqueue:admit:' .. endpoint
local byage = 'genqueue:admit-byage:' .. endpoint

-- Everything of the more urgent bands: in the Redis list, the backlog, the admission queue.
local position = 0
for b = 0, band - 1 do
  local l = band_list(b)
  position = position + redis.call('LLEN', l)
    + tonumber(redis.call('HGET', BACKLOG_SIZE, l) or '0')
    + redis.call('ZLEXCOUNT', admit, '[' .. b .. ':', '(' .. b .. ';')
end

local function waiting(t, before)
  local p = band .. '\t' .. t .. '\t'
  return redis.call('ZLEXCOUNT', byage, '[' .. p, before and ('(' .. p .. before)
    or ('(' .. p .. '\255'))
end

-- Its own tenant's tasks ahead of it: those before it in its backlog list (its number less the
-- last taken), and those held by workers that were created before it.
local seqs = backlog_seq(list)
local seq = tonumber(f[4])
-- (no number taken: its tenant's streak ended, so the task's number is of an earlier one)
local taken = tonumber(redis.call('HGET', seqs, 't:' .. tenant) or '')
local own = redis.call('LLEN', backlog_list(list, tenant))
local ahead
if not seq then
  -- not sorted yet: behind all its tenant's, and every other message not sorted counted
  ahead = own + waiting(tenant)
  position = position + math.max(0, redis.call('LLEN', list) - 1)
elseif taken and seq > taken then
  ahead = math.min(seq - taken - 1, own) + waiting(tenant)  -- in the backlog
else
  ahead = waiting(tenant, string.format('%015d', admit_created(f[5], now)))  -- held
end
position = position + ahead

-- Each other tenant's tasks that fair shares let go first: up to (ahead + 1) turns of its own,
-- in the other's weight, and no more than the other has queued in the band.
local me = weights[tenant] or 1
local seen = {[tenant] = true}
local others = {}
for _, t in ipairs(redis.call('ZRANGE', backlog_tenants(list), 0, TENANTS_MAX - 1)) do
  if not seen[t] then seen[t] = true; others[#others + 1] = t end
end
local from = '[' .. band .. '\t'
for _ = 1, TENANTS_MAX do
  local next = redis.call('ZRANGEBYLEX', byage, from, '(' .. band .. '\n', 'LIMIT', 0, 1)[1]
  if not next then break end
  local t = string.match(next, '^%d\t([^\t]*)\t')
  if not t then break end
  if not seen[t] then seen[t] = true; others[#others + 1] = t end
  from = '(' .. band .. '\t' .. t .. '\t\255'
end
for _, t in ipairs(others) do
  local queued = redis.call('LLEN', backlog_list(list, t)) + waiting(t)
  local turns = math.floor((ahead + 1) * (weights[t] or 1) / me)
  position = position + math.min(queued, turns)
end
return {position, rate}
