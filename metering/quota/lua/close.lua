-- KEYS: 1 hold, 2 holds index, 3 stream, 4 key rate window, 5 employee rate window, 6.. counters
-- ARGV: 1 tokens for the per-minute count (0: none), 2 window ttl, 3 event, 4 tombstone ttl,
--       then per counter: the charge
local s = redis.call('HGET', KEYS[1], 's')
if s == 'c' then return 0 end
for i = 6, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    if s == 'o' then
      local held = redis.call('HGET', KEYS[1], 'a' .. (i - 5))
      if held and held ~= '0' then redis.call('HINCRBY', KEYS[i], 'reserved', int(-tonumber(held))) end
    end
    local charge = ARGV[4 + i - 5]
    if charge ~= '0' then redis.call('HINCRBY', KEYS[i], 'used', charge) end
  end
end
redis.call('ZREM', KEYS[2], KEYS[1])
redis.call('HSET', KEYS[1], 's', 'c')
redis.call('EXPIRE', KEYS[1], ARGV[4])
if ARGV[1] ~= '0' then
  for _, w in ipairs({KEYS[4], KEYS[5]}) do
    redis.call('HINCRBY', w, 't', ARGV[1])
    redis.call('EXPIRE', w, ARGV[2])
  end
end
redis.call('XADD', KEYS[3], '*', 'e', ARGV[3])
return 1
