-- A library: the names of the backlog's keys (backlog_fair_order.lua), as worker.keys writes them,
-- whether a queue list's backlog holds a message, and the settling of a turn's cost in it.
-- Included by backlog_fair_order.lua and by the admission queue (worker.limits:admission_queue),
-- which looks for a more urgent message still queued (and through it by the task's end script).
local BACKLOG = 'genqueue:backlog'
local BACKLOG_SIZE = BACKLOG .. '-size'
-- A task's record (worker.keys.task_record) and its tenant field (worker.delivery.records).
local TASK_RECORD = 'genqueue:task:'
local RECORD_TENANT = 'tenant'
-- A task's estimated tokens (worker.delivery.records.F_ESTIMATE): a turn's cost by tokens.
local RECORD_ESTIMATE = 'estimated_tokens'

local function backlog_list(list, tenant) return BACKLOG .. ':' .. tenant .. ':' .. list end
local function backlog_tenants(list) return BACKLOG .. '-tenants:' .. list end
local function backlog_clock(list) return BACKLOG .. '-clock:' .. list end
-- hash: "s:<tenant>" the sequence number of the tenant's last message sorted into L's backlog,
-- "t:<tenant>" of its last taken (both gone when its backlog list is): a task's record keeps
-- its message's number (RECORD_SEQ), so its place among its tenant's messages is its number
-- less the last taken (queue_position.lua)
local function backlog_seq(list) return BACKLOG .. '-seq:' .. list end
local RECORD_SEQ = 'backlog_seq'
-- A tenant's sequence starts at the time in ms times this: no number of an earlier streak
-- comes after it (a streak that drained gave fewer than this many messages a ms).
local BACKLOG_SEQ_PER_MS = 1000

-- Whether L's backlog holds a message.
local function backlog_waiting(list)
  return redis.call('HEXISTS', BACKLOG_SIZE, list) == 1
end

-- A task of `tenant` that `list` gave ended, at an endpoint fair by tokens: its tenant's counter
-- in `list`'s backlog moves by `delta` (actual - estimated tokens) over its weight, while the
-- tenant has messages there (backlog_fair_order.lua; worker.limits.cost). Returns 1 if it moved.
local function backlog_settle(list, tenant, weight, delta)
  if list == '' or delta == 0 then return 0 end
  local moved = redis.call('ZADD', backlog_tenants(list), 'XX', 'INCR',
    delta / math.max(tonumber(weight) or 1, 0.001), tenant)
  return moved and 1 or 0
end
