-- #include worker.delivery:reservation_settle
-- A queued task was cancelled (the API's DELETE): what its submission held of its tenant's day
-- budget is given back now, not when a worker reaches its message (whose end then finds
-- nothing left to give).
--
-- KEYS[1]  record_key       the task's record (genqueue:task:<id>: its tenant, its hold)
-- ARGV[1]  reserved_prefix  the name of a tenant's reserved hash, without the tenant
--                           (worker.keys.reserved_tokens(""))
--
-- Returns the tokens given back.
local record_key, reserved_prefix = KEYS[1], ARGV[1]
local tenant = redis.call('HGET', record_key, 'tenant')
if not tenant then return 0 end
return settle_reservation(record_key, reserved_prefix .. tenant)
