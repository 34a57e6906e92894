-- Claim what is due in a zset of due times (users to poll, overdue checks to run).
-- KEYS: [1] the zset (member → due ms; a claimed member's score is its lease expiry)
-- ARGV: [1] now ms, [2] lease expiry ms (the claims' fencing token), [3] at most this many
-- Returns: {member, its due ms, member, its due ms, ...}, each now leased until ARGV[2]
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0,
  tonumber(ARGV[3]))
for j = 1, #due, 2 do redis.call('ZADD', KEYS[1], ARGV[2], due[j]) end
return due
