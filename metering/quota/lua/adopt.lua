-- KEYS: 1 hold, 2 holds index, 3.. counters; ARGV: 1 expiry (unix s), 2 owner, 3 taken at,
--       4 hold ttl, then per counter the amount held. A database hold taken while Redis was
--       away becomes a Redis hold too, so Redis counts it until its call closes. No limit
--       check: the database ledger admitted it. A hold key that exists (closed already, or
--       adopted) is left alone.
if redis.call('EXISTS', KEYS[1]) == 1 then return {'done', 0, redis.call('HGET', KEYS[1], 's')} end
local missing = {}
for i = 3, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then missing[#missing + 1] = i - 2 end
end
if #missing > 0 then return {'seed', missing} end
redis.call('HSET', KEYS[1], 's', 'o', 'n', #KEYS - 2, 'p', ARGV[2], 't', ARGV[3])
for i = 3, #KEYS do
  local a = ARGV[2 + i]
  if a ~= '0' then redis.call('HINCRBY', KEYS[i], 'reserved', a) end
  redis.call('HSET', KEYS[1], 'k' .. (i - 2), KEYS[i], 'a' .. (i - 2), a)
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[1], KEYS[1])
return {'done', 1, 'o'}
