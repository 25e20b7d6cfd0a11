-- KEYS: 1 holds index, 2.. counters. Sets each existing counter's `reserved` to the sum of the
-- open holds on it (atomically: no hold opens or closes meanwhile). Returns the changes as
-- counter, old, new triples.
local sums = {}
for _, h in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if redis.call('HGET', h, 's') == 'o' then
    local n = tonumber(redis.call('HGET', h, 'n') or '0')
    for i = 1, n do
      local k, a = redis.call('HGET', h, 'k' .. i), redis.call('HGET', h, 'a' .. i)
      if k and a then sums[k] = (sums[k] or 0) + tonumber(a) end
    end
  end
end
local changed = {}
for i = 2, #KEYS do
  local current = redis.call('HGET', KEYS[i], 'reserved')
  if current then
    local want = string.format('%.0f', sums[KEYS[i]] or 0)
    if current ~= want then
      redis.call('HSET', KEYS[i], 'reserved', want)
      changed[#changed + 1] = KEYS[i]
      changed[#changed + 1] = current
      changed[#changed + 1] = want
    end
  end
end
return changed
