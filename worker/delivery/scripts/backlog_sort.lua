-- #include worker.delivery:backlog_fair_order
-- Sorts up to `most` messages of the queue lists into their backlogs (lib/backlog_fair_order.lua),
-- taking none: run by a worker whose prefetch window is full (worker.delivery.broker), so that a
-- tenant's message sent behind another's long backlog is next in fair order by the time a
-- window has room. An unreadable message is set aside, untouched, as the fetch does.
--
-- KEYS[1]  unreadable_key   the list of set-aside messages (genqueue:unreadable)
-- KEYS[2+] queue_lists      the lists to sort, in BRPOP's order (priority first)
-- ARGV[1]  most             the most messages to move
-- ARGV[2]  unreadable_max   the set-aside list's bound
-- ARGV[3]  default_tenant   the tenant of a message that names none
-- ARGV[4]  weights          "tenant=weight\n..." for the tenants whose weight is not 1
-- ARGV[5]  token_queues     "queue\n..." the queues whose endpoint is fair by tokens
--
-- Returns {moved, left, list of each message set aside...}: left is 1 when a list still holds
-- messages (the next call has more to do), else 0.
local unreadable_key = KEYS[1]
local first_queue = 2
local most, unreadable_max = tonumber(ARGV[1]), tonumber(ARGV[2])
local default_tenant, weights = ARGV[3], backlog_weights(ARGV[4])
local token_queues = backlog_costed_queues(ARGV[5])

local out, moved = {}, 0
for i = first_queue, #KEYS do
  if moved >= most then break end
  local n, aside = backlog_sort(KEYS[i], most - moved, out, unreadable_key, unreadable_max,
    default_tenant, weights, backlog_costed(token_queues, KEYS[i]))
  moved = moved + n + aside
end
local left = 0
for i = first_queue, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    left = 1
    break
  end
end
local reply = {moved, left}
for i = 1, #out, 3 do reply[#reply + 1] = out[i] end
return reply
