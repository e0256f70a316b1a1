-- ARGV: P, worker_id, lease_ms, n, queue...
local queues = {}
for i = 5, #ARGV do queues[#queues + 1] = ARGV[i] end
return fetch_tasks(ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), queues)
