-- Pause a destination for every worker.
-- KEYS[1] paused hash; ARGV[1] destination, ARGV[2] JSON record, ARGV[3] '1': only if it is not
-- paused yet (the first refusal of a round wins; the others find it paused)
-- Returns 1 if the record was written.
-- First write: an HDEL of the field written below, which a full Redis allows (see
-- take_batch.lua): a refused key must pause its destination even then.
if ARGV[3] == '1' and redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  return 0
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
