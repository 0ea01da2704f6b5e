-- The running claims of a worker process known dead given up, so that its tasks, handed back
-- to the queue, are not taken for running elsewhere (worker.delivery.dead_holders).
--
-- KEYS[1+]  running_keys  the claims of the tasks it held (genqueue:running:<task id>)
-- ARGV[1]   prefix        its presence id and a dot: the start of each token it set
--
-- Returns how many claims were deleted: those whose token starts with prefix, not another's.
local running_keys = KEYS
local prefix = ARGV[1]

local released = 0
for _, running_key in ipairs(running_keys) do
  local token = redis.call('GET', running_key)
  if token and string.sub(token, 1, #prefix) == prefix then
    redis.call('DEL', running_key)
    released = released + 1
  end
end
return released
