-- Take the probe of a paused destination, one worker per interval.
-- KEYS[1] lock; ARGV[1] seconds it holds. Returns 1 if this caller took it.
-- First write: a DEL of the absent key (a no-op), which a full Redis allows, so the SET after
-- it goes through too (see take_batch.lua).
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[1], '1', 'EX', ARGV[1])
return 1
