-- ARGV: P, hi, lo, offset, limit, budget, state, name (lower case), id_prefix
-- Read-only: scans the job index newest first (created between lo and hi), from offset, looking
-- at up to budget ids; keeps those in state, whose name contains name (ASCII case-insensitive)
-- and whose id starts with id_prefix (empty: any). Returns {next offset or -1 at the end, id...}
-- with at most limit ids.
local hi, lo = ARGV[2], ARGV[3]
local offset, limit, budget = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local state, name, prefix = ARGV[7], ARGV[8], ARGV[9]
local out = {0}
local scanned = 0
while scanned < budget do
  local n = math.min(500, budget - scanned)
  local ids = redis.call('ZREVRANGEBYSCORE', P .. ':jobs', hi, lo, 'LIMIT', offset + scanned, n)
  for _, jid in ipairs(ids) do
    scanned = scanned + 1
    local ok = prefix == '' or string.sub(jid, 1, #prefix) == prefix
    if ok and (state ~= '' or name ~= '') then
      local f = redis.call('HMGET', jkey(jid), 'state', 'name')
      ok = (state == '' or f[1] == state) and
        (name == '' or string.find(string.lower(f[2] or ''), name, 1, true) ~= nil)
    end
    if ok then
      out[#out + 1] = jid
      if #out - 1 == limit then
        out[1] = offset + scanned
        return out
      end
    end
  end
  if #ids < n then
    out[1] = -1
    return out
  end
end
out[1] = offset + scanned
return out
