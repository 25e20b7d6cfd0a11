-- KEYS: 1 holds index; ARGV: 1 now (unix s), 2 most holds per run, 3 tombstone ttl
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, h in ipairs(due) do
  if redis.call('HGET', h, 's') == 'o' then release(h, ARGV[3]) end
  redis.call('ZREM', KEYS[1], h)
end
return #due
