-- Refresh a consumer's heartbeat and register it as a consumer.
-- KEYS[1] heartbeat, KEYS[2] consumers set; ARGV[1] ttl (ms), ARGV[2] consumer id
-- First write: a DEL, which a full Redis allows; the writes after it then go through too
-- (see take_batch.lua), so a worker stays alive while it drains Redis out of its limit.
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
return redis.call('SADD', KEYS[2], ARGV[2])
