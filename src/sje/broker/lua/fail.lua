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
local dur = math.max(elapsed(jid, idx, now), 0)
redis.call('HSET', jkey(jid, ':d'), idx, dur)
local stats = {}
local queue = redis.call('HGET', jk, 'queue')
observe(stats, 'dur', queue, dur)
if delay >= 0 then
  redis.call('HSET', jkey(jid, ':err'), idx, err)
  redis.call('HSET', jkey(jid, ':st'), idx, 'retrying')
  redis.call('HSET', jkey(jid, ':t'), idx, now + delay)  -- ready again then
  redis.call('HINCRBY', jk, 'c_retrying', 1)
  redis.call('ZADD', P .. ':delayed', now + delay, member)
  stat_add(stats, 'tasks|' .. queue .. '|retried', 1)
  flush_stats(stats)
  local attempt = redis.call('HGET', jkey(jid, ':att'), idx) or '0'
  local fields = {'task', idx, 'attempt', attempt, 'worker', wid, 'duration_ms', dur,
    'delay_ms', delay}
  job_event(jid, 'task.retrying', fields)
  table.insert(fields, 1, jid)
  table.insert(fields, 1, 'job')
  global_event('task.retrying', fields)
  return 'retry'
end
flush_stats(stats)
fail_task(jid, idx, err, now, final, dur)
return final
