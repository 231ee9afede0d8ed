-- The job's spending cap ([job] budget_usd), shared by every worker through Redis.
--
-- One script, one call per operation (ARGV[1]: reserve, settle, lower, renew,
-- read), so each is atomic: two workers can never both take the last room.
-- engine/limits/spend_budget.py's SpendBudget is the same arithmetic in one
-- process; engine/cluster/shared_spend.py calls this one.
--
-- KEYS[1] tally hash: spent (every run's, every worker's), reserved (in flight)
-- KEYS[2] sorted set: reservation id -> the time (Redis's clock) it is held until
-- KEYS[3] hash: reservation id -> its amount
-- KEYS[4] hash: reservation id -> the amount counted as spent when its hold ran out
--
-- A hold runs out when its worker stopped renewing it (it died, or lost
-- Redis): what that request may have cost is counted as spent, so the cap
-- holds whatever happened to it; a settle that comes after all corrects it.
-- Numbers go back as strings ("%.17g"): Redis would cut a Lua number to an
-- integer.

local EPS = 1e-12

local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function fmt(x) return string.format('%.17g', x) end

local function num(x) return tonumber(x) or 0 end

local op = ARGV[1]
local now = clock()
local spent = num(redis.call('HGET', KEYS[1], 'spent'))
local reserved = num(redis.call('HGET', KEYS[1], 'reserved'))

for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
  local amount = num(redis.call('HGET', KEYS[3], id))
  spent = spent + amount
  reserved = reserved - amount
  redis.call('HSET', KEYS[4], id, fmt(amount))
  redis.call('HDEL', KEYS[3], id)
  redis.call('ZREM', KEYS[2], id)
end

local taken = 0
local ok = 0
if op == 'reserve' then
  -- ARGV: id, worst, least, cap, hold_s
  local id, worst, least, cap, hold = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]),
    tonumber(ARGV[5]), tonumber(ARGV[6])
  if spent + reserved + worst <= cap + EPS then
    taken, ok = worst, 1
  elseif reserved <= EPS then
    -- Nothing in flight anywhere: the last room, if it pays for the least.
    local left = cap - spent
    if left > 0 and left >= least then taken, ok = left, 1 end
  end
  if ok == 1 then
    reserved = reserved + taken
    redis.call('ZADD', KEYS[2], now + hold, id)
    redis.call('HSET', KEYS[3], id, fmt(taken))
  end
elseif op == 'settle' then
  -- ARGV: id, billed, channel
  local id, billed = ARGV[2], tonumber(ARGV[3])
  local amount = redis.call('HGET', KEYS[3], id)
  if amount then
    reserved = reserved - tonumber(amount)
    spent = spent + billed
    redis.call('HDEL', KEYS[3], id)
    redis.call('ZREM', KEYS[2], id)
  else
    local counted = redis.call('HGET', KEYS[4], id)
    if counted then
      spent = spent - tonumber(counted) + billed
      redis.call('HDEL', KEYS[4], id)
    end
  end
  redis.call('PUBLISH', ARGV[4], 'settled')
elseif op == 'lower' then
  -- ARGV: id, worst, channel
  local id, worst = ARGV[2], tonumber(ARGV[3])
  local amount = redis.call('HGET', KEYS[3], id)
  if amount and worst < tonumber(amount) then
    reserved = reserved - (tonumber(amount) - worst)
    redis.call('HSET', KEYS[3], id, fmt(worst))
    redis.call('PUBLISH', ARGV[4], 'lowered')
  end
elseif op == 'renew' then
  -- ARGV: hold_s, id...
  local hold = tonumber(ARGV[2])
  for i = 3, #ARGV do
    redis.call('ZADD', KEYS[2], 'XX', now + hold, ARGV[i])
  end
end

if reserved < EPS then reserved = 0 end
redis.call('HSET', KEYS[1], 'spent', fmt(spent), 'reserved', fmt(reserved))
local soonest = -1
local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if #first == 2 then soonest = math.max(0, tonumber(first[2]) - now) end
return {tostring(ok), fmt(taken), fmt(spent), fmt(reserved), fmt(soonest)}
