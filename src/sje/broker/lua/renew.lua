-- ARGV: P, worker_id, lease_ms, task_id...
-- Heartbeat: marks the worker alive and extends its leases. Returns the task ids the worker
-- no longer owns (reclaimed, cancelled, job finished) so it can stop running them.
local wid, lease_ms = ARGV[2], tonumber(ARGV[3])
local now = now_ms()
redis.call('ZADD', P .. ':seen', now, wid)
local lost = {}
for i = 4, #ARGV do
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
