-- ARGV: P, max_redeliveries, limit
-- Reaper: tasks whose lease ran out (their worker died or hung) go back to the front of their
-- queue; after max_redeliveries such losses the task is dead-lettered with a clear reason.
local maxred, limit = tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
local expired = redis.call('ZRANGEBYSCORE', P .. ':leases', '-inf', now, 'LIMIT', 0, limit)
for _, member in ipairs(expired) do
  local owner = redis.call('HGET', P .. ':owner', member) or '?'
  drop_lease(member)
  local jid, idx = split_id(member)
  local jk = jkey(jid)
  local jstate = redis.call('HGET', jk, 'state')
  if jstate and not TERMINAL[jstate] and redis.call('HGET', jkey(jid, ':st'), idx) == 'running' then
    redis.call('HINCRBY', jk, 'c_running', -1)
    local red = redis.call('HINCRBY', jkey(jid, ':red'), idx, 1)
    if red > maxred then
      local attempt = redis.call('HGET', jkey(jid, ':att'), idx)
      local err = cjson.encode({type = 'WorkerLost', attempt = tonumber(attempt), message =
        'the worker running this task stopped renewing its lease ' .. red ..
        ' times (worker died or hung); giving up after max-redeliveries=' .. maxred})
      fail_task(jid, idx, err, now, 'dead')
    else
      redis.call('HSET', jkey(jid, ':st'), idx, 'queued')
      redis.call('HINCRBY', jk, 'c_queued', 1)
      requeue_front(jid, member, 'redelivered', owner, now)
    end
  end
end
return #expired
