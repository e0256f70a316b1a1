-- ARGV: P, state (cancelled | timed_out), reason, job_id...  (no job id: every job past its deadline)
-- Ends jobs: queued and delayed tasks are dropped; running ones stop at their next heartbeat.
-- Returns, per job, ok | missing | <its terminal state>.
local state, reason = ARGV[2], ARGV[3]
local now = now_ms()
local ids = {}
for i = 4, #ARGV do ids[#ids + 1] = ARGV[i] end
if #ids == 0 then ids = redis.call('ZRANGEBYSCORE', P .. ':deadlines', '-inf', now, 'LIMIT', 0, 100) end
local out = {}
for _, jid in ipairs(ids) do
  local jstate = redis.call('HGET', jkey(jid), 'state')
  if not jstate then
    redis.call('ZREM', P .. ':deadlines', jid)
    out[#out + 1] = 'missing'
  elseif TERMINAL[jstate] then
    out[#out + 1] = jstate
  else
    drop_pending(jid)
    local msg = string.gsub(reason, '{job}', jid)
    msg = string.gsub(msg, '{limit}', redis.call('HGET', jkey(jid), 'job_timeout') or '')
    finish_job(jid, state, now, cjson.encode({message = msg}))
    out[#out + 1] = 'ok'
  end
end
return out
