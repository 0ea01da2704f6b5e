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

-- Whether L's backlog holds a message.
local function backlog_waiting(list)
  return redis.call('HEXISTS', BACKLOG_SIZE, list) == 1
end
