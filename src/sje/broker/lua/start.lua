-- ARGV: P, wid, lease_ms, task ids...
-- Leases the named tasks that are still in their queue (a RabbitMQ delivery names them);
-- any other id (running, done, retrying, of an ended or unknown job) was a duplicate
-- delivery and is skipped. Returns triples as fetch does.
local wid, lease_ms = ARGV[2], tonumber(ARGV[3])
local now = now_ms()
local out, jobs, stats, groups, order, got = {}, {}, {}, {}, {}, 0
for i = 4, #ARGV do
  local member = ARGV[i]
  if is_task_id(member) then
    local jid, idx = split_id(member)
    local job = job_fields(jobs, jid)
    if job[1] and not TERMINAL[job[1]] and redis.call('ZREM', qkey(job[12]), member) == 1 then
      got = got + 1
      group_add(groups, order, jid, idx, member, got)
    end
  end
end
for _, jid in ipairs(order) do
  lease_group(wid, lease_ms, jid, groups[jid], jobs[jid], jobs[jid][12], now, stats, out)
end
flush_stats(stats)
return out
