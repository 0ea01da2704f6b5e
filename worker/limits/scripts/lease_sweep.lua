-- Frees the slots and places of dead worker processes at once, keeps those of stalled ones
-- (worker.limits.presence), then gives free slots to the head of the admission queue
-- (lib/admission_queue.lua). Run by a worker's admission listener when its grant list is quiet, and
-- by each lease heartbeat.
--
-- A lease or waiter token is "<process id>.<random>". With the ids of the processes whose
-- presence connection is open (`live`):
-- - a token of a process not in it is dead: its lease is removed and its waiters leave the
--   queue (the process's kernel closed its connection: it was killed);
-- - a lease of a live process that has not swept for `stall_ms` (stopped, not dead: its call may
--   still run at the endpoint) is renewed on its behalf, so the cap still counts it.
-- A token without a process id (or `live` = "-": Redis would not list its connections) lapses
-- by its TTL alone, as before.
--
-- KEYS[1]  lease     the endpoint's leases: sorted set of slot tokens by expiry
-- KEYS[2]  admit     the endpoint's admission queue (lib/admission_queue.lua): its order
-- KEYS[3]  byage     its waiters by band, tenant and age
-- KEYS[4]  info      its waiters' entries and clocks
-- KEYS[5]  age       its waiters by their task's creation time
-- KEYS[6]  swept     hash: process id -> when it last swept, ms
-- ARGV[1]  limit     the endpoint's cap
-- ARGV[2]  every     see lib/admission_queue.lua
-- ARGV[3]  ttl_ms    a lease's time to live
-- ARGV[4]  stall_ms  ms without a sweep after which a live process counts as stalled
-- ARGV[5]  self_id   this process's id
-- ARGV[6]  live_spec the ids of the live processes ("id,id,...", or "-")
-- Returns {slots granted, dead tokens removed}.
local lease = KEYS[1]
local q = {admit = KEYS[2], byage = KEYS[3], info = KEYS[4], age = KEYS[5]}
local swept = KEYS[6]
local limit, every = ARGV[1], ARGV[2]
local ttl_ms, stall_ms, self_id, live_spec = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5], ARGV[6]
-- #include worker.limits:now_ms
-- #include worker.limits:admission_queue

redis.call('HSET', swept, self_id, now)
redis.call('PEXPIRE', swept, ttl_ms * 4)
local removed = 0
if live_spec ~= '-' then
  local live = {}
  for id in string.gmatch(live_spec, '[^,]+') do live[id] = true end
  local dead = {}
  local leases = redis.call('ZRANGE', lease, 0, -1, 'WITHSCORES')
  for i = 1, #leases, 2 do
    local token = leases[i]
    local proc = string.match(token, '^(%w+)%.')
    if proc and not live[proc] then
      redis.call('ZREM', lease, token)
      dead[proc] = true
      removed = removed + 1
    elseif proc then
      local last = tonumber(redis.call('HGET', swept, proc) or '0')
      if now - last > stall_ms then
        redis.call('ZADD', lease, 'XX', now + ttl_ms, token)  -- stalled: keep its slot
      end
    end
  end
  -- A process gone (dead or stopped) leaves no field behind.
  for _, proc in ipairs(redis.call('HKEYS', swept)) do
    if not live[proc] then redis.call('HDEL', swept, proc) end
  end
  -- The waiters of the dead processes among the queue's (each joined "w:<token>" in info).
  for proc in pairs(dead) do
    local cursor = '0'
    repeat
      local page = redis.call('HSCAN', q.info, cursor, 'MATCH', 'w:' .. proc .. '.*', 'COUNT', 500)
      cursor = page[1]
      for i = 1, #page[2], 2 do
        local token = string.sub(page[2][i], 3)
        local e = admit_entry(q, token)
        if e then
          admit_drop(q, token, e)
          removed = removed + 1
        end
      end
    until cursor == '0'
  end
end
return {admit_next(lease, q, limit, every, now), removed}
