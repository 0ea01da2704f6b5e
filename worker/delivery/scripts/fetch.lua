-- #include worker.delivery:backlog_fair_order
-- Up to `want` messages taken from the queues in one round trip, each recorded as unacked in
-- kombu's format, as its QoS.append writes it (worker.delivery.broker). Each queue list is
-- first sorted into its backlog by tenant (lib/backlog_fair_order.lua: up to as many messages as
-- are still wanted), then its backlog gives its messages in fair order: the tenant of the least
-- virtual finish time first, each tenant's oldest. An unreadable message (not JSON, or no delivery
-- tag and delivery info) is set aside, untouched. Each message is written where it goes before it
-- leaves its list, so an error (a full Redis refusing writes) leaves it queued.
--
-- KEYS[1]  unacked_key        kombu's unacked hash: delivery tag -> [message, exchange, key]
-- KEYS[2]  unacked_index_key  kombu's unacked index: delivery tag scored by its time
-- KEYS[3]  unreadable_key     the list of set-aside messages (genqueue:unreadable)
-- KEYS[4+] queue_lists       the lists to take from, in BRPOP's order (priority first, then
--                             the queue cycle); each backlog is emptied before the next is read
-- ARGV[1]  want               the most messages to take
-- ARGV[2]  now_s              the time the entries are scored by (kombu's score, in seconds)
-- ARGV[3]  unreadable_max     the set-aside list's bound
-- ARGV[4]  default_tenant     the tenant of a message that names none
-- ARGV[5]  weights            "tenant=weight\n..." for the tenants whose weight is not 1
-- ARGV[6]  token_queues       "queue\n..." the queues whose endpoint is fair by tokens: their
--                             lists' tenants take turns by cost (lib/backlog_fair_order.lua);
--                             '' for none
-- ARGV[7]  default_max_tokens the max_tokens of a request that gives none (a turn's cost)
--
-- Returns {list, message, delivery tag, ...} for each message taken, in the order taken; a
-- message set aside comes back as {list, false, false}.
local unacked_key, unacked_index_key, unreadable_key = KEYS[1], KEYS[2], KEYS[3]
local first_queue = 4
local want, now_s, unreadable_max = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local default_tenant, weights = ARGV[4], backlog_weights(ARGV[5])
local token_queues = backlog_costed_queues(ARGV[6])
local default_max_tokens = tonumber(ARGV[7] or '512')

local out = {}
local taken = 0
for i = first_queue, #KEYS do
  if taken >= want then break end
  local list = KEYS[i]
  local costed = backlog_costed(token_queues, list)
  local _, aside = backlog_sort(list, want - taken, out, unreadable_key, unreadable_max,
    default_tenant, weights, costed)
  taken = taken + aside
  taken = taken + backlog_take(list, want - taken, out, unacked_key, unacked_index_key, now_s,
    weights, costed, default_max_tokens)
end
return out
