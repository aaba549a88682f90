-- Give back the last ARGV[1] slots of a grant, in each bucket that nobody reserved from since.
-- KEYS[i]  the grant's buckets
-- ARGV[1]  unused slots
-- ARGV[2i], ARGV[1+2i]  TAT of KEYS[i] as the grant left it, and the grant's interval there
-- A bucket whose TAT moved (another reservation, a 429) keeps the slots: a refund then
-- could let later slots crowd earlier ones. Returns how many buckets took the refund.
local unused = tonumber(ARGV[1])
local refunded = 0
for i = 1, #KEYS do
  local tat = tonumber(redis.call('HGET', KEYS[i], 'tat'))
  if tat and tat == tonumber(ARGV[2 * i]) then
    local back = tat - unused * tonumber(ARGV[1 + 2 * i])
    redis.call('HDEL', KEYS[i], 'tat')  -- first write allowed on a full Redis (reserve.lua)
    redis.call('HSET', KEYS[i], 'tat', string.format('%.0f', back))
    refunded = refunded + 1
  end
end
return refunded
