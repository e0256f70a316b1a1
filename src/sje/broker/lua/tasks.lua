-- Task delivery functions shared by fetch.lua, start.lua, complete.lua and complete_fetch.lua
-- (appended to common.lua for those scripts). Both directions work on a batch, grouped by job:
-- a group of k tasks costs a few multi-field calls plus one event per task, not ~15 calls each.

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

local function push2(t, a, b)
  t[#t + 1] = a
  t[#t + 1] = b
end

-- Tasks of one batch grouped by job, in order of first appearance: groups[jid] holds the
-- members, their indexes and their positions in the batch.
local function group_add(groups, order, jid, idx, member, pos)
  local g = groups[jid]
  if g == nil then
    g = {members = {}, idxs = {}, pos = {}}
    groups[jid] = g
    order[#order + 1] = jid
  end
  g.members[#g.members + 1] = member
  g.idxs[#g.idxs + 1] = idx
  g.pos[#g.pos + 1] = pos
end

-- Leases a group of one job's tasks, just taken out of their queue, to the worker: attempts,
-- waits, events; the triple {task_id, header_json, payload} of the group's j-th task goes to
-- out[3 * pos[j] - 2 .. 3 * pos[j]].
local function lease_group(wid, lease_ms, jid, g, job, queue, now, stats, out)
  local jk, idxs, k = jkey(jid), g.idxs, #g.idxs
  local atts = redis.call('HMGET', jkey(jid, ':att'), unpack(idxs))
  local readys = redis.call('HMGET', jkey(jid, ':t'), unpack(idxs))
  local inputs, numbered = {}, {}
  for _, idx in ipairs(idxs) do
    if idx ~= 'r' then numbered[#numbered + 1] = idx end
  end
  if #numbered > 0 then
    local values = redis.call('HMGET', jkey(jid, ':in'), unpack(numbered))
    for j, idx in ipairs(numbered) do inputs[idx] = values[j] end
  end
  local set_att, set_t = {'HSET', jkey(jid, ':att')}, {'HSET', jkey(jid, ':t')}
  local set_w, set_st = {'HSET', jkey(jid, ':w')}, {'HSET', jkey(jid, ':st')}
  local leases, owners = {'ZADD', P .. ':leases'}, {'HSET', P .. ':owner'}
  local attempts, waits = {}, {}
  for j, idx in ipairs(idxs) do
    local member, attempt = g.members[j], tonumber(atts[j] or '0') + 1
    local wait = math.max(0, now - (tonumber(readys[j] or '') or tonumber(job[11])))
    observe(stats, 'wait', queue, wait)
    push2(set_att, idx, attempt)
    push2(set_t, idx, now)
    push2(set_w, idx, wid)
    push2(set_st, idx, 'running')
    push2(owners, member, wid)
    push2(leases, now + lease_ms, member)
    local task, kind, payload = job[2], job[3], inputs[idx]
    if idx == 'r' then task, kind, payload = job[8], 'reduce', job[10] end
    local at = 3 * g.pos[j]
    out[at - 2] = member
    out[at - 1] = cjson.encode({task, kind, attempt, job[4], job[5], job[6], job[7]})
    out[at] = payload or ''
    attempts[j] = attempt
    waits[j] = wait
  end
  for _, args in ipairs({set_att, set_t, set_w, set_st, leases, owners}) do
    redis.call(unpack(args))
  end
  redis.call('HINCRBY', jk, 'c_queued', -k)
  redis.call('HINCRBY', jk, 'c_running', k)
  if job[1] == 'pending' then
    redis.call('HSET', jk, 'state', 'running', 'started_at', now)
    job[1] = 'running'
    job_event(jid, 'job.started', {})
    global_event('job.started', {'job', jid})
  end
  task_events(jid, 'task.started', idxs, attempts, wid, 'wait_ms', waits)
end

-- Pops up to n runnable tasks (queues in the order given, each by priority then age), leases
-- each to the worker on the broker's clock; returns triples {task_id, header_json, payload}
-- in the order popped. Entries that name no stored task go to the dead-letter queue.
local function fetch_tasks(wid, lease_ms, n, queues)
  local now = now_ms()
  local out, got, jobs, stats = {}, 0, {}, {}
  for _, queue in ipairs(queues) do
    local q = qkey(queue)
    while got < n do
      local popped = redis.call('ZPOPMIN', q, n - got)
      if #popped == 0 then break end
      local groups, order = {}, {}
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
          got = got + 1
          group_add(groups, order, jid, idx, member, got)
        end
      end
      for _, jid in ipairs(order) do
        lease_group(wid, lease_ms, jid, groups[jid], jobs[jid], queue, now, stats, out)
      end
    end
    if got >= n then break end
  end
  flush_stats(stats)
  return out
end

local function drop_own_lease(member, wid)
  if redis.call('HGET', P .. ':owner', member) == wid then drop_lease(member) end
end

-- Stores the results of a group of one job's tasks, each exactly once (first success wins),
-- then completes the job or starts its reduce step when the last task is among them. Sets
-- status[pos] to ok | duplicate | stale for each.
local function complete_group(wid, jid, g, results, now, stats, status)
  local jk = jkey(jid)
  local f = redis.call('HMGET', jk, 'state', 'queue', 'reduce')
  if not f[1] or TERMINAL[f[1]] then
    for j, member in ipairs(g.members) do
      drop_own_lease(member, wid)
      status[g.pos[j]] = 'stale'
    end
    return
  end
  local queue = f[2]
  local prevs = redis.call('HMGET', jkey(jid, ':st'), unpack(g.idxs))
  local members, idxs, values, left, seen = {}, {}, {}, {}, {}
  for j, idx in ipairs(g.idxs) do
    local member, prev = g.members[j], prevs[j] or 'queued'
    if seen[idx] or prev == 'succeeded' or prev == 'failed' or prev == 'dead' then
      drop_own_lease(member, wid)
      status[g.pos[j]] = 'duplicate'
    else
      seen[idx] = true
      status[g.pos[j]] = 'ok'
      members[#members + 1] = member
      idxs[#idxs + 1] = idx
      values[#values + 1] = results[g.pos[j]]
      left[prev] = (left[prev] or 0) + 1
      if prev == 'queued' then redis.call('ZREM', qkey(queue), member) end
      if prev == 'retrying' then redis.call('ZREM', P .. ':delayed', member) end
    end
  end
  local m = #idxs
  if m == 0 then return end
  redis.call('ZREM', P .. ':leases', unpack(members))
  redis.call('HDEL', P .. ':owner', unpack(members))
  for prev, c in pairs(left) do redis.call('HINCRBY', jk, 'c_' .. prev, -c) end
  redis.call('HINCRBY', jk, 'c_succeeded', m)
  local starts = redis.call('HMGET', jkey(jid, ':t'), unpack(idxs))
  local atts = redis.call('HMGET', jkey(jid, ':att'), unpack(idxs))
  local set_st, set_res, set_d = {'HSET', jkey(jid, ':st')}, {'HSET', jkey(jid, ':res')}, {}
  local attempts, durs = {}, {}
  for j, idx in ipairs(idxs) do
    push2(set_st, idx, 'succeeded')
    push2(set_res, idx, values[j])
    local t = tonumber(starts[j] or '')
    local dur = t and (now - t) or -1
    if dur >= 0 then
      push2(set_d, idx, dur)
      observe(stats, 'dur', queue, dur)
    end
    attempts[j] = atts[j] or '0'
    durs[j] = math.max(dur, 0)
  end
  redis.call(unpack(set_st))
  redis.call(unpack(set_res))
  if #set_d > 0 then redis.call('HSET', jkey(jid, ':d'), unpack(set_d)) end
  count_outcome(stats, queue, 'succeeded', now, m)
  task_events(jid, 'task.succeeded', idxs, attempts, wid, 'duration_ms', durs)
  if seen['r'] then
    finish_job(jid, 'succeeded', now, nil)
  elseif redis.call('HINCRBY', jk, 'remaining', -m) == 0 then
    if f[3] and f[3] ~= '' then
      redis.call('HSET', jkey(jid, ':st'), 'r', 'queued')
      redis.call('HINCRBY', jk, 'c_queued', 1)
      requeue_front(jid, jid .. ':r', 'reduce', '', now)
      job_event(jid, 'job.reducing', {})
    else
      finish_job(jid, 'succeeded', now, nil)
    end
  end
end

-- Stores a batch of successes: members[i] succeeded with results[i]. Returns a status per
-- task, in order: ok | duplicate | stale.
local function complete_tasks(wid, members, results)
  local now, stats, status, groups, order = now_ms(), {}, {}, {}, {}
  for i, member in ipairs(members) do
    local jid, idx = split_id(member)
    group_add(groups, order, jid, idx, member, i)
  end
  for _, jid in ipairs(order) do
    complete_group(wid, jid, groups[jid], results, now, stats, status)
  end
  flush_stats(stats)
  return status
end
