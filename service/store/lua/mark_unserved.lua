-- A resource an account's provider does not serve is skipped until a time, in every
-- process, fenced by the lease of the read it failed: a read whose account was forgotten
-- meanwhile leaves no mark of it. Never shortens a mark.
-- KEYS: [1] the read's schedule zset, [2] unserved resources zset
-- ARGV: [1] the read's member, [2] token held, [3] the unserved member, [4] until (ms)
-- Returns: 1 marked until then (or later than before), 0 marked until then or later
--          already, or the lease was lost (nothing written)
--!include fence.lua
if not held(KEYS[1], ARGV[1], ARGV[2]) then return 0 end
return redis.call('ZADD', KEYS[2], 'GT', 'CH', ARGV[4], ARGV[3])
