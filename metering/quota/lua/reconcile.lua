-- KEYS: 1 counter; ARGV: 1 used as read, 2 used per the database
if redis.call('HGET', KEYS[1], 'used') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'used', ARGV[2])
return 1
