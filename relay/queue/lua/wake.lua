-- Wake a worker blocked on the queue: push the wake-up item, only onto an empty queue.
-- KEYS[1] queue; ARGV[1] the wake-up item (relay.queue.wire.WAKE)
-- A queue that holds items already wakes the workers (and each drain is followed by a
-- dispatch round), so wake-ups never pile up while the workers are down: at most one waits.
if redis.call('LLEN', KEYS[1]) == 0 then
  return redis.call('RPUSH', KEYS[1], ARGV[1])
end
return 0
