-- A claimed event whose retries are spent goes to the dead letters (its body is kept).
-- KEYS: [1] due zset, [2] dead zset, [3] meta hash
-- ARGV: [1] event id, [2] token held, [3] now ms, [4] meta JSON
-- Returns: 1 done, 0 the claim was lost (nothing written)
--!include fence.lua
if not held(KEYS[1], ARGV[1], ARGV[2]) then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
return 1
