-- A discovered account whose first read answered that it is no LMS account is not read
-- until a time, in every process; only while it is still linked: a read in flight when a
-- listing unlinked it (and queued it to be forgotten) must not leave a mark nobody clears.
-- KEYS: [1] linked accounts hash, [2] not-LMS accounts zset, [3] linked version counter
-- ARGV: [1] account id, [2] when (ms) it is tried again
-- Returns: 1 marked until then (or later than before), 0 marked until then or later
--          already, -1 no longer linked (nothing written)
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return -1 end
local added = redis.call('ZADD', KEYS[2], 'GT', 'CH', ARGV[2], ARGV[1])
redis.call('INCR', KEYS[3])
return added
