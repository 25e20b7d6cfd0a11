-- Give an open hold back: its amounts leave the counters' `reserved` and it is marked expired
-- ('x'), so a late settle still charges (without giving the hold back twice).
local function release(h, tombstone_ttl)
  local n = tonumber(redis.call('HGET', h, 'n') or '0')
  for i = 1, n do
    local k, a = redis.call('HGET', h, 'k' .. i), redis.call('HGET', h, 'a' .. i)
    if k and a and a ~= '0' and redis.call('EXISTS', k) == 1 then
      redis.call('HINCRBY', k, 'reserved', int(-tonumber(a)))
    end
  end
  redis.call('HSET', h, 's', 'x')
  redis.call('EXPIRE', h, tombstone_ttl)
end
