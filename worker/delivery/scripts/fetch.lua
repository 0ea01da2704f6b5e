-- Up to `want` messages taken from the queues' lists in one round trip, each recorded as
-- unacked in kombu's format, as its QoS.append writes it (worker.delivery.broker). An
-- unreadable message (not JSON, or no delivery tag and delivery info) is set aside, untouched.
-- Each message is recorded (or set aside) before it leaves its list, so an error (a full Redis
-- refusing writes) leaves it queued.
--
-- KEYS[1]  unacked_key        kombu's unacked hash: delivery tag -> [message, exchange, key]
-- KEYS[2]  unacked_index_key  kombu's unacked index: delivery tag scored by its time
-- KEYS[3]  unreadable_key     the list of set-aside messages (genqueue:unreadable)
-- KEYS[4+] queue lists        the lists to take from, in BRPOP's order (priority first, then
--                             the queue cycle); each is emptied before the next is read
-- ARGV[1]  want               the most messages to take
-- ARGV[2]  now_s              the time the entries are scored by (kombu's score, in seconds)
-- ARGV[3]  unreadable_max     the set-aside list's bound
--
-- Returns {list, message, delivery tag, ...} for each message taken, oldest first; a message
-- set aside comes back as {list, false, false}.
local unacked_key, unacked_index_key, unreadable_key = KEYS[1], KEYS[2], KEYS[3]
local first_queue = 4
local want, now_s, unreadable_max = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])

-- The message's delivery tag and delivery info, or false when it is not kombu's.
local function envelope(item)
  local ok, message = pcall(cjson.decode, item)
  if not (ok and type(message) == 'table' and type(message['properties']) == 'table') then
    return false
  end
  local properties = message['properties']
  local info = properties['delivery_info']
  if type(properties['delivery_tag']) == 'string' and type(info) == 'table'
      and type(info['exchange']) == 'string' and type(info['routing_key']) == 'string' then
    return properties['delivery_tag'], info
  end
  return false
end

local out = {}
local taken = 0
for i = first_queue, #KEYS do
  local queue = KEYS[i]
  while taken < want do
    local item = redis.call('LINDEX', queue, -1)
    if not item then break end
    local tag, info = envelope(item)
    if tag then
      redis.call('ZADD', unacked_index_key, now_s, tag)
      redis.call('HSET', unacked_key, tag, '[' .. item .. ',' .. cjson.encode(info['exchange'])
        .. ',' .. cjson.encode(info['routing_key']) .. ']')
    else
      redis.call('LPUSH', unreadable_key, item)
      redis.call('LTRIM', unreadable_key, 0, unreadable_max - 1)
      item = false
    end
    redis.call('RPOP', queue)
    taken = taken + 1
    out[#out + 1] = queue
    out[#out + 1] = item
    out[#out + 1] = tag
  end
end
return out
