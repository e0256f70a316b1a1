-- ARGV: P, entry_id[, job_id]
-- Requeue a dead-letter entry (or, given a job id, that failed job): the job is reopened and
-- every task of it that has not succeeded is queued again (failed and dead ones with fresh
-- attempt counts); their entries leave the dead-letter queue. Returns {status, job_id,
-- tasks_queued} with status ok | missing (no such entry) | orphan (no job) | expired (job
-- record gone) | <job state>.
local id, jid = ARGV[2], ARGV[3]
if not jid or jid == '' then
  local raw = redis.call('HGET', P .. ':dlq:e', id)
  if not raw then return {'missing', '', 0} end
  jid = cjson.decode(raw).job
  if not jid then return {'orphan', '', 0} end
end
local jk = jkey(jid)
local f = redis.call('HMGET', jk, 'state', 'n', 'queue', 'priority', 'reduce', 'remaining', 'idem')
if not f[1] then return {'expired', jid, 0} end
if f[1] ~= 'failed' then return {f[1], jid, 0} end
local n, queue, prio = tonumber(f[2]), f[3], f[4]
local now = now_ms()
for _, s in ipairs(SUFFIXES) do redis.call('PERSIST', jkey(jid, s)) end
if f[7] and f[7] ~= '' then redis.call('PERSIST', P .. ':idem:' .. f[7]) end
local indices = {}
for i = 0, n - 1 do indices[#indices + 1] = tostring(i) end
if tonumber(f[6]) == 0 and f[5] ~= '' then indices[#indices + 1] = 'r' end
local queued = 0
local seq = redis.call('INCRBY', P .. ':seq', #indices)
for _, idx in ipairs(indices) do
  local st = redis.call('HGET', jkey(jid, ':st'), idx)
  if st ~= 'succeeded' then
    local member = jid .. ':' .. idx
    if st == 'failed' or st == 'dead' then
      redis.call('HDEL', jkey(jid, ':att'), idx)
      redis.call('HDEL', jkey(jid, ':red'), idx)
      redis.call('ZREM', P .. ':dlq', member)
      redis.call('HDEL', P .. ':dlq:e', member)
    end
    drop_lease(member)
    redis.call('HSET', jkey(jid, ':st'), idx, 'queued')
    redis.call('HSET', jkey(jid, ':t'), idx, now)
    redis.call('ZADD', qkey(queue), score(prio, seq + queued), member)
    to_outbox({member}, now)
    queued = queued + 1
  end
end
redis.call('HSET', jk, 'state', 'running', 'c_queued', queued, 'c_running', 0, 'c_retrying', 0,
  'c_failed', 0, 'c_dead', 0, 'c_cancelled', 0)
redis.call('HDEL', jk, 'finished_at', 'error')
redis.call('ZADD', P .. ':active', tonumber(redis.call('HGET', jk, 'created_at')), jid)
job_event(jid, 'job.requeued', {'tasks', queued})
global_event('job.requeued', {'job', jid, 'tasks', queued})
wake(queue, queued)
return {'ok', jid, queued}
