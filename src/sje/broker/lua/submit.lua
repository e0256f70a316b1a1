-- ARGV: P, jid, n, queue, priority, max_queue_length, idem_key, idem_hash, job_timeout_ms,
--       outbox_hold_ms, k, then k task inputs (a small job's, all of them; else none), then
--       field/value pairs for the job hash.
-- A large job's task inputs (P:job:<id>:in) were written before with a safety TTL; this script
-- makes the job visible whole, or not at all.
local jid, n, queue, prio = ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local maxlen, idem, idem_hash = tonumber(ARGV[6]), ARGV[7], ARGV[8]
local job_timeout_ms = tonumber(ARGV[9])
if idem ~= '' then
  local cur = redis.call('GET', P .. ':idem:' .. idem)
  if cur then
    local sep = string.find(cur, '|', 1, true)
    local old_jid, old_hash = string.sub(cur, 1, sep - 1), string.sub(cur, sep + 1)
    if old_hash == idem_hash then return {'duplicate', old_jid} end
    return {'conflict', old_jid}
  end
end
-- a retried call whose first run landed (its reply was lost with the connection): same answer
if redis.call('EXISTS', jkey(jid)) == 1 then return {'ok', jid} end
local depth = redis.call('ZCARD', qkey(queue))
if depth + n > maxlen then return {'full', tostring(depth)} end
local now = now_ms()
local jk = jkey(jid)
local inline = tonumber(ARGV[11])
if inline > 0 then
  local args = {'HSET', jkey(jid, ':in')}
  for i = 0, inline - 1 do
    args[#args + 1] = i
    args[#args + 1] = ARGV[12 + i]
  end
  redis.call(unpack(args))
end
local fields = {'HSET', jk}
for i = 12 + inline, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call(unpack(fields))
redis.call('HSET', jk, 'state', 'pending', 'created_at', now, 'remaining', n, 'c_queued', n,
  'c_running', 0, 'c_retrying', 0, 'c_succeeded', 0, 'c_failed', 0, 'c_dead', 0,
  'c_cancelled', 0)
local seq = redis.call('INCRBY', P .. ':seq', n) - n
local held_until = now + tonumber(ARGV[10])  -- the submitter publishes and settles them
for start = 0, n - 1, 1000 do
  local args, members = {'ZADD', qkey(queue)}, {}
  for i = start, math.min(start + 999, n - 1) do
    args[#args + 1] = score(prio, seq + i)
    args[#args + 1] = jid .. ':' .. i
    members[#members + 1] = jid .. ':' .. i
  end
  redis.call(unpack(args))
  to_outbox(members, held_until)
end
redis.call('PERSIST', jkey(jid, ':in'))
redis.call('ZADD', P .. ':jobs', now, jid)
redis.call('ZADD', P .. ':active', now, jid)
redis.call('SADD', P .. ':queues', queue)
redis.call('HINCRBY', P .. ':stats', 'jobs|submitted', 1)
if job_timeout_ms > 0 then redis.call('ZADD', P .. ':deadlines', now + job_timeout_ms, jid) end
if idem ~= '' then redis.call('SET', P .. ':idem:' .. idem, jid .. '|' .. idem_hash) end
job_event(jid, 'job.submitted', {'tasks', n})
global_event('job.submitted', {'job', jid, 'tasks', n})
wake(queue, n)
return {'ok', jid}
