-- Record that a worker is alive, for `relay health` and `relay status`.
-- KEYS[1] workers hash; ARGV[1] worker id, ARGV[2] unix time
-- First write: an HDEL of the field set again below, which a full Redis allows (see
-- take_batch.lua).
redis.call('HDEL', KEYS[1], ARGV[1])
return redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
