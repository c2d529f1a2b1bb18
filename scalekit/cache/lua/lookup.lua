-- scalekit response cache: read an entry and its tags' versions; maybe take the fill lock.
--
-- KEYS[1]  the base key: the entry, or a marker naming the response's Vary headers ('m')
-- KEYS[2]  the variant key (the entry when the base holds a marker; else KEYS[1])
-- KEYS[3]  the fill lock
-- KEYS[4..] the version counters of the tags in this slot (others are read apart)
-- ARGV[1]  now, in ms (the caller's clock)
-- ARGV[2]  a lock token, or '' to take no lock
-- ARGV[3]  the lock's lifetime in ms
-- ARGV[4]  the Vary names the caller assumed ('' for none)
-- ARGV[5]  a fresh random epoch: an absent counter is created holding it
-- ARGV[6]  the lifetime in ms of a counter created here
-- Returns {data, fresh_until_ms, entry_versions, marker, current_versions, final, token}.
-- A key holding something else than an entry (another type, missing fields) reads as no
-- entry: a foreign or corrupt value is a miss, never an error.

local function read(key)
  local found = redis.pcall('HMGET', key, 'd', 't', 'v', 'm')
  if type(found) ~= 'table' or found.err then
    return {false, false, false, false}
  end
  return found
end

local base = read(KEYS[1])
local entry = base
local final = 1
if base[4] then
  if base[4] == ARGV[4] then
    entry = read(KEYS[2])
  else
    entry = {false, false, false, false}
    final = 0
  end
end
-- An absent counter (never used, expired, evicted, lost in a failover) never reads as a
-- value it held before: it is created with a random epoch, so every entry stored under
-- an earlier life of the counter mismatches.
local versions = {}
for i = 4, #KEYS do
  local version = redis.call('GET', KEYS[i])
  if not version then
    version = ARGV[5]
    redis.call('SET', KEYS[i], version, 'PX', ARGV[6])
  end
  versions[#versions + 1] = version
end
local current = table.concat(versions, ',')
local token = false
if ARGV[2] ~= '' and final == 1 then
  local same = entry[3] and (entry[3] == current or
    (current ~= '' and string.sub(entry[3], 1, #current + 1) == current .. ','))
  local fresh_until = tonumber(entry[2])
  local fresh = entry[1] and same and fresh_until and fresh_until >= tonumber(ARGV[1])
  if not fresh and redis.call('SET', KEYS[3], ARGV[2], 'NX', 'PX', ARGV[3]) then
    token = ARGV[2]
  end
end
return {entry[1], entry[2], entry[3], base[4], current, final, token}
