-- Claim an endpoint's due events, with what a sender needs of each.
-- KEYS: [1] due zset (event id → due ms; a claimed event's score is its lease, see
--       lease.lua), [2] body hash, [3] meta hash
-- ARGV: [1] now ms on the caller's clock (what is due by then), [2] the lease's length ms
--       (on Redis' clock), [3] at most this many
-- Returns: {the claims' fencing token, event id, body, meta or false, ...}
-- Each claim removes the entry and adds it back with the lease: Redis out of memory
-- (noeviction) refuses a script's writes that may add data only until its first write, and a
-- removal is allowed; so events are still claimed, sent and acknowledged (which frees memory)
-- when Redis takes nothing new. The pair takes no more memory than the entry did.
--!include lease.lua
local due = claimable(KEYS[1], ARGV[1], ARGV[3])
local token = lease_token(ARGV[2])
local out = {token}
for j = 1, #due, 2 do
  local id = due[j]
  local body = redis.call('HGET', KEYS[2], id)
  if body then
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZADD', KEYS[1], as_score(token), id)
    out[#out + 1] = id
    out[#out + 1] = body
    out[#out + 1] = redis.call('HGET', KEYS[3], id) or false
  else
    -- a queue entry without a body can never be sent; drop it instead of looping on it
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
