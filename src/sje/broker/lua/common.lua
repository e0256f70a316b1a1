-- Shared prelude, prepended to every script. ARGV[1] is always the key prefix.
-- Job keys: P:job:<id> (hash), and suffixes below; a task id is "<job id>:<index>",
-- the index being a number or "r" for the reduce step.
local P = ARGV[1]
local TERMINAL = {succeeded = true, failed = true, cancelled = true, timed_out = true}
local SUFFIXES = {'', ':in', ':st', ':att', ':red', ':res', ':err', ':ev', ':jev', ':t', ':w', ':d', ':log'}
local EVENTS_MAXLEN = '10000'
-- histogram bucket upper bounds (ms), as sje.events.HISTOGRAM_BOUNDS_MS; throughput slots
local BOUNDS = {5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000}
local SLOT_MS, SLOT_TTL_MS = 10000, 7200000

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function jkey(jid, suffix)
  return P .. ':job:' .. jid .. (suffix or '')
end

local function qkey(queue)
  return P .. ':q:' .. queue
end

-- Task ids are "<job id hex>:<index>"; anything else in a queue is garbage.
local function is_task_id(member)
  return string.match(member, '^%x+:%d+$') ~= nil or string.match(member, '^%x+:r$') ~= nil
end

local function split_id(member)
  local i = string.find(member, ':', 1, true)
  return string.sub(member, 1, i - 1), string.sub(member, i + 1)
end

-- Higher priority sorts first; within a priority, lower sequence (older) first.
local function score(prio, seq)
  return (9 - tonumber(prio)) * 1e13 + seq
end

-- A job's stream (:ev) keeps about its newest EVENTS_MAXLEN events. An entry may hold several
-- (see task_events), so the job hash counts them (ev_n) and, once EVENTS_SLACK over, the
-- oldest entries go (XTRIM MINID) until EVENTS_MAXLEN are left.
local EVENTS_SLACK = 1000
local function trim_events(jid, added)
  local over = redis.call('HINCRBY', jkey(jid), 'ev_n', added) - tonumber(EVENTS_MAXLEN)
  if over <= EVENTS_SLACK then return end
  local stream, dropped, start, keep = jkey(jid, ':ev'), 0, '-', nil
  while dropped < over and keep == nil do
    local entries = redis.call('XRANGE', stream, start, '+', 'COUNT', 500)
    if #entries == 0 then break end
    for _, entry in ipairs(entries) do
      if dropped >= over then
        keep = entry[1]
        break
      end
      local f = entry[2]
      dropped = dropped + ((f[3] == 'n') and tonumber(f[4]) or 1)
      start = '(' .. entry[1]
    end
  end
  if keep then
    redis.call('XTRIM', stream, 'MINID', keep)
  else
    redis.call('DEL', stream)
  end
  redis.call('HINCRBY', jkey(jid), 'ev_n', -dropped)
end

-- Every event goes to the job's stream (:ev); job-level ones also to :jev, which is what
-- waiting clients follow, so they need not read one event per task.
local function job_event(jid, etype, fields)
  redis.call('XADD', jkey(jid, ':ev'), '*', 'type', etype, unpack(fields))
  trim_events(jid, 1)
  if string.sub(etype, 1, 4) == 'job.' then
    redis.call('XADD', jkey(jid, ':jev'), 'MAXLEN', '~', EVENTS_MAXLEN, '*', 'type', etype,
      unpack(fields))
  end
end

-- The same event for the tasks ``idxs`` of one job: per task its attempt and the value of the
-- field ``name`` (wait_ms, duration_ms), the worker the same for all. One task: an ordinary
-- entry. k > 1: one entry 'type', etype, 'n', k, 'each', 'task,attempt,<name>', then those
-- fields as k values joined by ',', and 'worker' once; readers expand it into k events in
-- order (sje.broker.redis_events).
local function task_events(jid, etype, idxs, attempts, worker, name, values)
  local k = #idxs
  if k == 1 then
    job_event(jid, etype, {'task', idxs[1], 'attempt', attempts[1], 'worker', worker, name,
      values[1]})
  elseif k > 1 then
    redis.call('XADD', jkey(jid, ':ev'), '*', 'type', etype, 'n', k,
      'each', 'task,attempt,' .. name, 'task', table.concat(idxs, ','),
      'attempt', table.concat(attempts, ','), 'worker', worker, name, table.concat(values, ','))
    trim_events(jid, k)
  end
end

