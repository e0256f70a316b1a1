-- ARGV: P, task_id, worker_id, result_json
-- Stores a task's result exactly once (first success wins), then completes the job or starts
-- its reduce step when it was the last task. Returns ok | duplicate | stale.
local member, wid, result = ARGV[2], ARGV[3], ARGV[4]
local jid, idx = split_id(member)
local jk = jkey(jid)
local jstate = redis.call('HGET', jk, 'state')
if not jstate or TERMINAL[jstate] then
  if redis.call('HGET', P .. ':owner', member) == wid then drop_lease(member) end
  return 'stale'
end
local prev = redis.call('HGET', jkey(jid, ':st'), idx) or 'queued'
if prev == 'succeeded' or prev == 'failed' then
  if redis.call('HGET', P .. ':owner', member) == wid then drop_lease(member) end
  return 'duplicate'
end
local now = now_ms()
drop_lease(member)
local queue = redis.call('HGET', jk, 'queue')
if prev == 'queued' then redis.call('ZREM', qkey(queue), member) end
if prev == 'retrying' then redis.call('ZREM', P .. ':delayed', member) end
redis.call('HINCRBY', jk, 'c_' .. prev, -1)
redis.call('HINCRBY', jk, 'c_succeeded', 1)
redis.call('HSET', jkey(jid, ':st'), idx, 'succeeded')
redis.call('HSET', jkey(jid, ':res'), idx, result)
job_event(jid, 'task.succeeded', {'task', idx, 'worker', wid})
if idx == 'r' then
  finish_job(jid, 'succeeded', now, nil)
  return 'ok'
end
if redis.call('HINCRBY', jk, 'remaining', -1) == 0 then
  local reduce = redis.call('HGET', jk, 'reduce')
  if reduce and reduce ~= '' then
    redis.call('HSET', jkey(jid, ':st'), 'r', 'queued')
    redis.call('HINCRBY', jk, 'c_queued', 1)
    requeue_front(jid, jid .. ':r')
    job_event(jid, 'job.reducing', {})
  else
    finish_job(jid, 'succeeded', now, nil)
  end
end
return 'ok'
