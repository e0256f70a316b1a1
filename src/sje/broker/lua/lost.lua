-- ARGV: P, limit
-- Workers past their liveness deadline (no heartbeat for 3 intervals) are marked lost, once.
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', P .. ':wdue', '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for _, wid in ipairs(due) do
  redis.call('ZREM', P .. ':wdue', wid)
  redis.call('HSET', P .. ':wlost', wid, now)
  global_event('worker.lost', {'worker', wid})
end
return #due
