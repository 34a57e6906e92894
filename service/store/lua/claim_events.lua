-- Claim an endpoint's due events, with what a sender needs of each.
-- KEYS: [1] due zset (event id → due ms; a claimed event's score is its lease expiry),
--       [2] body hash, [3] meta hash
-- ARGV: [1] now ms, [2] lease expiry ms (the claims' fencing token), [3] at most this many
-- Returns: {event id, body, meta or false, ...}, each now leased until ARGV[2]
-- Each claim removes the entry and adds it back with the lease: Redis out of memory
-- (noeviction) refuses a script's writes that may add data only until its first write, and a
-- removal is allowed; so events are still claimed, sent and acknowledged (which frees memory)
-- when Redis takes nothing new. The pair takes no more memory than the entry did.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(due) do
  local body = redis.call('HGET', KEYS[2], id)
  if body then
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZADD', KEYS[1], ARGV[2], id)
    out[#out + 1] = id
    out[#out + 1] = body
    out[#out + 1] = redis.call('HGET', KEYS[3], id) or false
  else
    -- a queue entry without a body can never be sent; drop it instead of looping on it
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
