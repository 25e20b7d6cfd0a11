-- KEYS: 1 hold, 2 holds index; ARGV: 1 tombstone ttl. A hold whose call never started.
if redis.call('HGET', KEYS[1], 's') ~= 'o' then return 0 end
release(KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], KEYS[1])
return 1
