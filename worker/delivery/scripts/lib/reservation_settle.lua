-- A library: the function `settle_reservation`, which gives back what a submission held of its
-- tenant's day budget (tokens_per_day): the record's reserved_tokens on its reserved_day, taken
-- off the tenant's reserved hash once (the fields go with it). Included by task_end.lua (a
-- task's end) and reservation_release.lua (a queued task cancelled). Returns the tokens given
-- back (0 when there was nothing left to give).
local function settle_reservation(record_key, reserved_key)
  local reserved = redis.call('HMGET', record_key, 'reserved_tokens', 'reserved_day')
  if not reserved[1] then return 0 end
  local left = redis.call('HINCRBY', reserved_key, reserved[2], -tonumber(reserved[1]))
  if left <= 0 then redis.call('HDEL', reserved_key, reserved[2]) end
  redis.call('HDEL', record_key, 'reserved_tokens', 'reserved_day')
  return tonumber(reserved[1])
end
