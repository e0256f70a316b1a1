-- ARGV: P, worker_id, lease_ms, due_ms, busy, stats_json, task_id...
-- Heartbeat: marks the worker alive (lost after due_ms without another), stores its stats and
-- extends its leases. Returns the task ids the worker no longer owns (reclaimed, cancelled,
-- job finished) so it can stop running them.
local wid, lease_ms, due_ms, busy, stats = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5], ARGV[6]
local now = now_ms()
redis.call('ZADD', P .. ':seen', now, wid)
redis.call('ZADD', P .. ':wdue', now + due_ms, wid)
if stats ~= '' then redis.call('HSET', P .. ':wstat', wid, stats) end
if redis.call('HDEL', P .. ':wlost', wid) == 1 then global_event('worker.back', {'worker', wid}) end
-- a heartbeat event at most every 30 s per worker: many workers must not push job events out
-- of the bounded global stream (their liveness is in P:seen / P:wdue either way)
local last = tonumber(redis.call('HGET', P .. ':whb', wid) or '0')
if now - last >= 30000 then
  redis.call('HSET', P .. ':whb', wid, now)
  global_event('worker.heartbeat', {'worker', wid, 'busy', busy})
end
local lost = {}
for i = 7, #ARGV do
  local member = ARGV[i]
  local jid, idx = split_id(member)
  local jstate = redis.call('HGET', jkey(jid), 'state')
  local owner = redis.call('HGET', P .. ':owner', member)
  if owner == wid and jstate and not TERMINAL[jstate] then
    redis.call('ZADD', P .. ':leases', now + lease_ms, member)
  else
    if owner == wid then drop_lease(member) end
    lost[#lost + 1] = member
  end
end
return lost
