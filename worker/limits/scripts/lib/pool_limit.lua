-- A library: the functions `slot_limit` (how many slots an endpoint has now) and the pool
-- helpers it and pool_pick.lua share. Included by admission_queue.lua, so every script that grants
-- slots (acquire_slot, admit_next) reads the limit through it.
--
-- `limit` is an endpoint's cap ("4", or "auto:...": auto_limit.lua), or a pool's spec
-- (worker.limits.pool.ReplicaPool.spec):
-- "pool|<assign>|<cap>|<breaker>|<probe>|<cap>|<breaker>|<probe>|...", one cap, breaker and probe
-- key per replica, in the order of its `urls`; `assign` is the hash of each pool slot's replica
-- (token -> replica index), which counts only while the token holds a lease. A pool's limit is the
-- sum, over its replicas, of
--   - its cap when its breaker is closed;
--   - when half-open (the cooldown passed): the calls it holds, plus one for its probe when it
--     holds none and no probe is running there;
--   - when open: the calls it still holds (they hold their pool slots until they end), so that
--     an open replica's share goes to the others at once, and no more than they have room for.
-- When every replica is open, `slot_limit` also returns the soonest end of their cooldowns.

local function pool_replicas(spec)
  local parts = {}
  for part in string.gmatch(spec, '[^|]+') do parts[#parts + 1] = part end
  local replicas = {}
  for i = 3, #parts, 3 do
    replicas[#replicas + 1] = {cap = tonumber(parts[i]), breaker = parts[i + 1],
      probe = parts[i + 2]}
  end
  return parts[2], replicas
end

-- The live calls on each replica (index from 0), from the assign hash and the pool's leases.
local function pool_counts(assign, lease, now)
  local counts = {}
  local entries = redis.call('HGETALL', assign)
  for i = 1, #entries, 2 do
    local expiry = tonumber(redis.call('ZSCORE', lease, entries[i]) or '0')
    if expiry > now then
      local r = tonumber(entries[i + 1])
      counts[r] = (counts[r] or 0) + 1
    end
  end
  return counts
end

-- A replica's state: 'open', 'half' (its cooldown passed: one probe may go) or 'closed'; and
-- when its cooldown ends (ms).
local function pool_state(replica, now)
  local open_until = tonumber(redis.call('HGET', replica.breaker, 'open_until') or '0')
  if open_until > now then return 'open', open_until end
  if open_until > 0 then return 'half', open_until end
  return 'closed', 0
end

-- How many calls the replica may hold now (see above), given the calls it holds.
local function pool_allowed(replica, state, held)
  if state == 'closed' then return replica.cap end
  if state == 'half' and held == 0 and redis.call('EXISTS', replica.probe) == 0 then
    return 1
  end
  return held
end

local function slot_limit(limit, lease, now)
  if string.sub(limit, 1, 5) ~= 'pool|' then
    return limit_in_force(limit), nil  -- a fixed cap, or "auto" (auto_limit.lua)
  end
  local assign, replicas = pool_replicas(limit)
  local counts = pool_counts(assign, lease, now)
  local total, soonest, all_open = 0, nil, true
  for i, replica in ipairs(replicas) do
    local state, open_until = pool_state(replica, now)
    total = total + pool_allowed(replica, state, counts[i - 1] or 0)
    if state == 'open' then
      if not soonest or open_until < soonest then soonest = open_until end
    else
      all_open = false
    end
  end
  if all_open then return total, soonest end
  return total, nil
end
