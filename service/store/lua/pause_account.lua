-- An account its provider asked to wait (a 429 with provider_errors) waits in every
-- process, fenced by the lease of the read that was asked: a read whose account was
-- forgotten meanwhile pauses nothing. Never shortens a pause; pauses over are dropped.
-- KEYS: [1] the read's schedule zset, [2] paused accounts zset
-- ARGV: [1] the read's member, [2] token held, [3] account id, [4] until (ms),
--       [5] now (ms), [6] the zset's TTL (s)
-- Returns: 1 written, 0 the lease was lost (nothing written)
--!include fence.lua
if not held(KEYS[1], ARGV[1], ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[2], 'GT', ARGV[4], ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[6])
return 1
