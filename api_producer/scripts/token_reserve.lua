-- A submission's token estimate held against its tenant's day budget, checked and held in one
-- step so that concurrent submissions cannot both take the last of it (api_producer.quota).
-- What the day has used (counted by each task's end, worker/delivery/scripts/task_end.lua)
-- plus what is held for tasks not ended yet, plus this cost, may not pass the budget. The
-- day before's holds count too: a task held at 23:59:59 ends, and counts, on the next day, so
-- its tokens cannot be spent again by a submission at 00:00:01.
--
-- KEYS[1] usage_key      the tenant's usage of the day (its total_tokens field)
-- KEYS[2] reserved_key   the tenant's tokens held, by day
-- ARGV[1] day            the UTC day (YYYY-MM-DD)
-- ARGV[2] cost           the tokens to hold
-- ARGV[3] budget         the tenant's tokens_per_day
-- ARGV[4] key_ttl_s      how long the holdings are kept, in seconds
-- ARGV[5] day_before     the UTC day before ARGV[1] (YYYY-MM-DD)
--
-- Returns {1, used} with what the day has used and held after this submission, or {0, used}
-- (nothing held) when it would pass the budget.
local usage_key, reserved_key = KEYS[1], KEYS[2]
local day, cost, budget = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local key_ttl_s, day_before = ARGV[4], ARGV[5]

local used = tonumber(redis.call('HGET', usage_key, 'total_tokens') or '0')
  + tonumber(redis.call('HGET', reserved_key, day) or '0')
  + math.max(0, tonumber(redis.call('HGET', reserved_key, day_before) or '0'))
if used + cost > budget then
  return {0, used}
end
redis.call('HINCRBY', reserved_key, day, cost)
redis.call('EXPIRE', reserved_key, key_ttl_s)
return {1, used + cost}
