-- KEYS: 1 liveness key, 2 open-holds set; ARGV: 1 ttl, 2 when the list was made (unix s),
--       then the holds this process has in hand. One step, so the list and its time agree.
redis.call('DEL', KEYS[2])
for i = 3, #ARGV do redis.call('SADD', KEYS[2], ARGV[i]) end
if #ARGV > 2 then redis.call('EXPIRE', KEYS[2], ARGV[1]) end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[1])
return #ARGV - 2
