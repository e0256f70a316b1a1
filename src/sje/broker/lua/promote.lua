-- ARGV: P, limit
-- Moves retries whose backoff has passed from the delayed set to the back of their queue.
local limit = tonumber(ARGV[2])
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', P .. ':delayed', '-inf', now, 'LIMIT', 0, limit)
for _, member in ipairs(due) do
  redis.call('ZREM', P .. ':delayed', member)
  local jid, idx = split_id(member)
  local jk = jkey(jid)
  local f = redis.call('HMGET', jk, 'state', 'queue', 'priority')
  if f[1] and not TERMINAL[f[1]] and redis.call('HGET', jkey(jid, ':st'), idx) == 'retrying' then
    redis.call('HSET', jkey(jid, ':st'), idx, 'queued')
    redis.call('HINCRBY', jk, 'c_retrying', -1)
    redis.call('HINCRBY', jk, 'c_queued', 1)
    redis.call('ZADD', qkey(f[2]), score(f[3], redis.call('INCR', P .. ':seq')), member)
    to_outbox({member}, now)
    job_event(jid, 'task.queued', {'task', idx, 'reason', 'retry'})
    wake(f[2], 1)
  end
end
return #due
