-- Return one dead consumer's processing list to the head of the queue, in its order.
-- KEYS[1] queue, KEYS[2] consumers set, KEYS[3] the consumer's heartbeat,
-- KEYS[4] its processing list; ARGV[1] consumer id
-- Returns the number of items returned, or -1 when the consumer beat again meanwhile.
--
-- The reaper picks the dead from Python (SMEMBERS, then their heartbeats): a script may only
-- touch the keys it is given, so it cannot walk the set itself. The heartbeat is checked again
-- here, atomically with the move. The first write is an RPOP (or, with nothing to return, the
-- SREM), which a full Redis allows: see take_batch.lua.
if redis.call('EXISTS', KEYS[3]) == 1 then
  return -1
end
local returned = 0
-- RPOP + LPUSH keeps the batch's order at the head of the queue.
local item = redis.call('RPOP', KEYS[4])
while item do
  redis.call('LPUSH', KEYS[1], item)
  returned = returned + 1
  item = redis.call('RPOP', KEYS[4])
end
redis.call('SREM', KEYS[2], ARGV[1])
return returned
