-- scalekit response cache: store an entry unless a tag was invalidated meanwhile.
--
-- KEYS[1]  the base key; KEYS[2] the variant key (= KEYS[1] without Vary); KEYS[3] the lock
-- KEYS[4..] the version counters of the tags in this slot
-- ARGV[1]  the encoded entry
-- ARGV[2]  fresh until, in ms
-- ARGV[3]  the keys' lifetime in ms (fresh plus stale)
-- ARGV[4]  the versions the entry was computed under (read before the app ran)
-- ARGV[5]  the lock token to release, or ''
-- ARGV[6]  the Vary names to mark at the base key, or '' when the entry lives there
-- Returns 1 when stored, 0 when a tag's version moved on (the entry would be stale) or its
-- counter vanished (an absent counter matches no versions). A counter that would expire
-- before the entry is given the entry's lifetime (a persistent counter stays persistent).

if ARGV[5] ~= '' and redis.call('GET', KEYS[3]) == ARGV[5] then
  redis.call('DEL', KEYS[3])
end
local versions = {}
for i = 4, #KEYS do
  local version = redis.call('GET', KEYS[i])
  if not version then
    return 0
  end
  versions[#versions + 1] = version
end
local current = table.concat(versions, ',')
if not (ARGV[4] == current or
    (current ~= '' and string.sub(ARGV[4], 1, #current + 1) == current .. ',')) then
  return 0
end
for i = 4, #KEYS do
  local ttl = redis.call('PTTL', KEYS[i])
  if ttl >= 0 and ttl < tonumber(ARGV[3]) then
    redis.call('PEXPIRE', KEYS[i], ARGV[3])
  end
end
if ARGV[6] ~= '' then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'm', ARGV[6])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
-- Whatever was there (an older entry, a marker, a foreign value) is replaced whole.
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'd', ARGV[1], 't', ARGV[2], 'v', ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
