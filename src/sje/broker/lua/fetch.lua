-- ARGV: P, worker_id, lease_ms, n, queue...
-- Pops up to n runnable tasks (queues in the order given, each by priority then age), leases
-- each to the worker on the broker's clock, and returns pairs {header_json, payload}.
local wid, lease_ms, n = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
local out, got, jobs = {}, 0, {}
for qi = 5, #ARGV do
  local q = qkey(ARGV[qi])
  while got < n do
    local popped = redis.call('ZPOPMIN', q, n - got)
    if #popped == 0 then break end
    for i = 1, #popped, 2 do
      local member = popped[i]
      local jid, idx = split_id(member)
      local job = jobs[jid]
      if job == nil then
        job = redis.call('HMGET', jkey(jid), 'state', 'task', 'kind', 'retries', 'backoff',
          'backoff_max', 'timeout', 'reduce')
        jobs[jid] = job
      end
      if job[1] and not TERMINAL[job[1]] then
        local jk = jkey(jid)
        local attempt = redis.call('HINCRBY', jkey(jid, ':att'), idx, 1)
        redis.call('HSET', jkey(jid, ':st'), idx, 'running')
        redis.call('ZADD', P .. ':leases', now + lease_ms, member)
        redis.call('HSET', P .. ':owner', member, wid)
        redis.call('HINCRBY', jk, 'c_queued', -1)
        redis.call('HINCRBY', jk, 'c_running', 1)
        if job[1] == 'pending' then
          redis.call('HSET', jk, 'state', 'running', 'started_at', now)
          job[1] = 'running'
          job_event(jid, 'job.running', {})
        end
        local task, kind, payload = job[2], job[3], ''
        if idx == 'r' then
          task, kind = job[8], 'reduce'
        else
          payload = redis.call('HGET', jkey(jid, ':in'), idx) or ''
        end
        out[#out + 1] = cjson.encode({member, task, kind, attempt, job[4], job[5], job[6], job[7]})
        out[#out + 1] = payload
        got = got + 1
        job_event(jid, 'task.started', {'task', idx, 'attempt', attempt, 'worker', wid})
      end
    end
  end
  if got >= n then break end
end
return out
