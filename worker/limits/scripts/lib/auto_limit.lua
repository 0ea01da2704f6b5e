-- A library: the concurrency limit in force of an endpoint, and the controller that finds it
-- when its `max_concurrency` is "auto" (docs/endpoints.md). Included by admission_queue.lua, so
-- that every slot script (acquire_slot, release_slot, the admission queue's grants and sweeps)
-- reads the limit the same way, in the same script: every worker agrees on it.
--
-- A limit argument is a spec: "<n>" (a fixed cap), or "auto:<min>:<max>:<key>", whose limit is
-- the field `limit` of the hash <key> (worker.keys.auto_limit), floored, within [min, max]; the
-- min until the controller has measured anything.
--
-- The controller (auto_limit_sample, at the end of each call) learns from windows of samples,
-- each a call's latency per output token (its whole time when the endpoint counted none):
-- - a window closes after max(WINDOW_MIN, limit) samples; its mean is compared with `min`, the
--   lowest window mean seen (the no-load latency: Vegas's rtt_noload, Envoy's minRTT);
-- - mean within TOLERANCE of min, and the slots were all taken (or tasks waited) during the
--   window: the limit rises by max(1, limit * GROWTH) (additive near the bottom, as Vegas's
--   increase; an unused limit does not grow, as Vegas's and Gradient2's "app-limited" check);
--   by NEAR_STEP only, when within one of `mark`, the limit the last back-off came from (as
--   TCP's congestion avoidance above its threshold): it spends most windows under the knee,
--   and tries the knee again now and then; `mark` is forgotten two above it (the knee moved);
-- - but the first window after a rise to more slots, whose throughput rose by less than half
--   what the slots added would give a server with room (STEP_GAIN of new / old - 1): back to
--   where it rose from, which becomes `mark` (past a high knee latency grows by less than
--   TOLERANCE a slot, (17 / 16) ** 1.5 = 1.095, while throughput falls);
-- - mean over TOLERANCE x min while the window's throughput rose by less than TP_RISE: the limit
--   is multiplied by TOLERANCE x min / mean, at least by GRADIENT_FLOOR (the gradient of
--   Envoy's controller and Gradient2, without the headroom), and loses one slot at least;
--   latency that grew with throughput holds the limit where it is;
-- - an overload (429, 503, a timeout) multiplies it by BACKOFF at once, once per window;
-- - every PROBE_EVERY windows (and after PROBE_AT_FLOOR windows at the min, as Envoy does), one
--   window runs at half the limit (at least the min), and its mean becomes `min`: the no-load
--   latency is re-measured, not kept forever.
--
-- A window holds only calls that started under the limit in force: when its floor changes (a
-- cut, a rise, a probe and its end), the calls then in flight are listed (`stale`) and their
-- samples, overloads too, are dropped as they end. They ran under the old limit: after a cut,
-- the slow calls of the load that caused it would cut the new limit again, down to the min,
-- before any call had run under it (as a generation number taken at each call's start would,
-- with no field kept per call).
--
-- A window's throughput is Little's law's: the calls in flight over the latency (tokens a ms,
-- the mean of in_flight / latency per token over its samples), which needs no clock.
--
-- Hash fields: limit, mark, min (ms per token), n, sum, conc (the current window: samples, sum of
-- their latencies, sum of the calls in flight at their ends), busy (whether the window was
-- full), tp (the last window's throughput), windows, floor (windows in a row at the min), cut
-- (the window of the last back-off), restore (during a probe: the limit to go back to), stale
-- (" a b ": the tokens of the calls in flight at the last change), rose (the floor the last
-- rise came from, until the window after it closes).

local AUTO_TTL_MS = 86400000
local WINDOW_MIN = 4
local TOLERANCE = 1.15
local GROWTH = 0.1
local NEAR_STEP = 0.25
local TP_RISE = 1.05
local STEP_GAIN = 0.5
local GRADIENT_FLOOR = 0.5
local BACKOFF = 0.75
local PROBE_EVERY = 40
local PROBE_AT_FLOOR = 5

-- The bounds and hash of an "auto" spec; nil for a fixed cap.
local function auto_spec(spec)
  local lo, hi, key = string.match(spec, '^auto:(%d+):(%d+):(.+)$')
  if not lo then return nil end
  return tonumber(lo), tonumber(hi), key
end

local function auto_clamp(raw, lo, hi)
  return math.max(lo, math.min(hi, math.floor(tonumber(raw or lo) or lo)))
end

-- The limit in force for `spec` (a number, or an "auto" spec: see above).
local function limit_in_force(spec)
  local fixed = tonumber(spec)
  if fixed then return fixed end
  local lo, hi, key = auto_spec(spec)
  if not lo then return 1 end
  return auto_clamp(redis.call('HGET', key, 'limit'), lo, hi)
end

-- The tokens in `lease` (the calls in flight) but `token`, as the field `stale` keeps them.
local function auto_in_flight_but(lease, token)
  local others = {}
  for _, other in ipairs(redis.call('ZRANGE', lease, 0, -1)) do
    if other ~= token then others[#others + 1] = other end
  end
  return #others > 0 and ' ' .. table.concat(others, ' ') .. ' ' or ''
end

-- One call's end, for the controller of `spec` (nothing for a fixed cap). `sample` is
-- "<latency ms>:<output tokens>:<signal>", signal `ok` (a measured call) or `overload`; any
-- other says nothing. `lease` holds the calls in flight (this one, `token`, among them);
-- `waiting`, whether tasks wait for a slot. Returns the limit in force after it.
local function auto_limit_sample(spec, sample, lease, token, waiting)
  local lo, hi, key = auto_spec(spec or '')
  if not lo then return tonumber(spec) end
  local ms, tokens, signal = string.match(sample or '', '^(%d+):(%d+):(%a*)$')
  if signal ~= 'ok' and signal ~= 'overload' then return limit_in_force(spec) end
  local f = redis.call('HMGET', key, 'limit', 'min', 'n', 'sum', 'conc', 'busy', 'tp',
    'windows', 'floor', 'cut', 'restore', 'stale', 'mark', 'rose')
  local limit = math.max(lo, math.min(hi, tonumber(f[1] or lo)))
  local min = tonumber(f[2] or '')
  local n, sum, conc = tonumber(f[3] or '0'), tonumber(f[4] or '0'), tonumber(f[5] or '0')
  local busy, tp = f[6] == '1', tonumber(f[7] or '0')
  local windows, floor = tonumber(f[8] or '0'), tonumber(f[9] or '0')
  local cut, restore, stale = tonumber(f[10] or '-1'), tonumber(f[11] or ''), f[12] or ''
  local mark, rose = tonumber(f[13] or ''), tonumber(f[14] or '')
  local in_flight = redis.call('ZCARD', lease)
  local function store(fields)
    redis.call('HSET', key, unpack(fields))
    redis.call('PEXPIRE', key, AUTO_TTL_MS)
  end
  -- A new limit from the next sample on; `fresh`: the calls in flight now (but this one)
  -- started under the old one, and their samples will measure nothing (the field `stale`).
  local function fresh_window(new_limit, extra, fresh)
    local fields = {'limit', string.format('%.4f', new_limit), 'n', 0, 'sum', 0, 'conc', 0,
      'busy', 0}
    if fresh then
      fields[#fields + 1], fields[#fields + 2] = 'stale', auto_in_flight_but(lease, token)
    end
    for _, v in ipairs(extra or {}) do fields[#fields + 1] = v end
    store(fields)
    return auto_clamp(new_limit, lo, hi)
  end
  local at = stale ~= '' and string.find(stale, ' ' .. token .. ' ', 1, true)
  if at then
    -- A call that started before the last change of the limit (a cut, a probe, a step near
    -- `mark`): it ran under the old limit and measures nothing of the new one.
    store({'stale', string.sub(stale, 1, at) .. string.sub(stale, at + #token + 2)})
    return auto_clamp(limit, lo, hi)
  end
  if signal == 'overload' then
    if cut == windows then return auto_clamp(limit, lo, hi) end  -- backed off this window
    if restore then  -- a probe cut short: back off from the limit it would restore
      redis.call('HDEL', key, 'restore')
      limit = restore
    end
    return fresh_window(math.max(lo, limit * BACKOFF), {'cut', windows,
      'mark', math.floor(limit), 'rose', ''}, true)
  end
  ms, tokens = tonumber(ms), tonumber(tokens)
  local value = math.max(tokens > 0 and ms / tokens or ms, 0.001)
  n, sum, conc = n + 1, sum + value, conc + in_flight / value
  busy = busy or in_flight >= math.floor(limit) or waiting
  if n < math.max(WINDOW_MIN, math.ceil(limit)) then
    store({'n', n, 'sum', string.format('%.6f', sum), 'conc', string.format('%.6f', conc),
      'busy', busy and 1 or 0})
    return auto_clamp(limit, lo, hi)
  end
  -- The window closes.
  local mean = sum / n
  local rate = conc / n
  windows = windows + 1
  if restore then  -- the probe's window: the no-load latency, measured again; then back to
    -- the limit before it, judged against the window before it (`tp`, `rose`)
    redis.call('HDEL', key, 'restore')
    return fresh_window(restore, {'min', string.format('%.6f', mean), 'windows', windows,
      'floor', 0}, true)
  end
  if not min or mean < min then min = mean end
  local ratio = mean / min
  local before = math.floor(limit)
  local backed_off = false
  if ratio <= TOLERANCE then
    if rose and before > rose and rate < tp * (1 + (before / rose - 1) * STEP_GAIN) then
      -- The slots the last rise added bought (almost) no throughput: past the knee, where
      -- latency grows as fast as the calls, though still within TOLERANCE.
      mark, limit, backed_off = before, rose, true
    elseif busy and mark and limit + 1 >= mark then
      limit = limit + NEAR_STEP
    elseif busy then
      limit = limit + math.max(1, limit * GROWTH)
    end
    if mark and math.floor(limit) > mark + 1 then mark = nil end
  elseif rate < tp * TP_RISE then
    mark = math.floor(limit)
    limit = math.min(limit * math.max(GRADIENT_FLOOR, TOLERANCE / ratio), mark - 1)
    backed_off = true
  end
  limit = math.max(lo, math.min(hi, limit))
  floor = limit <= lo and floor + 1 or 0
  local extra = {'min', string.format('%.6f', min), 'tp', string.format('%.6f', rate),
    'windows', windows, 'floor', floor, 'mark', mark or ''}
  if backed_off then extra[#extra + 1], extra[#extra + 2] = 'cut', windows end
  extra[#extra + 1] = 'rose'
  extra[#extra + 1] = math.floor(limit) > before and before or ''
  -- The calls started under the old limit measure nothing of the new one.
  local fresh = math.floor(limit) ~= before
  if (windows % PROBE_EVERY == 0 and limit > lo) or floor >= PROBE_AT_FLOOR then
    -- The probe: the calls in flight (but this one) end first, then a window at half.
    extra[#extra + 1], extra[#extra + 2] = 'restore', string.format('%.4f', limit)
    extra[#extra + 3], extra[#extra + 4] = 'floor', 0
    limit, fresh = math.max(lo, math.floor(limit / 2)), true
  end
  return fresh_window(limit, extra, fresh)
end
