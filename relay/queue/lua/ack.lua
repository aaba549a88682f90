-- A batch is in the outbox: drop the processing list and keep its poison items, in one step.
-- KEYS[1] processing list, KEYS[2] quarantine list, KEYS[3] quarantined counter
-- ARGV[i] quarantine entries (JSON: reason, item, time, consumer)
-- Dropping the list is the first write, and frees memory: a full Redis lets the rest through
-- (see take_batch.lua). One step: a crash cannot quarantine a batch's poison twice.
redis.call('DEL', KEYS[1])
if #ARGV > 0 then
  redis.call('LPUSH', KEYS[2], unpack(ARGV))
  redis.call('INCRBY', KEYS[3], #ARGV)
end
return #ARGV
