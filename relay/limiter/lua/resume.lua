-- Resume a destination, unless someone else paused it meanwhile.
-- KEYS[1] paused hash; ARGV[1] destination, ARGV[2] whose pause may be lifted ('' = anyone's)
-- Returns 1 if it was resumed. A delivered probe lifts only the relay's own pause: an operator
-- who paused the destination while the probe was in flight keeps it paused.
local record = redis.call('HGET', KEYS[1], ARGV[1])
if not record then
  return 0
end
if ARGV[2] ~= '' then
  local ok, decoded = pcall(cjson.decode, record)
  if not ok or decoded['by'] ~= ARGV[2] then
    return 0
  end
end
return redis.call('HDEL', KEYS[1], ARGV[1])
