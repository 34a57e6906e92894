-- Move a claimed event: extend its claim, or schedule its next attempt with what the
-- attempts so far left behind.
-- KEYS: [1] due zset, [2] meta hash
-- ARGV: [1] event id, [2] token held, [3] new score as lease.lua's move reads it (the next
--       attempt's due time, or -n: the claim n ms longer), [4] meta JSON ('' = leave it)
-- Returns: the score written (an extended claim's new token), or -1: the claim was lost
--          (nothing written)
--!include fence.lua
--!include lease.lua
if not held(KEYS[1], ARGV[1], ARGV[2]) then return -1 end
if ARGV[4] ~= '' then redis.call('HSET', KEYS[2], ARGV[1], ARGV[4]) end
return move(KEYS[1], ARGV[1], ARGV[3])
