-- Keep running work's leases, all of one schedule or queue in one call (a process's
-- heartbeat, not a timer per lease): each lease still held runs until ARGV[1] ms from now,
-- on Redis' clock, unless it already runs longer (it is never shortened).
-- KEYS: [1] the zset (a schedule, or an endpoint's due zset; see lease.lua)
-- ARGV: [1] the lease's new length ms, then (member, token held) pairs
-- Returns: for each pair, the lease's token now (a new one when it was extended), or -1:
--          the lease was lost (nothing written)
-- Removed and added back, as move does, so it still goes through when Redis is out of memory.
--!include fence.lua
--!include lease.lua
local token = lease_token(ARGV[1])
local out = {}
for i = 2, #ARGV, 2 do
  local member, held_token = ARGV[i], tonumber(ARGV[i + 1])
  if not held(KEYS[1], member, held_token) then
    out[#out + 1] = -1
  elseif held_token >= token then
    out[#out + 1] = held_token
  else
    redis.call('ZREM', KEYS[1], member)
    redis.call('ZADD', KEYS[1], as_score(token), member)
    out[#out + 1] = token
  end
end
return out
