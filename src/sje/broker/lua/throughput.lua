-- ARGV: P, first_slot, count, queue_from, queue_to
-- Read-only: tasks succeeded and failed per throughput slot (P:tp:<slot>) for count slots from
-- first_slot on, and per queue their sums over the slots queue_from .. queue_to.
-- Returns {{s1, f1, s2, f2, ...}, {queue, s, f, ...}}.
local first, count = tonumber(ARGV[2]), tonumber(ARGV[3])
local qfrom, qto = tonumber(ARGV[4]), tonumber(ARGV[5])
local last = first + count - 1
local totals, sums, order = {}, {}, {}
for slot = math.min(first, qfrom), math.max(last, qto) do
  local row = redis.call('HGETALL', P .. ':tp:' .. slot)
  local s, f = 0, 0
  for i = 1, #row, 2 do
    local field, n = row[i], tonumber(row[i + 1])
    local sep = string.find(field, '|[sf]$')
    local queue, kind = string.sub(field, 1, sep - 1), string.sub(field, sep + 1)
    if kind == 's' then s = s + n else f = f + n end
    if slot >= qfrom and slot <= qto then
      local q = sums[queue]
      if not q then
        q = {0, 0}
        sums[queue] = q
        order[#order + 1] = queue
      end
      if kind == 's' then q[1] = q[1] + n else q[2] = q[2] + n end
    end
  end
  if slot >= first and slot <= last then
    totals[#totals + 1] = s
    totals[#totals + 1] = f
  end
end
local by_queue = {}
for _, queue in ipairs(order) do
  by_queue[#by_queue + 1] = queue
  by_queue[#by_queue + 1] = sums[queue][1]
  by_queue[#by_queue + 1] = sums[queue][2]
end
return {totals, by_queue}
