-- ARGV: P, wid, lease_ms, task ids...
-- Leases the named tasks that are still in their queue (a RabbitMQ delivery names them);
-- any other id (running, done, retrying, of an ended or unknown job) was a duplicate
-- delivery and is skipped. Returns triples as fetch does.
local wid, lease_ms = ARGV[2], tonumber(ARGV[3])
local now = now_ms()
local out, jobs, stats = {}, {}, {}
for i = 4, #ARGV do
  local member = ARGV[i]
  if is_task_id(member) then
    local jid, idx = split_id(member)
    local job = job_fields(jobs, jid)
    if job[1] and not TERMINAL[job[1]] and redis.call('ZREM', qkey(job[12]), member) == 1 then
      lease_task(wid, lease_ms, member, jid, idx, job, job[12], now, stats, out)
    end
  end
end
flush_stats(stats)
return out
