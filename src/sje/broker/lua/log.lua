-- ARGV: P, job_id, field ("<task index>:<attempt>"), log_json, max_logs, max_bytes
-- Stores one attempt's log in P:job:<id>:log, only while the job exists. A finished job's keys
-- already carry result-ttl, so the log key gets what is left of the job's. Besides the logs
-- the hash counts them ('n'), their bytes ('bytes') and the logs refused for being over a
-- bound ('dropped'); those names have no ':', so they never clash with a log's field.
-- Returns ok | full (over max_logs or max_bytes: not stored) | missing (no such job).
local jid, field, value = ARGV[2], ARGV[3], ARGV[4]
local max_logs, max_bytes = tonumber(ARGV[5]), tonumber(ARGV[6])
local jk, lk = jkey(jid), jkey(jid, ':log')
if redis.call('EXISTS', jk) == 0 then return 'missing' end
local f = redis.call('HMGET', lk, 'n', 'bytes')
local n, used = tonumber(f[1] or '0'), tonumber(f[2] or '0')
local is_new = redis.call('HEXISTS', lk, field) == 0
local bytes = used - redis.call('HSTRLEN', lk, field) + #value
local status = 'ok'
if (is_new and n >= max_logs) or bytes > max_bytes then
  redis.call('HINCRBY', lk, 'dropped', 1)
  status = 'full'
else
  redis.call('HSET', lk, field, value, 'bytes', bytes)
  if is_new then redis.call('HINCRBY', lk, 'n', 1) end
end
local ttl = redis.call('PTTL', jk)
if ttl > 0 then redis.call('PEXPIRE', lk, ttl) end
return status
