-- Move a held lease: extend it, release it with a new due time, or hand it back.
-- KEYS: [1] the schedule's due zset, [2] the member's state hash
-- ARGV: [1] member, [2] token held, [3] new score as lease.lua's move reads it (the next due
--       time, or -n: the lease n ms longer), then (state field, value) pairs to write with it
-- Returns: the score written (an extended lease's new token), or -1: the lease was lost
--          (nothing written)
--!include fence.lua
--!include lease.lua
if not held(KEYS[1], ARGV[1], ARGV[2]) then return -1 end
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
return move(KEYS[1], ARGV[1], ARGV[3], KEYS[2])
