-- scalekit response cache: invalidate one tag (sent as EVAL inside a pipeline).
--
-- KEYS[1]  the tag's version counter
-- ARGV[1]  a fresh random epoch; ARGV[2] the lifetime in ms of a counter created here
-- An existing counter is incremented (its TTL kept); an absent one (never used, expired,
-- evicted, lost in a failover) is created with the random epoch instead of INCR's 1, which
-- an earlier life of the counter may already have held.

if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('INCR', KEYS[1])
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return ARGV[1]
