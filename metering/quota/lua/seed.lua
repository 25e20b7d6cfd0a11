-- KEYS: counters; ARGV: per counter its used amount and its expiry (unix s). `reserved` starts
-- at 0: it is the sum of the counter's Redis holds, and none can exist on a missing counter
-- (database holds of the fallback are adopted by their processes: `ADOPT`).
local seeded = 0
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then
    redis.call('HSET', KEYS[i], 'used', ARGV[2 * i - 1], 'reserved', 0)
    redis.call('EXPIREAT', KEYS[i], ARGV[2 * i])
    seeded = seeded + 1
  end
end
return seeded
