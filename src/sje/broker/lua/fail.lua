-- ARGV: P, task_id, worker_id, error_json, retry_delay_ms (-1: no retry left), final state
-- Records a failed attempt; schedules a retry in the delayed set or fails the task for good
-- (final state 'failed' or 'dead', dead-lettered; its job fails). Returns retry | <state> | stale.
local member, wid, err, delay, final = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6]
local jid, idx = split_id(member)
local jk = jkey(jid)
local jstate = redis.call('HGET', jk, 'state')
local owner = redis.call('HGET', P .. ':owner', member)
if not jstate or TERMINAL[jstate] then
  if owner == wid then drop_lease(member) end
  return 'stale'
end
if owner ~= wid or redis.call('HGET', jkey(jid, ':st'), idx) ~= 'running' then return 'stale' end
local now = now_ms()
drop_lease(member)
redis.call('HINCRBY', jk, 'c_running', -1)
if delay >= 0 then
  redis.call('HSET', jkey(jid, ':err'), idx, err)
  redis.call('HSET', jkey(jid, ':st'), idx, 'retrying')
  redis.call('HINCRBY', jk, 'c_retrying', 1)
  redis.call('ZADD', P .. ':delayed', now + delay, member)
  job_event(jid, 'task.retrying', {'task', idx, 'worker', wid, 'delay_ms', delay})
  return 'retry'
end
fail_task(jid, idx, err, now, final)
return final
