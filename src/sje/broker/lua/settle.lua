-- ARGV: P, task ids...
-- Removes published outbox entries, but only those still hidden by their claim (or their
-- submit's hold): an entry visible again was put back meanwhile (the task was released,
-- say, after the claim) and must be published again.
local now = now_ms()
local key = P .. ':outbox'
local removed = 0
for i = 2, #ARGV do
  local at = redis.call('ZSCORE', key, ARGV[i])
  if at and tonumber(at) > now then
    removed = removed + redis.call('ZREM', key, ARGV[i])
  end
end
return removed
