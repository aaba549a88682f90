-- The API answered 429: pause every bucket of KEYS, cut its rate, remember when.
-- ARGV[1]  pause (µs) from now: the Retry-After, already capped
-- ARGV[2]  multiplicative cut of the rate (e.g. 0.5), ARGV[3] lowest rate factor
-- ARGV[4]  rate regained per µs once the pause is over
-- ARGV[4+i] burst tolerance tau (µs) of KEYS[i]
-- Only the first 429 of a pause cuts the rate: the ones already in flight tell nothing new.
-- Slots granted before now are stale (limiter_check.lua); after the pause sending resumes
-- paced, not in a burst. Returns {pause left in µs, rate factor as a string}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local pause = tonumber(ARGV[1])
local cut, floor, slope = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local state = {}
for i = 1, #KEYS do
  state[i] = redis.call('HMGET', KEYS[i], 'tat', 'factor', 'cut_at', 'paused_until', 'seen')
  local seen = tonumber(state[i][5])
  if seen and seen > now then now = seen end
end
local longest, lowest = 0, 1
for i = 1, #KEYS do
  local s = state[i]
  local paused = tonumber(s[4]) or 0
  local factor = 1
  if s[2] then
    factor = math.min(1, tonumber(s[2]) + math.max(0, now - tonumber(s[3])) * slope)
  end
  local until_ = now + pause
  redis.call('HDEL', KEYS[i], 'throttled_at')  -- first write allowed on a full Redis (reserve.lua)
  if paused <= now then
    factor = math.max(floor, factor * cut)
    redis.call('HSET', KEYS[i], 'factor', tostring(factor), 'cut_at', string.format('%.0f', until_))
  end
  if until_ > paused then paused = until_ end
  local tat = math.max(tonumber(s[1]) or 0, paused + tonumber(ARGV[4 + i]))
  redis.call('HSET', KEYS[i], 'tat', string.format('%.0f', tat),
    'paused_until', string.format('%.0f', paused), 'throttled_at', string.format('%.0f', now),
    'seen', string.format('%.0f', now))
  local last = math.max(tat, paused + (1 - factor) / slope)
  redis.call('PEXPIRE', KEYS[i], math.ceil((last - now) / 1000) + 60000)
  if paused - now > longest then longest = paused - now end
  if factor < lowest then lowest = factor end
end
return {longest, tostring(lowest)}
