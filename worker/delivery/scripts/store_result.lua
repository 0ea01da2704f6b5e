-- A Celery task state, written and published in one step unless a success is stored already
-- (worker.delivery.result_backend): a retry's late RETRY never overwrites the next run's SUCCESS.
--
-- KEYS[1] result_key     Celery's result key of the task
-- ARGV[1] meta           the state's meta (JSON, Celery's format)
-- ARGV[2] ttl_s          the result's time to live in seconds (0: none)
-- ARGV[3] success        Celery's SUCCESS state name
--
-- Returns 1 when written, 0 when the key already held a success (left untouched).
local result_key = KEYS[1]
local meta, ttl_s, success = ARGV[1], tonumber(ARGV[2]), ARGV[3]

local current = redis.call('GET', result_key)
if current then
  local ok, stored = pcall(cjson.decode, current)
  if ok and type(stored) == 'table' and stored['status'] == success then return 0 end
end
if ttl_s > 0 then
  redis.call('SET', result_key, meta, 'EX', ttl_s)
else
  redis.call('SET', result_key, meta)
end
redis.call('PUBLISH', result_key, meta)
return 1
