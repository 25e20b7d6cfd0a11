-- KEYS: 1 holds index; ARGV: 1 liveness key prefix, 2 start, 3 most holds per run,
--       4 tombstone ttl, 5 open-holds set prefix. Gives back the open holds nobody can close:
--       - dead: the owner's liveness key is gone;
--       - orphaned: the owner is alive, but its last list of the holds it has in hand (written
--         with its liveness key, whose value is the time that list was made) leaves out a hold
--         taken before then (a reserve whose answer never reached it).
--       Holds without an owner or a time (taken by an older version) are left to the sweep.
local holds = redis.call('ZRANGE', KEYS[1], ARGV[2], tonumber(ARGV[2]) + tonumber(ARGV[3]) - 1)
local released, removed, orphans = 0, 0, 0
for _, h in ipairs(holds) do
  local state, owner, taken = unpack(redis.call('HMGET', h, 's', 'p', 't'))
  if state == 'o' and owner then
    local listed = redis.call('GET', ARGV[1] .. owner)
    local orphan = listed and taken and tonumber(taken) < (tonumber(listed) or 0) - 1
      and redis.call('SISMEMBER', ARGV[5] .. owner, h) == 0
    if not listed or orphan then
      release(h, ARGV[4])
      redis.call('ZREM', KEYS[1], h)
      released, removed = released + 1, removed + 1
      if orphan then orphans = orphans + 1 end
    end
  elseif not state then
    redis.call('ZREM', KEYS[1], h)  -- the hold itself is gone: nothing left to give back
    removed = removed + 1
  end
end
return {#holds, released, removed, orphans}
