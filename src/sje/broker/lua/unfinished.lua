-- ARGV: P, limit
-- Read-only: queued, running and retrying tasks of unfinished jobs (P:active), summed by queue.
-- Returns {queue, queued, running, retrying, ...}.
local ids = redis.call('ZRANGE', P .. ':active', 0, tonumber(ARGV[2]) - 1)
local sums, order = {}, {}
for _, jid in ipairs(ids) do
  local f = redis.call('HMGET', jkey(jid), 'queue', 'c_queued', 'c_running', 'c_retrying')
  if f[1] then
    local s = sums[f[1]]
    if not s then
      s = {0, 0, 0}
      sums[f[1]] = s
      order[#order + 1] = f[1]
    end
    for i = 1, 3 do s[i] = s[i] + (tonumber(f[i + 1]) or 0) end
  end
end
local out = {}
for _, q in ipairs(order) do
  local s = sums[q]
  out[#out + 1] = q
  out[#out + 1] = s[1]
  out[#out + 1] = s[2]
  out[#out + 1] = s[3]
end
return out
