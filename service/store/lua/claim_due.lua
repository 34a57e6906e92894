-- Claim what is due in a schedule (users to poll, feeds, listings, overdue checks).
-- KEYS: [1] the zset (member → due ms; a claimed member's score is its lease, see lease.lua)
-- ARGV: [1] now ms on the caller's clock (what is due by then), [2] the lease's length ms
--       (on Redis' clock), [3] at most this many
-- Returns: {the claims' fencing token, member, its due ms, member, its due ms, ...}; a member
--          whose lease ran out is reported as due at ARGV[1]
--!include lease.lua
local due = claimable(KEYS[1], ARGV[1], ARGV[3])
local token = lease_token(ARGV[2])
for j = 1, #due, 2 do redis.call('ZADD', KEYS[1], as_score(token), due[j]) end
table.insert(due, 1, token)
return due
