-- Task delivery functions shared by fetch.lua, complete.lua and complete_fetch.lua
-- (appended to common.lua for those scripts).

local JOB_FIELDS = {'state', 'task', 'kind', 'retries', 'backoff', 'backoff_max', 'timeout',
  'reduce', 'n', 'sig_r', 'created_at', 'queue'}

-- The job's fields of JOB_FIELDS (cached in ``jobs`` for one script run); nil for no job.
local function job_fields(jobs, jid)
  local job = jobs[jid]
  if job == nil then
    job = redis.call('HMGET', jkey(jid), unpack(JOB_FIELDS))
    jobs[jid] = job
  end
  return job
end

-- Leases one task, just taken out of its queue, to the worker: attempt, wait, events; appends
-- the triple {task_id, header_json, payload} to ``out``.
local function lease_task(wid, lease_ms, member, jid, idx, job, queue, now, stats, out)
  local jk = jkey(jid)
  local attempt = redis.call('HINCRBY', jkey(jid, ':att'), idx, 1)
  local ready = tonumber(redis.call('HGET', jkey(jid, ':t'), idx) or job[11])
  local wait = math.max(0, now - ready)
  redis.call('HSET', jkey(jid, ':t'), idx, now)
  redis.call('HSET', jkey(jid, ':w'), idx, wid)
  observe(stats, 'wait', queue, wait)
  redis.call('HSET', jkey(jid, ':st'), idx, 'running')
  redis.call('ZADD', P .. ':leases', now + lease_ms, member)
  redis.call('HSET', P .. ':owner', member, wid)
  redis.call('HINCRBY', jk, 'c_queued', -1)
  redis.call('HINCRBY', jk, 'c_running', 1)
  if job[1] == 'pending' then
    redis.call('HSET', jk, 'state', 'running', 'started_at', now)
    job[1] = 'running'
    job_event(jid, 'job.started', {})
    global_event('job.started', {'job', jid})
  end
  local task, kind, payload = job[2], job[3], nil
  if idx == 'r' then
    task, kind, payload = job[8], 'reduce', job[10]
  else
    payload = redis.call('HGET', jkey(jid, ':in'), idx)
  end
  out[#out + 1] = member
  out[#out + 1] = cjson.encode({task, kind, attempt, job[4], job[5], job[6], job[7]})
  out[#out + 1] = payload or ''
  job_event(jid, 'task.started', {'task', idx, 'attempt', attempt, 'worker', wid, 'wait_ms', wait})
end

-- Pops up to n runnable tasks (queues in the order given, each by priority then age), leases
-- each to the worker on the broker's clock; returns triples {task_id, header_json, payload}.
-- Entries that name no stored task go to the dead-letter queue.
local function fetch_tasks(wid, lease_ms, n, queues)
  local now = now_ms()
  local out, got, jobs, stats = {}, 0, {}, {}
  for _, queue in ipairs(queues) do
    local q = qkey(queue)
    while got < n do
      local popped = redis.call('ZPOPMIN', q, n - got)
      if #popped == 0 then break end
      for i = 1, #popped, 2 do
        local member = popped[i]
        local job, jid, idx = nil, nil, nil
        if is_task_id(member) then
          jid, idx = split_id(member)
          job = job_fields(jobs, jid)
        end
        if job == nil then
          orphan(queue, member, 'queue entry is not a task id', now)
        elseif not job[1] then
          orphan(queue, member, 'queue entry names job ' .. jid .. ', which is not stored', now)
        elseif idx ~= 'r' and tonumber(idx) >= tonumber(job[9]) then
          orphan(queue, member, 'queue entry names task ' .. idx .. ' of job ' .. jid ..
            ', which has only ' .. job[9] .. ' tasks', now)
        elseif not TERMINAL[job[1]] then
          lease_task(wid, lease_ms, member, jid, idx, job, queue, now, stats, out)
          got = got + 1
        end
      end
    end
    if got >= n then break end
  end
  flush_stats(stats)
  return out
end

-- Stores a task's result exactly once (first success wins), then completes the job or starts
-- its reduce step when it was the last task. Returns ok | duplicate | stale.
local function complete_task(member, wid, result)
  local jid, idx = split_id(member)
  local jk = jkey(jid)
  local jstate = redis.call('HGET', jk, 'state')
  if not jstate or TERMINAL[jstate] then
    if redis.call('HGET', P .. ':owner', member) == wid then drop_lease(member) end
    return 'stale'
  end
  local prev = redis.call('HGET', jkey(jid, ':st'), idx) or 'queued'
  if prev == 'succeeded' or prev == 'failed' or prev == 'dead' then
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
  local dur = elapsed(jid, idx, now)
  local stats = {}
  if dur >= 0 then
    redis.call('HSET', jkey(jid, ':d'), idx, dur)
    observe(stats, 'dur', queue, dur)
  end
  count_outcome(stats, queue, 'succeeded', now)
  flush_stats(stats)
  local attempt = redis.call('HGET', jkey(jid, ':att'), idx) or '0'
  job_event(jid, 'task.succeeded',
    {'task', idx, 'attempt', attempt, 'worker', wid, 'duration_ms', math.max(dur, 0)})
  if idx == 'r' then
    finish_job(jid, 'succeeded', now, nil)
    return 'ok'
  end
  if redis.call('HINCRBY', jk, 'remaining', -1) == 0 then
    local reduce = redis.call('HGET', jk, 'reduce')
    if reduce and reduce ~= '' then
      redis.call('HSET', jkey(jid, ':st'), 'r', 'queued')
      redis.call('HINCRBY', jk, 'c_queued', 1)
      requeue_front(jid, jid .. ':r', 'reduce', '', now)
      job_event(jid, 'job.reducing', {})
    else
      finish_job(jid, 'succeeded', now, nil)
    end
  end
  return 'ok'
end