local function global_event(etype, fields)
  local args = {'XADD', P .. ':events', 'MAXLEN', '~', '100000', '*', 'type', etype}
  for _, v in ipairs(fields) do args[#args + 1] = v end
  redis.call(unpack(args))
end

-- Counters (P:stats, see docs/monitor.md). ``stats`` is a table field -> increment that the
-- caller accumulates and flushes once, so a fetch of n tasks costs few writes.
local function stat_add(stats, field, n)
  stats[field] = (stats[field] or 0) + n
end

local function observe(stats, kind, queue, ms)
  if ms < 0 then ms = 0 end
  local label = '+Inf'
  for _, b in ipairs(BOUNDS) do
    if ms <= b then label = tostring(b) break end
  end
  stat_add(stats, kind .. '|' .. queue .. '|' .. label, 1)
  stat_add(stats, kind .. '_sum|' .. queue, ms)
end

local function flush_stats(stats)
  for field, n in pairs(stats) do redis.call('HINCRBY', P .. ':stats', field, n) end
end

-- n task outcomes: counted by queue, and in the throughput slot of ``now`` (s or f).
local function count_outcome(stats, queue, outcome, now, n)
  stat_add(stats, 'tasks|' .. queue .. '|' .. outcome, n)
  local slot = P .. ':tp:' .. math.floor(now / SLOT_MS)
  local sf = (outcome == 'succeeded') and 's' or 'f'
  if redis.call('HINCRBY', slot, queue .. '|' .. sf, n) == n then
    redis.call('PEXPIRE', slot, SLOT_TTL_MS)
  end
end

-- Milliseconds since the task's start (or ready) time in :t, or -1 when unknown.
local function elapsed(jid, idx, now)
  local t = tonumber(redis.call('HGET', jkey(jid, ':t'), idx) or '')
  if not t then return -1 end
  return now - t
end

-- Wake up to 16 blocked workers of a queue; surplus tokens only cost an empty fetch.
local function wake(queue, n)
  local key = P .. ':wake:' .. queue
  local k = math.min(n, 16)
  local args = {'RPUSH', key}
  for _ = 1, k do args[#args + 1] = '1' end
  redis.call(unpack(args))
  redis.call('LTRIM', key, 0, 15)
end

-- With a relay on (the amqp:// backend, see RelayStore), every task made ready also goes to the
-- outbox, visible from ``visible_at`` (ms), in the same script.
local RELAY = nil
local function to_outbox(members, visible_at)
  if RELAY == nil then RELAY = redis.call('EXISTS', P .. ':relay') == 1 end
  if not RELAY or #members == 0 then return end
  local args = {'ZADD', P .. ':outbox'}
  for _, m in ipairs(members) do
    args[#args + 1] = visible_at
    args[#args + 1] = m
  end
  redis.call(unpack(args))
end

-- Back to the front of its queue (a release or a redelivery), ready from now.
local function requeue_front(jid, member, reason, worker, now)
  local f = redis.call('HMGET', jkey(jid), 'queue', 'priority')
  redis.call('ZADD', qkey(f[1]), score(f[2], 0), member)
  to_outbox({member}, now)
  local _, idx = split_id(member)
  redis.call('HSET', jkey(jid, ':t'), idx, now)
  job_event(jid, 'task.queued', {'task', idx, 'reason', reason, 'worker', worker})
  wake(f[1], 1)
end

-- Remove every not-yet-running task of a job from its queue and from the delayed set.
local function drop_pending(jid)
  local f = redis.call('HMGET', jkey(jid), 'n', 'queue')
  local n, q = tonumber(f[1]), qkey(f[2])
  for start = 0, n - 1, 1000 do
    local members = {}
    for i = start, math.min(start + 999, n - 1) do members[#members + 1] = jid .. ':' .. i end
    redis.call('ZREM', q, unpack(members))
    redis.call('ZREM', P .. ':delayed', unpack(members))
  end
  redis.call('ZREM', q, jid .. ':r')
  redis.call('ZREM', P .. ':delayed', jid .. ':r')
end

-- The P:ends entry of a job that ended: its id; for a succeeded job also its record ('rec',
-- the job hash as a JSON list of names and values) and its value ('val': an args call's result
-- or the reduce output, up to ENDS_VALUE_MAX bytes), so that a waiting request reads nothing.
local ENDS_VALUE_MAX = 16384
local function job_end_entry(jid, state)
  local args = {'XADD', P .. ':ends', 'MAXLEN', '~', '10000', '*', 'job', jid}
  if state ~= 'succeeded' then return args end
  local rec = redis.call('HGETALL', jkey(jid))
  local kind, reduce = nil, nil
  for i = 1, #rec, 2 do
    if rec[i] == 'kind' then kind = rec[i + 1] elseif rec[i] == 'reduce' then reduce = rec[i + 1] end
  end
  args[#args + 1] = 'rec'
  args[#args + 1] = cjson.encode(rec)
  local idx = nil
  if reduce and reduce ~= '' then idx = 'r' elseif kind == 'call' then idx = '0' end
  if idx then
    local value = redis.call('HGET', jkey(jid, ':res'), idx)
    if value and #value <= ENDS_VALUE_MAX then
      args[#args + 1] = 'val'
      args[#args + 1] = value
    end
  end
  return args
end

-- Move a job to a terminal state: unfinished task counts become cancelled, keys get the TTL.
local function finish_job(jid, state, now, err)
  local jk = jkey(jid)
  redis.call('HSET', jk, 'state', state, 'finished_at', now)
  if err then redis.call('HSET', jk, 'error', err) end
  if state ~= 'succeeded' then
    local moved = 0
    for _, c in ipairs({'c_queued', 'c_running', 'c_retrying'}) do
      moved = moved + tonumber(redis.call('HGET', jk, c) or '0')
      redis.call('HSET', jk, c, 0)
    end
    redis.call('HINCRBY', jk, 'c_cancelled', moved)
  end
  redis.call('ZREM', P .. ':deadlines', jid)
  redis.call('ZREM', P .. ':active', jid)
  redis.call('HINCRBY', P .. ':stats', 'jobs|' .. state, 1)
  job_event(jid, 'job.' .. state, {'state', state})
  global_event('job.' .. state, {'job', jid, 'state', state})
  redis.call(unpack(job_end_entry(jid, state)))
  local f = redis.call('HMGET', jk, 'result_ttl_ms', 'idem')
  local ttl = tonumber(f[1])
  for _, s in ipairs(SUFFIXES) do redis.call('PEXPIRE', jkey(jid, s), ttl) end
  if f[2] and f[2] ~= '' then redis.call('PEXPIRE', P .. ':idem:' .. f[2], ttl) end
end

-- Dead-letter queue: P:dlq (ids scored by arrival number), P:dlq:e (id -> entry JSON), P:dlq:raw (the raw
-- queue entry of orphans). ``err`` is already JSON and is spliced in as it is.
local DLQ_MAX = 100000
local function dlq_add(id, meta, err, now)
  meta.id = id
  meta.at = now
  local entry = string.sub(cjson.encode(meta), 1, -2) .. ',"error":' .. err .. '}'
  redis.call('ZADD', P .. ':dlq', redis.call('INCR', P .. ':dlq:seq'), id)  -- arrival order
  redis.call('HSET', P .. ':dlq:e', id, entry)
  local over = redis.call('ZCARD', P .. ':dlq') - DLQ_MAX
  if over > 0 then
    local old = redis.call('ZPOPMIN', P .. ':dlq', over)
    for i = 1, #old, 2 do
      redis.call('HDEL', P .. ':dlq:e', old[i])
      redis.call('HDEL', P .. ':dlq:raw', old[i])
    end
  end
  global_event('task.dead_lettered', {'entry', id})
end

-- A queue entry that names no stored task: kept (raw) in the dead-letter queue, never run.
local function orphan(queue, member, why, now)
  local id = 'orphan-' .. redis.call('INCR', P .. ':dlq:seq')
  redis.call('HSET', P .. ':dlq:raw', id, member)
  dlq_add(id, {queue = queue, state = 'dead'}, cjson.encode({type = 'OrphanMessage',
    message = why .. '; it was never run. Purge it with `sje dlq purge ' .. id .. '`'}), now)
end

-- A task failed for good (state 'failed': its code raised on every attempt; 'dead': it could
-- not be run): record it, dead-letter it and fail its job fast (pending tasks are dropped).
local function fail_task(jid, idx, err, now, state, dur)
  local jk = jkey(jid)
  local tid = jid .. ':' .. idx
  redis.call('HSET', jkey(jid, ':st'), idx, state)
  redis.call('HSET', jkey(jid, ':err'), idx, err)
  redis.call('HINCRBY', jk, 'c_' .. state, 1)
  local f = redis.call('HMGET', jk, 'task', 'reduce', 'queue')
  local attempt = tonumber(redis.call('HGET', jkey(jid, ':att'), idx) or '0')
  local worker = redis.call('HGET', jkey(jid, ':w'), idx) or ''
  local stats = {}
  count_outcome(stats, f[3], state, now, 1)
  flush_stats(stats)
  dlq_add(tid, {job = jid, task = idx, name = (idx == 'r') and f[2] or f[1], queue = f[3],
    state = state, attempt = attempt}, err, now)
  local fields = {'task', idx, 'attempt', attempt, 'worker', worker}
  if dur then
    fields[#fields + 1] = 'duration_ms'
    fields[#fields + 1] = dur
  end
  job_event(jid, 'task.' .. state, fields)
  table.insert(fields, 1, jid)
  table.insert(fields, 1, 'job')
  global_event('task.' .. state, fields)
  drop_pending(jid)
  finish_job(jid, 'failed', now,
    cjson.encode({task = idx, dead_letter = tid, error = cjson.decode(err)}))
end

-- Stop tracking a lease (the task finished, failed, was handed back or reclaimed).
local function drop_lease(member)
  redis.call('ZREM', P .. ':leases', member)
  redis.call('HDEL', P .. ':owner', member)
end
