-- ARGV: P, n
-- Drops up to n ids of expired jobs (result-ttl passed) from the job index P:jobs, walking it
-- a slice per call from a cursor, so the index stays as large as the jobs that still exist.
local n = tonumber(ARGV[2])
local index, cursor = P .. ':jobs', P .. ':jobs:cursor'
local start = tonumber(redis.call('GET', cursor) or '0')
if start >= redis.call('ZCARD', index) then start = 0 end
local ids = redis.call('ZRANGE', index, start, start + n - 1)
local gone = {}
for _, jid in ipairs(ids) do
  if redis.call('EXISTS', jkey(jid)) == 0 then gone[#gone + 1] = jid end
end
if #gone > 0 then redis.call('ZREM', index, unpack(gone)) end
redis.call('SET', cursor, (#ids < n) and 0 or (start + #ids - #gone))
return #gone
