-- Move a held lease: extend it, release it with a new due time, or hand it back.
-- KEYS: [1] the schedule's due zset, [2] the member's state hash
-- ARGV: [1] member, [2] token held, [3] new score (a later lease expiry, or the next due
--       time), then (state field, value) pairs to write with it
-- Returns: 1 moved, 0 the lease was lost (nothing written)
--!include fence.lua
if not held(KEYS[1], ARGV[1], ARGV[2]) then return 0 end
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
