-- #include worker.delivery:backlog_keys
-- Empties the backlogs of the queue lists KEYS (one queue's lists, a list per priority step):
-- every tenant's messages, the tenants, the clock, the sequence numbers and the size of each.
-- Called after kombu's purge empties the lists themselves (worker.delivery.broker's
-- Channel._purge: `celery purge`, `celery amqp queue.purge`).
--
-- KEYS[1+]  lists   the queue's lists, one per priority step
--
-- Returns how many messages it removed.
local removed = 0
for _, list in ipairs(KEYS) do
  for _, tenant in ipairs(redis.call('ZRANGE', backlog_tenants(list), 0, -1)) do
    local queue = backlog_list(list, tenant)
    removed = removed + redis.call('LLEN', queue)
    redis.call('DEL', queue)
  end
  redis.call('DEL', backlog_tenants(list), backlog_clock(list), backlog_seq(list))
  redis.call('HDEL', BACKLOG_SIZE, list)
end
return removed
