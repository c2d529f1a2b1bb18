-- scalekit response cache: read tag version counters of one slot (Cluster: the tags that
-- do not share the entry's slot), creating absent ones as lookup.lua does.
--
-- KEYS[1..] version counters, all in one slot
-- ARGV[1]  a fresh random epoch for absent counters; ARGV[2] their lifetime in ms
-- Returns the versions, in KEYS order.

local versions = {}
for i = 1, #KEYS do
  local version = redis.call('GET', KEYS[i])
  if not version then
    version = ARGV[1]
    redis.call('SET', KEYS[i], version, 'PX', ARGV[2])
  end
  versions[i] = version
end
return versions
