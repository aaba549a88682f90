-- Return the processing lists of consumers whose heartbeat expired to the head of the queue.
-- KEYS[1] queue, KEYS[2] consumers set; ARGV[1] key prefix ("{ns}:")
-- Returns the number of items returned to the queue.
local returned = 0
for _, consumer in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if redis.call('EXISTS', ARGV[1] .. 'heartbeat:' .. consumer) == 0 then
    local processing = ARGV[1] .. 'processing:' .. consumer
    -- RPOP + LPUSH keeps the batch's order at the head of the queue.
    local item = redis.call('RPOP', processing)
    while item do
      redis.call('LPUSH', KEYS[1], item)
      returned = returned + 1
      item = redis.call('RPOP', processing)
    end
    redis.call('SREM', KEYS[2], consumer)
  end
end
return returned
