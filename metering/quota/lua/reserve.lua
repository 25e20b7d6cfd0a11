-- KEYS: 1 hold, 2 holds index, 3 key rate window, 4 employee rate window, 5.. counters
-- ARGV: 1 hold expiry (unix s), 2 prompt tokens, 3 max output, 4 min output, 5 clamp (1/0),
--       6 key rpm, 7 key tpm, 8 employee rpm, 9 employee tpm (0: none), 10 window ttl,
--       11 retry after, 12 counters, then per counter: limit, input rate, output rate, expire at,
--       then the owner (the process taking the hold, see `process_id`), then the time it was taken
-- Answers 'ok' with each counter's used + reserved once the hold is in (what the database
-- fallback counts as held in Redis should Redis go away: see `quotas`).
local n = tonumber(ARGV[12])
local function seen(counter)
  local v = redis.call('HMGET', counter, 'used', 'reserved')
  return int(tonumber(v[1] or '0') + tonumber(v[2] or '0'))
end
-- A second run for the same hold (a retry after the first answer was lost) changes nothing and
-- answers what the first run answered: only the hold key decides, so a retry never holds twice.
if redis.call('EXISTS', KEYS[1]) == 1 then
  local h = redis.call('HMGET', KEYS[1], 'r', 'm', 'n')
  if not h[1] then return {'lost'} end
  local amounts, seen_now = {}, {}
  for i = 1, tonumber(h[3]) do
    amounts[i] = redis.call('HGET', KEYS[1], 'a' .. i)
    seen_now[i] = seen(KEYS[4 + i])
  end
  return {'ok', tonumber(h[1]), h[2], amounts, seen_now}
end
local missing = {}
for i = 1, n do
  if redis.call('EXISTS', KEYS[4 + i]) == 0 then missing[#missing + 1] = i end
end
if #missing > 0 then return {'seed', missing} end

local function limited(key, rpm, tpm)
  if rpm == 0 and tpm == 0 then return false end
  local v = redis.call('HMGET', key, 'n', 't')
  if rpm > 0 and tonumber(v[1] or '0') + 1 > rpm then return 'requests' end
  if tpm > 0 and tonumber(v[2] or '0') >= tpm then return 'tokens' end
  return false
end
local krpm, ktpm = tonumber(ARGV[6]), tonumber(ARGV[7])
local erpm, etpm = tonumber(ARGV[8]), tonumber(ARGV[9])
local over = limited(KEYS[3], krpm, ktpm)
if over then return {'rate', 'key', over, ARGV[11]} end
over = limited(KEYS[4], erpm, etpm)
if over then return {'rate', 'employee', over, ARGV[11]} end

local prompt, maxout = tonumber(ARGV[2]), tonumber(ARGV[3])
local minout, clamp = tonumber(ARGV[4]), ARGV[5] == '1'
local function cost(inr, outr, out) return math.ceil(prompt * inr + out * outr) end
local function fits(avail, inr, outr)
  if avail - cost(inr, 0, 0) < 0 then return -1 end
  local f = maxout
  if outr > 0 then f = math.min(maxout, math.floor((avail - prompt * inr) / outr)) end
  while f >= 0 and cost(inr, outr, f) > avail do f = f - 1 end
  return f
end
local function enough(f)
  if not clamp then return f >= maxout end
  return f >= math.min(minout, maxout)
end

local allowed = maxout
local avail = {}
for i = 1, n do
  local base = 12 + (i - 1) * 4
  local limit, inr, outr = tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3])
  local v = redis.call('HMGET', KEYS[4 + i], 'used', 'reserved')
  local reserved = tonumber(v[2] or '0')
  avail[i] = limit - tonumber(v[1] or '0') - reserved
  local f = fits(avail[i], inr, outr)
  if not enough(f) then
    local waitable = 0
    if reserved > 0 and enough(fits(avail[i] + reserved, inr, outr)) then waitable = 1 end
    return {'refuse', i, int(math.max(avail[i], 0)), waitable}
  end
  allowed = math.min(allowed, f)
end

local amounts = {}
redis.call('HSET', KEYS[1], 's', 'o', 'n', n, 'p', ARGV[13 + n * 4], 't', ARGV[14 + n * 4])
for i = 1, n do
  local base = 12 + (i - 1) * 4
  local a = cost(tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3]), allowed)
  amounts[i] = int(a)
  redis.call('HINCRBY', KEYS[4 + i], 'reserved', amounts[i])
  redis.call('EXPIREAT', KEYS[4 + i], ARGV[base + 4])
  redis.call('HSET', KEYS[1], 'k' .. i, KEYS[4 + i], 'a' .. i, amounts[i])
end
redis.call('EXPIRE', KEYS[1], HOLD_KEY_TTL)
redis.call('ZADD', KEYS[2], ARGV[1], KEYS[1])
for _, w in ipairs({{KEYS[3], krpm + ktpm}, {KEYS[4], erpm + etpm}}) do
  if w[2] > 0 then
    redis.call('HINCRBY', w[1], 'n', 1)
    redis.call('EXPIRE', w[1], ARGV[10])
  end
end
local first = 1
if n > 1 then first = 2 end  -- the allowance follows the key's cap when there is one
local left = int(avail[first] - tonumber(amounts[first]))
redis.call('HSET', KEYS[1], 'r', allowed, 'm', left)
local seen_now = {}
for i = 1, n do seen_now[i] = seen(KEYS[4 + i]) end
return {'ok', allowed, left, amounts, seen_now}
