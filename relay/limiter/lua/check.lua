-- Just before a send: may a request whose slot was granted at ARGV[1] (Redis µs) go now?
-- KEYS[i]  the slot's buckets
-- Returns 0 go; > 0 µs the scope stays paused (a 429); -1 a 429 came after the grant but the
-- pause is over: the slot is stale, reserve a fresh one.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local issued = tonumber(ARGV[1])
local paused_for, stale = 0, false
for i = 1, #KEYS do
  local s = redis.call('HMGET', KEYS[i], 'paused_until', 'throttled_at')
  local paused = tonumber(s[1]) or 0
  if paused - now > paused_for then paused_for = paused - now end
  if (tonumber(s[2]) or 0) >= issued then stale = true end
end
if paused_for > 0 then return paused_for end
if stale then return -1 end
return 0
