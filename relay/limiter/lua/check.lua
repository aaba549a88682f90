-- Just before a send: is any of these buckets paused, and when did a 429 last cut it?
-- KEYS[i]  the slot's buckets
-- Returns {now, paused_until, throttled_at} in Redis µs, the latest over KEYS (0: never).
-- The worker decides per slot: paused while paused_until > now; a slot granted at or before
-- throttled_at is stale (reserve a fresh one). One answer serves every slot of these buckets
-- this process sends in the next moments (RedisLimiter.check_reuse).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local paused, throttled = 0, 0
for i = 1, #KEYS do
  local s = redis.call('HMGET', KEYS[i], 'paused_until', 'throttled_at')
  paused = math.max(paused, tonumber(s[1]) or 0)
  throttled = math.max(throttled, tonumber(s[2]) or 0)
end
return {now, paused, throttled}
