-- #include worker.delivery:backlog_keys
-- A library: the backlog, the messages of a queue's Redis list sorted by tenant so that a fetch
-- takes them in fair order however many of one tenant's came first (see docs/scheduling.md).
-- Included by fetch.lua and backlog_sort.lua (worker.delivery.broker).
--
-- For each queue list L (kombu's "<queue>" or "<queue>\x06\x16<step>": one priority band),
-- the keys of worker.keys (backlog_keys.lua names them):
--   genqueue:backlog:<tenant>:<L>    list: the tenant's messages of L, as kombu pushed them
--                                    (raw, oldest at the tail); no TTL, as kombu's lists
--   genqueue:backlog-tenants:<L>     sorted set: each tenant with messages in L, scored by
--                                    the virtual finish time of its oldest one
--   genqueue:backlog-clock:<L>       string: L's clock, the finish time of the last taken
--   genqueue:backlog-size            hash: L -> how many messages L's backlog holds
-- A tenant of weight w moves its score on by 1/w a message taken (self-clocked weighted fair
-- queuing, as the admission queue's); one with nothing queued has no state at all, and one
-- that comes back starts from the clock: no credit for its absence. Everything of L is gone
-- when its backlog is empty. Where L's queue is fair by tokens (worker.limits.cost), a score is
-- the tenant's counter of tokens served over its weight (the Virtual Token Counter, Sheng et
-- al., OSDI 2024): a message taken moves it on by its estimated tokens / w, the task's end
-- corrects it by (actual - estimate) / w (backlog_settle), and the least counter goes first.

local B64 = {}
do
  local alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'
  for i = 1, 64 do B64[string.byte(alphabet, i)] = i - 1 end
end

-- The bytes of base64 text (false if it is not base64).
local function backlog_b64(text)
  local out, n = {}, 0
  for i = 1, #text - 3, 4 do
    local a, b, c, d = string.byte(text, i, i + 3)
    local x, y = B64[a], B64[b]
    if not (x and y) then return false end
    local z, w = B64[c], B64[d]
    local v = x * 262144 + y * 4096 + (z or 0) * 64 + (w or 0)
    n = n + 1
    if w then
      out[n] = string.char(math.floor(v / 65536), math.floor(v / 256) % 256, v % 256)
    elseif z then
      out[n] = string.char(math.floor(v / 65536), math.floor(v / 256) % 256)
    else
      out[n] = string.char(math.floor(v / 65536))
    end
  end
  return table.concat(out)
end

-- The delivery tag and delivery info of a kombu message, and the message; false when it is not
-- kombu's (as worker.delivery.broker.envelope reads it).
local function backlog_envelope(item)
  local ok, message = pcall(cjson.decode, item)
  if not (ok and type(message) == 'table' and type(message['properties']) == 'table') then
    return false
  end
  local properties = message['properties']
  local info = properties['delivery_info']
  if type(properties['delivery_tag']) == 'string' and type(info) == 'table'
      and type(info['exchange']) == 'string' and type(info['routing_key']) == 'string' then
    return properties['delivery_tag'], info, message
  end
  return false
end

local function backlog_tenant_name(name)
  return type(name) == 'string' and #name <= 64 and string.match(name, '^%w[%w_%.%-]*$')
end

-- The request of a genqueue.generate message, decoded from its body (plain Celery: args
-- [request] or kwargs {request = ...}); nil when it has none.
local function backlog_request(message)
  local body = message['body']
  if type(body) ~= 'string' then return nil end
  if message['properties']['body_encoding'] == 'base64' then
    body = backlog_b64(body)
    if not body then return nil end
  end
  local ok, decoded = pcall(cjson.decode, body)
  if not (ok and type(decoded) == 'table') then return nil end
  local args, kwargs, raw = decoded[1], decoded[2], nil
  if type(args) == 'table' and #args == 1 then
    raw = args[1]
  elseif type(kwargs) == 'table' then
    raw = kwargs['request']
  end
  return type(raw) == 'table' and raw or nil
end

-- The tenant a genqueue.generate message names in its request (as worker.tenancy.tenants'
-- tenant_of_message reads it), else `default`. The task's record says it when a genqueue
-- producer wrote one (one read); else the message's body is decoded (plain Celery).
local function backlog_tenant(message, default)
  local headers = message['headers']
  local id = type(headers) == 'table' and headers['id']
  if type(id) == 'string' then
    local named = redis.call('HGET', TASK_RECORD .. id, RECORD_TENANT)
    if backlog_tenant_name(named) then return named end
  end
  local raw = backlog_request(message)
  local name = raw and raw['tenant']
  return backlog_tenant_name(name) and name or default
end

-- The characters of a text (UTF-8 code points, as Python counts them), 0 if not a string.
local function backlog_chars(text)
  if type(text) ~= 'string' then return 0 end
  local _, n = string.gsub(text, '[^\128-\191]', '')
  return n
end

-- The cost of a message's turn where its queue is fair by tokens: the estimate its task's
-- record keeps (RECORD_ESTIMATE, written by genqueue's producers), else the one of its request
-- (worker.contract's request_tokens_estimate: the prompt's characters / 4, rounded up, plus its
-- max_tokens or `default_max`), decoded from its body (plain Celery).
local function backlog_cost(message, default_max)
  local headers = message['headers']
  local id = type(headers) == 'table' and headers['id']
  if type(id) == 'string' then
    local kept = tonumber(redis.call('HGET', TASK_RECORD .. id, RECORD_ESTIMATE) or '')
    if kept then return kept end
  end
  local raw = backlog_request(message)
  if not raw then return default_max end
  local chars = backlog_chars(raw['prompt']) + backlog_chars(raw['system'])
  if type(raw['messages']) == 'table' then
    for _, m in ipairs(raw['messages']) do
      if type(m) == 'table' then chars = chars + backlog_chars(m['content']) end
    end
  end
  local params = raw['params']
  local most = type(params) == 'table' and tonumber(params['max_tokens'])
  return math.ceil(chars / 4) + ((most and most >= 1) and most or default_max)
end

-- The queues fair by tokens, from "queue\n..." (the worker's, worker.delivery.backlog), and
-- whether a queue list (kombu's "<queue>" or "<queue>\x06\x16<step>") is one of theirs.
local function backlog_costed_queues(spec)
  local queues = {}
  for name in string.gmatch(spec or '', '[^\n]+') do queues[name] = true end
  return queues
end

local function backlog_costed(queues, list)
  return queues[string.match(list, '^(.-)\6\22') or list] == true
end

-- The weights of "name=weight\n..." (the tenants whose weight is not 1).
local function backlog_weights(spec)
  local weights = {}
  for name, weight in string.gmatch(spec or '', '([^\n=]+)=([^\n]+)') do
    weights[name] = math.max(tonumber(weight) or 1, 0.001)
  end
  return weights
end

-- The message's sequence number among its tenant's in `list`'s backlog, kept in its task's
-- record (when a genqueue producer wrote one) for its place in the queue.
local function backlog_number(list, tenant, message)
  local seqs, field = backlog_seq(list), 's:' .. tenant
  if redis.call('HEXISTS', seqs, field) == 0 then
    local time = redis.call('TIME')
    local base = string.format('%d', (tonumber(time[1]) * 1000
      + math.floor(tonumber(time[2]) / 1000)) * BACKLOG_SEQ_PER_MS)
    redis.call('HSET', seqs, field, base, 't:' .. tenant, base)
  end
  local seq = string.format('%d', redis.call('HINCRBY', seqs, field, 1))
  local headers = message['headers']
  local id = type(headers) == 'table' and headers['id']
  if type(id) == 'string' and redis.call('EXISTS', TASK_RECORD .. id) == 1 then
    redis.call('HSET', TASK_RECORD .. id, RECORD_SEQ, seq)
  end
end

-- Up to `n` messages off the tail of `list` into its backlog, oldest first; one that is not
-- kombu's is set aside in `unreadable` (and {list, false, false} added to `out`). Each is
-- written where it goes before it leaves `list`. Returns how many were moved, set aside.
-- With `costed` (the list is fair by tokens), a tenant's score is its counter (the Virtual
-- Token Counter's): it starts at the clock, and each message taken moves it by cost/weight.
local function backlog_sort(list, n, out, unreadable, unreadable_max, default, weights, costed)
  local moved, aside, clock = 0, 0, nil
  local tenants = backlog_tenants(list)
  while moved + aside < n do
    local item = redis.call('LINDEX', list, -1)
    if not item then break end
    local tag, _, message = backlog_envelope(item)
    if tag then
      local tenant = backlog_tenant(message, default)
      redis.call('LPUSH', backlog_list(list, tenant), item)
      backlog_number(list, tenant, message)
      if not redis.call('ZSCORE', tenants, tenant) then
        clock = clock or tonumber(redis.call('GET', backlog_clock(list)) or '0')
        redis.call('ZADD', tenants, clock + (costed and 0 or 1 / (weights[tenant] or 1)), tenant)
      end
      redis.call('HINCRBY', BACKLOG_SIZE, list, 1)
      moved = moved + 1
    else
      redis.call('LPUSH', unreadable, item)
      redis.call('LTRIM', unreadable, 0, unreadable_max - 1)
      out[#out + 1] = list
      out[#out + 1] = false
      out[#out + 1] = false
      aside = aside + 1
    end
    redis.call('RPOP', list)
  end
  return moved, aside
end

-- Up to `n` messages of `list`'s backlog, the tenant of the least virtual finish time first
-- (each tenant's oldest), each recorded as unacked in kombu's format (as its QoS.append writes
-- it) before it leaves the backlog, and {list, message, tag} added to `out`. Returns how many.
-- With `costed` (fair by tokens), a message taken moves its tenant's score on by its cost
-- (backlog_cost: `default_max` is the max_tokens of a request that gives none) over its weight,
-- and the tenants' scores are counters: the one served least goes first.
local function backlog_take(list, n, out, unacked, unacked_index, now_s, weights, costed,
                            default_max)
  local tenants = backlog_tenants(list)
  local taken, finish = 0, nil
  while taken < n do
    local head = redis.call('ZRANGE', tenants, 0, 0, 'WITHSCORES')
    if not head[1] then break end
    local tenant = head[1]
    finish = tonumber(head[2])
    local queue = backlog_list(list, tenant)
    local item = redis.call('LINDEX', queue, -1)
    local cost = 1
    if item then
      local tag, info, message = backlog_envelope(item)
      if costed then cost = backlog_cost(message, default_max) end
      redis.call('ZADD', unacked_index, now_s, tag)
      redis.call('HSET', unacked, tag, '[' .. item .. ',' .. cjson.encode(info['exchange'])
        .. ',' .. cjson.encode(info['routing_key']) .. ']')
      redis.call('RPOP', queue)
      redis.call('HINCRBY', backlog_seq(list), 't:' .. tenant, 1)
      out[#out + 1] = list
      out[#out + 1] = item
      out[#out + 1] = tag
      taken = taken + 1
    end
    if redis.call('EXISTS', queue) == 1 then
      redis.call('ZADD', tenants, finish + cost / (weights[tenant] or 1), tenant)
    else
      redis.call('ZREM', tenants, tenant)
      redis.call('HDEL', backlog_seq(list), 's:' .. tenant, 't:' .. tenant)
    end
  end
  if taken > 0 then
    if redis.call('HINCRBY', BACKLOG_SIZE, list, -taken) <= 0 then
      redis.call('HDEL', BACKLOG_SIZE, list)
    end
  end
  if redis.call('EXISTS', tenants) == 0 then
    redis.call('DEL', backlog_clock(list))
  elseif finish then
    redis.call('SET', backlog_clock(list), string.format('%.17g', finish))
  end
  return taken
end
