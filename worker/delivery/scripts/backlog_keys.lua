-- A library: the names of the backlog's keys (backlog.lua), as worker.keys writes them, and
-- whether a queue list's backlog holds a message. Included by backlog.lua and by the admission
-- queue (worker.limits:admission), which looks for a more urgent message still queued.
local BACKLOG = 'genqueue:backlog'
local BACKLOG_SIZE = BACKLOG .. '-size'
-- A task's record (worker.keys.task_record) and its tenant field (worker.delivery.records).
local TASK_RECORD = 'genqueue:task:'
local RECORD_TENANT = 'tenant'

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
