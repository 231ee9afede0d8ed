-- The job's per-key request and token budgets, shared by every worker through Redis.
--
-- One script, one call per operation (ARGV[1]: open, reserve, settle, read;
-- ARGV[2]: its JSON payload), so each operation is atomic and every worker
-- computes on one clock: Redis's own (TIME), whatever the workers' clocks say.
-- The arithmetic is engine/limits/rate_limiter.py's KeyBudget and
-- engine/limits/provider_headroom.py's BucketReading and HeaderTrust, step for
-- step; its constants come from there too (engine/cluster/shared_budget.py
-- puts them above this text when it loads it).
--
-- A key's budget is one hash (KEYS of open, settle, read; every other KEY of
-- reserve) plus, for reserve, a sorted set of the reservations within the widest
-- send spread: what an answer's headers may miss, cluster-wide (the key's send
-- spread's worth of them, by its trust).
--
-- Numbers go back as strings ("%.17g"): Redis would cut a Lua number to an
-- integer.  An absent field or an empty string is "none" (no limit, not yet).

local HASH_FIELDS = {
  'conf_rpm', 'conf_tpm', 'lim_rpm', 'lim_tpm',
  'r_burst', 'r_level', 'r_stamp', 't_burst', 't_level', 't_stamp',
  'ceil_rpm', 'hdr_rpm', 'last_backoff', 'last_recovery', 'hdr_seen', 'from_hdr',
  'trust', 'trust_surprise', 'trust_step', 'res_r', 'res_t', 'cool_until',
  'tk_rem', 'tk_reset', 'tk_limit', 'tk_at',
}
-- Answers per second over the last ANSWER_SLOTS seconds (a ring), for the
-- rate a key was sending at when a 429 without limit headers lowers its limit.
for i = 0, ANSWER_SLOTS - 1 do
  HASH_FIELDS[#HASH_FIELDS + 1] = 'a' .. i
  HASH_FIELDS[#HASH_FIELDS + 1] = 's' .. i
end

local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function fmt(x)
  if x == nil then return '' end
  return string.format('%.17g', x)
end

-- buckets (TokenBucket) ------------------------------------------------------
-- {lim = per minute or nil (no limit), burst = seconds of it held, level, stamp}

local function rate(b) return b.lim / 60 end

local function capacity(b) return math.max(MIN_CAPACITY, rate(b) * b.burst) end

local function refill(b, now)
  if b.lim then
    -- Redis's clock is the wall clock: a step back refills nothing, takes nothing.
    b.level = math.min(capacity(b), b.level + math.max(0, now - b.stamp) * rate(b))
  end
  b.stamp = now
end

local function set_limit(b, per_minute, now)
  refill(b, now)
  if per_minute == nil then
    b.lim, b.level = nil, nil
    return
  end
  local was_unlimited = b.lim == nil
  b.lim = per_minute
  if was_unlimited then b.level = capacity(b) else b.level = math.min(b.level, capacity(b)) end
end

local function set_burst(b, seconds, now)
  refill(b, now)
  b.burst = seconds
  if b.lim then b.level = math.min(b.level, capacity(b)) end
end

local function set_level(b, level, now)
  refill(b, now)
  if b.lim then b.level = math.min(capacity(b), level) end
end

local function level_of(b, now)
  refill(b, now)
  return b.level
end

local function wait_for(b, amount, now)
  if not b.lim then return 0 end
  local need = math.min(amount, capacity(b))
  local level = level_of(b, now)
  if level >= need - LEVEL_SLACK then return 0 end
  return (need - level) / rate(b)
end

local function take(b, amount, now)
  refill(b, now)
  if b.lim then b.level = b.level - amount end
end

local function give_back(b, amount, now)
  refill(b, now)
  if b.lim then b.level = math.min(capacity(b), b.level + amount) end
end

local function clamp_to(b, level, now)
  refill(b, now)
  if b.lim and level < b.level then b.level = level end
end

local function drain(b, now)
  refill(b, now)
  if b.lim then b.level = math.min(b.level, 0) end
end

-- a key's hash ---------------------------------------------------------------

local function load(key)
  local flat = redis.call('HGETALL', key)
  if #flat == 0 then return nil end
  local h = {}
  for i = 1, #flat, 2 do h[flat[i]] = tonumber(flat[i + 1]) end
  h.R = {lim = h.lim_rpm, burst = h.r_burst, level = h.r_level, stamp = h.r_stamp}
  h.T = {lim = h.lim_tpm, burst = h.t_burst, level = h.t_level, stamp = h.t_stamp}
  return h
end

local function save(key, h)
  h.lim_rpm, h.r_burst, h.r_level, h.r_stamp = h.R.lim, h.R.burst, h.R.level, h.R.stamp
  h.lim_tpm, h.t_burst, h.t_level, h.t_stamp = h.T.lim, h.T.burst, h.T.level, h.T.stamp
  local set, gone = {}, {}
  for _, field in ipairs(HASH_FIELDS) do
    local value = h[field]
    if value == nil then
      gone[#gone + 1] = field
    else
      set[#set + 1] = field
      set[#set + 1] = fmt(value)
    end
  end
  redis.call('HSET', key, unpack(set))
  if #gone > 0 then redis.call('HDEL', key, unpack(gone)) end
end

-- KeyBudget(rpm, tpm) then open_cautiously(); `kept` carries the reservation
-- counters and cool-down of a budget whose configured limits changed.
local function fresh(conf_rpm, conf_tpm, now, kept)
  local h = {
    conf_rpm = conf_rpm, conf_tpm = conf_tpm, hdr_seen = 0, from_hdr = 0, trust = 1,
    res_r = 0, res_t = 0, cool_until = 0, last_recovery = now,
  }
  h.R = {burst = BURST_SECONDS, stamp = now}
  h.T = {burst = BURST_SECONDS, stamp = now}
  set_limit(h.R, conf_rpm, now)
  set_limit(h.T, conf_tpm, now)
  for _, b in ipairs({h.R, h.T}) do
    if b.lim then set_level(b, math.min(level_of(b, now), math.max(1, rate(b) * FIRST_FILL_S)), now) end
  end
  if kept then h.res_r, h.res_t, h.cool_until = kept.res_r, kept.res_t, kept.cool_until end
  return h
end

-- What a worker mirrors: see SharedKeyState in shared_budget.py for the order.
local function state(h, now)
  local r_level, t_level
  if h.R.lim then r_level = level_of(h.R, now) end
  if h.T.lim then t_level = level_of(h.T, now) end
  return {
    fmt(now), fmt(h.R.lim), fmt(h.T.lim), fmt(h.R.burst), fmt(r_level), fmt(h.T.burst),
    fmt(t_level), fmt(h.hdr_seen), fmt(h.from_hdr), fmt(h.trust), fmt(h.cool_until),
    fmt(h.res_r), fmt(h.res_t), fmt(h.tk_rem), fmt(h.tk_reset), fmt(h.tk_limit), fmt(h.tk_at),
  }
end

-- admission (KeyBudget.wait_for, headroom, recover) ---------------------------

local function needed(h, est, charge)
  if h.from_hdr == 1 then return charge end
  return est
end

-- With `spare` more like it left over: budget nobody waiting takes.
local function budget_wait(h, est, charge, now, spare)
  local n = 1 + (spare or 0)
  return math.max(wait_for(h.R, n, now), wait_for(h.T, needed(h, est, charge) * n, now))
end

local function headroom(h, now)
  local share
  for _, b in ipairs({h.R, h.T}) do
    if b.lim then
      local s = math.max(0, level_of(b, now)) / capacity(b)
      if share == nil or s < share then share = s end
    end
  end
  return share or 1
end

-- A 429-learned limit creeps back up; true when it did.
local function recover(h, now)
  if h.ceil_rpm == nil or h.R.lim == nil then return false end
  local elapsed = now - h.last_recovery
  if elapsed < RECOVERY_EVERY_S then return false end
  h.last_recovery = now
  local target = math.min(h.conf_rpm or math.huge, h.hdr_rpm or math.huge)
  local grown = h.R.lim * (1 + RECOVERY_PER_MINUTE * elapsed / 60)
  set_limit(h.R, math.min(target, grown), now)
  return true
end

-- the provider's word (HeaderTrust, BucketReading, KeyBudget.sync) ------------

local function trust_recover(h, now)
  if h.trust >= 1 or now - (h.trust_surprise or -math.huge) < TRUST_QUIET_S then return end
  if now - (h.trust_step or -math.huge) < TRUST_STEP_EVERY_S then return end
  h.trust_step = now
  h.trust = math.min(1, h.trust + TRUST_STEP)
end

local function spread_s(h)
  return SEND_SPREAD_S / math.max(h.trust, 1 / SPREAD_WIDENS_UP_TO)
end

local function trust_of(h, headroom_left)
  if headroom_left > 0 then return headroom_left * h.trust end
  return headroom_left
end

local function reading_capacity(rd)
  if rd.reset == nil then return rd.remaining end
  return math.min(rd.limit, rd.remaining + rd.reset * rd.limit / 60)
end

local function reading_available(rd, now, rate_per_s, reserved_since, spread)
  local refilled = rd.remaining + math.max(0, now - rd.taken_at - spread) * rate_per_s
  return math.min(math.max(reading_capacity(rd), rd.remaining), refilled) - reserved_since
end

local function take_headroom(h, b, remaining, reset_s, provider_limit, sent_at, reserved_since, now)
  if remaining == nil or not b.lim then return nil end
  local r = rate(b)
  local in_force = r * 60
  local limit = in_force
  if provider_limit ~= nil and provider_limit ~= 0 then limit = provider_limit end
  local rd = {remaining = remaining, reset = reset_s, limit = limit, taken_at = sent_at}
  local size
  if reset_s ~= nil then size = reading_capacity(rd) else size = math.max(remaining, r * BURST_SECONDS) end
  size = math.min(size, in_force)
  h.from_hdr = 1
  set_burst(b, h.trust * size / r, now)
  set_level(b, trust_of(h, reading_available(rd, now, r, reserved_since, spread_s(h))), now)
  return rd
end

local function present(x) return x ~= nil and x ~= 0 end

-- Returns {which, old, new} when a limit was learned, else nil.
-- `own`: the answered request's charge (nil: not known).  Its headers count it, though
-- it was reserved after its marks: it is not subtracted again.
local function sync(h, hd, sent_at, marks, own, now)
  local learned
  if present(hd.limit_requests) then
    h.hdr_seen = 1
    h.hdr_rpm = hd.limit_requests
    if h.R.lim == nil or hd.limit_requests < h.R.lim then
      learned = {'rpm', h.R.lim or 0, hd.limit_requests}
      set_limit(h.R, hd.limit_requests, now)
    end
  end
  if present(hd.limit_tokens) then
    h.hdr_seen = 1
    if h.T.lim == nil or hd.limit_tokens < h.T.lim then
      learned = learned or {'tpm', h.T.lim or 0, hd.limit_tokens}
      set_limit(h.T, hd.limit_tokens, now)
    end
  end
  if sent_at == nil then
    if hd.remaining_requests ~= nil then clamp_to(h.R, hd.remaining_requests, now) end
    if hd.remaining_tokens ~= nil then clamp_to(h.T, hd.remaining_tokens, now) end
    return learned
  end
  trust_recover(h, now)
  local own_r, own_t = 0, 0
  if own ~= nil then own_r, own_t = 1, own end
  take_headroom(h, h.R, hd.remaining_requests, hd.reset_requests_s, hd.limit_requests,
    sent_at, h.res_r - marks[1] - own_r, now)
  local rd = take_headroom(h, h.T, hd.remaining_tokens, hd.reset_tokens_s, hd.limit_tokens,
    sent_at, h.res_t - marks[2] - own_t, now)
  if rd then h.tk_rem, h.tk_reset, h.tk_limit, h.tk_at = rd.remaining, rd.reset, rd.limit, rd.taken_at end
  return learned
end

-- 429s (KeyBudget.distrust, on_rate_limited; KeyState.answered_rpm) ---------

local function count_answer(h, now)
  local second = math.floor(now)
  local slot = second % ANSWER_SLOTS
  if h['s' .. slot] ~= second then
    h['s' .. slot], h['a' .. slot] = second, 0
  end
  h['a' .. slot] = h['a' .. slot] + 1
end

local function answered_rpm(h, now)
  local second, count = math.floor(now), 0
  for slot = 0, ANSWER_SLOTS - 1 do
    local at = h['s' .. slot]
    if at ~= nil and at > second - ANSWER_SLOTS then count = count + h['a' .. slot] end
  end
  return count * 60 / ANSWER_SLOTS
end

-- Returns old, new trust when it fell.
local function distrust(h, now)
  if now - (h.trust_surprise or -math.huge) < TRUST_STORM_S then return nil end
  h.trust_surprise, h.trust_step = now, now
  local old = h.trust
  h.trust = math.max(TRUST_FLOOR, old / 2)
  if h.trust >= old then return nil end
  for _, b in ipairs({h.R, h.T}) do
    if b.lim then set_burst(b, b.burst * h.trust / old, now) end
  end
  return old, h.trust
end

-- Returns {'rpm', old, new} when the limit was lowered.
local function on_rate_limited(h, kind, sent_rpm, now)
  if kind == 'tokens' then drain(h.T, now) else drain(h.R, now) end
  if h.hdr_seen == 1 then return nil end
  if now - (h.last_backoff or -math.huge) < LESSON_S then return nil end
  h.last_backoff, h.last_recovery = now, now
  if kind == 'tokens' then return nil end
  local base
  for _, x in ipairs({h.R.lim or 0, sent_rpm}) do
    if x ~= 0 and (base == nil or x < base) then base = x end
  end
  if base == nil then return nil end
  local new, old = math.max(1, base * BACKOFF_FACTOR), h.R.lim or 0
  set_limit(h.R, new, now)
  h.ceil_rpm = new
  drain(h.R, now)
  return {'rpm', old, new}
end

-- operations -----------------------------------------------------------------

local OPS = {}

-- KEYS: each key's hash; payload.keys: {rpm, tpm} configured, in the same order.
-- A budget is made unless there is one; remade (its counters and cool-down
-- kept) when the configured limits changed.  Returns each one's state.
function OPS.open(p, now)
  local states = {}
  for i, c in ipairs(p.keys) do
    local h = load(KEYS[i])
    if h == nil then
      h = fresh(c.rpm, c.tpm, now)
    elseif h.conf_rpm ~= c.rpm or h.conf_tpm ~= c.tpm then
      h = fresh(c.rpm, c.tpm, now, h)
    end
    save(KEYS[i], h)
    states[i] = state(h, now)
  end
  return states
end

-- KEYS: each candidate key's hash then its recent reservations; payload.asks: the
-- reservations asked for together, in order, each a list of {rpm, tpm, est, charge,
-- cooling, spare} per candidate (the same keys, in KEYS' order).  For each ask, the key
-- that can admit soonest (ties: the most free budget) takes one request and its tokens:
-- {'admitted', its number, tokens taken, now, marks requests, marks tokens, state};
-- or nothing is taken: {'wait', seconds, every candidate's state}.  One call for the
-- reservations a worker asks for at once: a script call apiece cost it more CPU than
-- the requests themselves when nothing else binds.
local function reserve_one(hs, changed, keys, now)
  local best, best_wait, best_room = nil, math.huge, -1
  for i, c in ipairs(keys) do
    local h = hs[i]
    local wait = math.max(0, h.cool_until - now, c.cooling or 0, budget_wait(h, c.est, c.charge, now, c.spare))
    local room = headroom(h, now)
    if wait < best_wait - 1e-9 or (math.abs(wait - best_wait) <= 1e-9 and room > best_room) then
      best, best_wait, best_room = i, wait, room
    end
  end
  if best ~= nil and best_wait <= 0 then
    local h, c = hs[best], keys[best]
    local taken = needed(h, c.est, c.charge)
    take(h.R, 1, now)
    take(h.T, taken, now)
    local recent = KEYS[2 * best]
    redis.call('ZADD', recent, now, string.format('%d:%d', h.res_r, h.res_t))
    h.res_r = h.res_r + 1
    h.res_t = h.res_t + c.charge
    redis.call('ZREMRANGEBYSCORE', recent, '-inf', '(' .. fmt(now - SEND_SPREAD_S * SPREAD_WIDENS_UP_TO))
    redis.call('PEXPIRE', recent, 60000)  -- an idle key's leaves nothing behind
    local first = redis.call('ZRANGEBYSCORE', recent, fmt(now - spread_s(h)), '+inf', 'LIMIT', 0, 1)[1]
    local marks_r, marks_t = string.match(first, '^(%d+):(%d+)$')
    changed[best] = true
    return {'admitted', tostring(best), fmt(taken), fmt(now), marks_r, marks_t, state(h, now)}
  end
  local states = {}
  for i, h in ipairs(hs) do states[i] = state(h, now) end
  return {'wait', fmt(best_wait), states}
end

function OPS.reserve(p, now)
  local hs, changed = {}, {}
  for i, c in ipairs(p.asks[1]) do
    local h = load(KEYS[2 * i - 1])
    if h == nil then  -- never opened, or Redis lost it: start again, cautiously
      h = fresh(c.rpm, c.tpm, now)
      changed[i] = true
    end
    if recover(h, now) then changed[i] = true end
    hs[i] = h
  end
  local answers = {}
  for j, keys in ipairs(p.asks) do
    answers[j] = reserve_one(hs, changed, keys, now)
  end
  for i, h in pairs(hs) do
    if changed[i] then save(KEYS[2 * i - 1], h) end
  end
  return answers
end

-- KEYS: the hashes the ops name (op.k is the number of one); payload.ops in
-- the order they happened: reconcile {reserved, used}, release {tokens},
-- sync {headers, sent_at, marks}, refused {kind, wait}.  A budget that is
-- not there (Redis lost it) settles nothing: the next reservation remakes it.
-- Returns {what each op learned, each KEY's state (empty when not there)}.
function OPS.settle(p, now)
  local hs, learned = {}, {}
  for j, o in ipairs(p.ops) do
    if hs[o.k] == nil then hs[o.k] = load(KEYS[o.k]) or false end
    local h, out = hs[o.k], {}
    if h then
      if o.op == 'reconcile' then
        local diff = o.reserved - o.used
        if diff > 0 then give_back(h.T, diff, now) elseif diff < 0 then take(h.T, -diff, now) end
        count_answer(h, now)
      elseif o.op == 'release' then
        give_back(h.T, o.tokens, now)
      elseif o.op == 'sync' then
        local l = sync(h, o.headers, o.sent_at, o.marks, o.own, now)
        if l then out = {l[1], fmt(l[2]), fmt(l[3])} end
      elseif o.op == 'refused' then
        h.cool_until = math.max(h.cool_until, now + o.wait)
        local old, new
        if h.from_hdr == 1 then old, new = distrust(h, now) end
        local lowered = on_rate_limited(h, o.kind, answered_rpm(h, now), now)
        out = {fmt(old), fmt(new)}
        if lowered then
          out[3], out[4], out[5] = lowered[1], fmt(lowered[2]), fmt(lowered[3])
        end
      else
        return redis.error_reply('unknown budget op ' .. tostring(o.op))
      end
    end
    learned[j] = out
  end
  local states = {}
  for i = 1, #KEYS do
    local h = hs[i]
    if h then
      save(KEYS[i], h)
      states[i] = state(h, now)
    else
      states[i] = {}
    end
  end
  return {learned, states}
end

-- KEYS: hashes; each one's state (empty when not there).
function OPS.read(p, now)
  local states = {}
  for i = 1, #KEYS do
    local h = load(KEYS[i])
    if h then states[i] = state(h, now) else states[i] = {} end
  end
  return states
end

local op = OPS[ARGV[1]]
if op == nil then return redis.error_reply('unknown budget op ' .. tostring(ARGV[1])) end
return op(cjson.decode(ARGV[2]), clock())
