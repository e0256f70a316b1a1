-- ARGV: P, n, hold_ms
-- Claims up to n visible outbox entries for publishing, hiding them for hold_ms; returns
-- triples {task_id, queue, priority}. Entries whose task is no longer queued are removed.
local n, hold_ms = tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
local key = P .. ':outbox'
local out = {}
local due = redis.call('ZRANGEBYSCORE', key, '-inf', now, 'LIMIT', 0, n)
for _, member in ipairs(due) do
  local f = nil
  if is_task_id(member) then
    local jid, idx = split_id(member)
    f = redis.call('HMGET', jkey(jid), 'state', 'queue', 'priority')
    if not f[1] or TERMINAL[f[1]] or (redis.call('HGET', jkey(jid, ':st'), idx) or 'queued') ~= 'queued' then
      f = nil
    end
  end
  if f then
    redis.call('ZADD', key, now + hold_ms, member)
    out[#out + 1] = member
    out[#out + 1] = f[2]
    out[#out + 1] = f[3]
  else
    redis.call('ZREM', key, member)
  end
end
return out
