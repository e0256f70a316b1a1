-- ARGV: P, worker_id, task_id...
-- A worker hands tasks back (shutdown): they go to the front of their queue at once and the
-- attempt does not count.
local wid = ARGV[2]
local now = now_ms()
local n = 0
for i = 3, #ARGV do
  local member = ARGV[i]
  if redis.call('HGET', P .. ':owner', member) == wid then
    drop_lease(member)
    local jid, idx = split_id(member)
    local jk = jkey(jid)
    local jstate = redis.call('HGET', jk, 'state')
    if jstate and not TERMINAL[jstate] and redis.call('HGET', jkey(jid, ':st'), idx) == 'running' then
      redis.call('HSET', jkey(jid, ':st'), idx, 'queued')
      redis.call('HINCRBY', jkey(jid, ':att'), idx, -1)
      redis.call('HINCRBY', jk, 'c_running', -1)
      redis.call('HINCRBY', jk, 'c_queued', 1)
      requeue_front(jid, member, 'released', wid, now)
      n = n + 1
    end
  end
end
return n
