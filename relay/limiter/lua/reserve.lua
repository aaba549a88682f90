-- Reserve send slots for several requests at once, GCRA on Redis's clock: one call per round,
-- however many destinations the round serves.
-- KEYS[k]  one hash per scope: tat, factor, cut_at, paused_until, throttled_at, seen
-- ARGV[1]  horizon (µs): only slots at most this far ahead are granted
-- ARGV[2]  rate regained per µs after a 429 cut (a fraction of the full rate)
-- ARGV[3]  R, the number of requests
-- ARGV[4 .. 3+2K]  interval T and burst tolerance tau (µs) of each KEYS[k], in pairs
-- then per request: count wanted, m, and the m indices (into KEYS) of the scopes it consumes
-- Requests are served in order: a scope two requests share gives the later one what the
-- earlier left.
-- Returns {now, then per request: wait, n, slot_1..slot_n, tat_1, step_1, ..., tat_m, step_m}:
--   now    Redis TIME in µs (never behind what any bucket has seen: a clock stepped back
--          cannot hand out slots twice)
--   wait   when n = 0: µs until the request's first slot would be due
--   slot_j µs after now at which the j-th request may be sent
--   tat_i, step_i  the request's i-th bucket right after its grant, for refunds
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local horizon = tonumber(ARGV[1])
local slope = tonumber(ARGV[2])
local requests = tonumber(ARGV[3])
local n = #KEYS
local state = {}
for k = 1, n do
  state[k] = redis.call('HMGET', KEYS[k], 'tat', 'factor', 'cut_at', 'paused_until', 'seen')
  local seen = tonumber(state[k][5])
  if seen and seen > now then now = seen end
end
local tat, step, tau, keep, paused, granted = {}, {}, {}, {}, {}, {}
for k = 1, n do
  local s = state[k]
  tat[k] = tonumber(s[1]) or 0
  tau[k] = tonumber(ARGV[3 + 2 * k])
  local factor = 1
  keep[k] = 0
  if s[2] then
    -- After a 429 the rate was cut; it climbs back linearly once the pause is over.
    local cut_at = tonumber(s[3])
    factor = tonumber(s[2]) + math.max(0, now - cut_at) * slope
    if factor < 1 then
      keep[k] = cut_at + (1 - tonumber(s[2])) / slope
    else
      factor = 1
    end
  end
  step[k] = math.ceil(tonumber(ARGV[2 + 2 * k]) / factor)
  paused[k] = tonumber(s[4]) or 0
  if paused[k] > keep[k] then keep[k] = paused[k] end
  granted[k] = false
end
local reply = {now}
local at = 4 + 2 * n
for r = 1, requests do
  local count, m = tonumber(ARGV[at]), tonumber(ARGV[at + 1])
  local mine = {}
  for i = 1, m do mine[i] = tonumber(ARGV[at + 1 + i]) end
  at = at + 2 + m
  local start = now
  for _, k in ipairs(mine) do
    if paused[k] > start then start = paused[k] end
  end
  local slots = {}
  local wait = 0
  for j = 1, count do
    local s = start
    for _, k in ipairs(mine) do
      if tat[k] - tau[k] > s then s = tat[k] - tau[k] end
    end
    if s - now > horizon then
      if j == 1 then wait = s - now end
      break
    end
    for _, k in ipairs(mine) do
      if s > tat[k] then tat[k] = s end
      tat[k] = tat[k] + step[k]
      granted[k] = true
    end
    slots[j] = s - now
  end
  reply[#reply + 1] = wait
  reply[#reply + 1] = #slots
  for j = 1, #slots do reply[#reply + 1] = slots[j] end
  for _, k in ipairs(mine) do
    reply[#reply + 1] = tat[k]
    reply[#reply + 1] = step[k]
  end
end
for k = 1, n do
  if granted[k] then
    -- HDEL first: a full Redis (maxmemory, noeviction) refuses a script whose first write may
    -- grow memory; once a write that cannot ran, it lets the rest through. The limiter must
    -- keep working while the worker drains Redis back under its limit.
    redis.call('HDEL', KEYS[k], 'seen')
    redis.call('HSET', KEYS[k], 'tat', string.format('%.0f', tat[k]),
      'seen', string.format('%.0f', now))
  end
  -- An idle bucket is a full bucket: the hash may go once its TAT, pause and recovery are past.
  local last = math.max(tat[k], keep[k])
  redis.call('PEXPIRE', KEYS[k], math.max(0, math.ceil((last - now) / 1000)) + 60000)
end
return reply
