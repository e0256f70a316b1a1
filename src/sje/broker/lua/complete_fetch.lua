-- ARGV: P, worker_id, lease_ms, n, k, task_id_1, result_1, ..., task_id_k, result_k, queue...
-- One round trip for a batch: store k results, then fetch up to n tasks for the freed slots.
-- Returns {status_1, ..., status_k, task_id, header_json, payload, ...}.
local wid, k = ARGV[2], tonumber(ARGV[5])
local members, results = {}, {}
for i = 0, k - 1 do
  members[i + 1] = ARGV[6 + 2 * i]
  results[i + 1] = ARGV[7 + 2 * i]
end
local out = complete_tasks(wid, members, results)
local n = tonumber(ARGV[4])
if n > 0 then
  local queues = {}
  for i = 6 + 2 * k, #ARGV do queues[#queues + 1] = ARGV[i] end
  for _, v in ipairs(fetch_tasks(wid, tonumber(ARGV[3]), n, queues)) do out[#out + 1] = v end
end
return out
