-- ARGV: P, task_id, worker_id, result_json, lease_ms, n, queue...
-- One round trip for the common case: store a result, then fetch the slot's next task(s).
-- Returns {status, header_json, payload, ...}.
local queues = {}
for i = 7, #ARGV do queues[#queues + 1] = ARGV[i] end
local status = complete_task(ARGV[2], ARGV[3], ARGV[4])
local out = {}
if tonumber(ARGV[6]) > 0 then out = fetch_tasks(ARGV[3], tonumber(ARGV[5]), tonumber(ARGV[6]), queues) end
table.insert(out, 1, status)
return out
