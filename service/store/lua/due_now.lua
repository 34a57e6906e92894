-- Read a scheduled member at once (poll now). One being read (leased) is left to its read,
-- which would be wasted if its lease were broken: its state hash gets due_now, and the
-- read's end (lease.lua's move) makes it due at once instead of an interval later.
-- KEYS: [1] the schedule's due zset, [2] the member's state hash
-- ARGV: [1] member
-- Returns: 1 due now, or as soon as its running read ends; 0 not scheduled (nothing written)
--!include lease.lua
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score then return 0 end
if tonumber(score) >= LEASED then
  redis.call('HSET', KEYS[2], 'due_now', '1')
else
  redis.call('ZADD', KEYS[1], 0, ARGV[1])
end
return 1
