-- Choose the replica of a pool for a call that holds one of the pool's slots (its token is in
-- the pool's lease set): the replica with the most room relative to its limit among those whose
-- breaker is closed (or half-open, for its one probe; lib/pool_limit.lua); with an affinity key,
-- the replica that served the key last while it has room. Ties go to the replica listed first.
-- The call's token is then assigned to the replica (it counts there while its lease lives),
-- a half-open replica's probe lock is taken for it, and the key remembers the replica.
-- Assignments whose lease is gone (released, or swept: a dead worker's) are removed here.
--
-- KEYS[1]  lease        the pool's leases
-- KEYS[2]  affinity     hash: key -> replica index
-- ARGV[1]  spec         the pool's spec (lib/pool_limit.lua)
-- ARGV[2]  token        the call's slot token
-- ARGV[3]  ttl_ms       a lease's time to live
-- ARGV[4]  key          the affinity key ("": none)
-- ARGV[5]  affinity_ttl_ms  the affinity's time to live
-- ARGV[6]  affinity_max the most affinity entries kept
-- Returns {replica index, 0}; {-1, ms until a replica may take work} when every replica is open
-- (or half-open with its probe running); {-2, 0} when a closed one is full (a breaker opened
-- between this call's grant and its pick: the room comes back as calls end).
local lease, affinity = KEYS[1], KEYS[2]
local spec, token, ttl_ms, key = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local affinity_ttl_ms, affinity_max = tonumber(ARGV[5]), tonumber(ARGV[6])
-- #include worker.limits:now_ms
-- #include worker.limits:pool_limit

local assign, replicas = pool_replicas(spec)
local entries = redis.call('HGETALL', assign)
local counts = {}
for i = 1, #entries, 2 do
  local expiry = tonumber(redis.call('ZSCORE', lease, entries[i]) or '0')
  if expiry > now and entries[i] ~= token then
    local r = tonumber(entries[i + 1])
    counts[r] = (counts[r] or 0) + 1
  elseif expiry <= now then
    redis.call('HDEL', assign, entries[i])
  end
end

local rooms, soonest, closed = {}, nil, false
for i, replica in ipairs(replicas) do
  local r = i - 1
  local state, open_until = pool_state(replica, now)
  local held = counts[r] or 0
  local allowed = pool_allowed(replica, state, held)
  rooms[r] = {room = allowed - held, allowed = allowed, state = state}
  if state == 'closed' then closed = true end
  if state ~= 'closed' and (not soonest or open_until < soonest) then soonest = open_until end
end

local chosen = nil
if key ~= '' then
  local last = tonumber(redis.call('HGET', affinity, key) or '-1')
  if rooms[last] and rooms[last].room > 0 then chosen = last end
end
if not chosen then
  local best = -1
  for r = 0, #replicas - 1 do
    local room = rooms[r]
    if room.room > 0 then
      local free = room.room / room.allowed
      if free > best then best, chosen = free, r end
    end
  end
end
if not chosen and closed then return {-2, 0} end
if not chosen then
  local wait = 1000
  if soonest and soonest > now then wait = soonest - now end
  return {-1, wait}
end

redis.call('HSET', assign, token, chosen)
redis.call('PEXPIRE', assign, ttl_ms * 4)
if rooms[chosen].state == 'half' then
  redis.call('SET', replicas[chosen + 1].probe, token, 'PX', ttl_ms)
end
if key ~= '' then
  if redis.call('HLEN', affinity) >= affinity_max then redis.call('DEL', affinity) end
  redis.call('HSET', affinity, key, chosen)
  redis.call('PEXPIRE', affinity, affinity_ttl_ms)
end
return {chosen, 0}
