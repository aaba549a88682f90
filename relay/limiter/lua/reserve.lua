-- Reserve up to ARGV[1] send slots in every bucket of KEYS: GCRA on Redis's clock.
-- KEYS[i]  one hash per scope: tat, factor, cut_at, paused_until, throttled_at, seen
-- ARGV[1]  slots wanted
-- ARGV[2]  horizon (µs): only slots at most this far ahead are granted
-- ARGV[3]  rate regained per µs after a 429 cut (a fraction of the full rate)
-- ARGV[2+2i], ARGV[3+2i]  interval T and burst tolerance tau (µs) of KEYS[i]
-- Returns {now, wait, n, slot_1..slot_n, tat_1, step_1, ..., tat_k, step_k}:
--   now    Redis TIME in µs (never behind what any bucket has seen: a clock stepped back
--          cannot hand out slots twice)
--   wait   when n = 0: µs until the first slot would be due
--   slot_j µs after now at which the j-th request may be sent
--   tat_i, step_i  bucket i after this grant, for refunds
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local count = tonumber(ARGV[1])
local horizon = tonumber(ARGV[2])
local slope = tonumber(ARGV[3])
local n = #KEYS
local state = {}
for i = 1, n do
  state[i] = redis.call('HMGET', KEYS[i], 'tat', 'factor', 'cut_at', 'paused_until', 'seen')
  local seen = tonumber(state[i][5])
  if seen and seen > now then now = seen end
end
local tat, step, tau, keep = {}, {}, {}, {}
local start = now
for i = 1, n do
  local s = state[i]
  tat[i] = tonumber(s[1]) or 0
  tau[i] = tonumber(ARGV[3 + 2 * i])
  local factor = 1
  keep[i] = 0
  if s[2] then
    -- After a 429 the rate was cut; it climbs back linearly once the pause is over.
    local cut_at = tonumber(s[3])
    factor = tonumber(s[2]) + math.max(0, now - cut_at) * slope
    if factor < 1 then
      keep[i] = cut_at + (1 - tonumber(s[2])) / slope
    else
      factor = 1
    end
  end
  step[i] = math.ceil(tonumber(ARGV[2 + 2 * i]) / factor)
  local paused = tonumber(s[4]) or 0
  if paused > start then start = paused end
  if paused > keep[i] then keep[i] = paused end
end
local slots = {}
local wait = 0
for j = 1, count do
  local s = start
  for i = 1, n do
    if tat[i] - tau[i] > s then s = tat[i] - tau[i] end
  end
  if s - now > horizon then
    if j == 1 then wait = s - now end
    break
  end
  for i = 1, n do
    if s > tat[i] then tat[i] = s end
    tat[i] = tat[i] + step[i]
  end
  slots[j] = s - now
end
local reply = {now, wait, #slots}
for j = 1, #slots do reply[#reply + 1] = slots[j] end
for i = 1, n do
  if #slots > 0 then
    -- HDEL first: a full Redis (maxmemory, noeviction) refuses a script whose first write may
    -- grow memory; once a write that cannot ran, it lets the rest through. The limiter must
    -- keep working while the worker drains Redis back under its limit.
    redis.call('HDEL', KEYS[i], 'seen')
    redis.call('HSET', KEYS[i], 'tat', string.format('%.0f', tat[i]),
      'seen', string.format('%.0f', now))
  end
  -- An idle bucket is a full bucket: the hash may go once its TAT, pause and recovery are past.
  local last = math.max(tat[i], keep[i])
  redis.call('PEXPIRE', KEYS[i], math.max(0, math.ceil((last - now) / 1000)) + 60000)
  reply[#reply + 1] = tat[i]
  reply[#reply + 1] = step[i]
end
return reply
