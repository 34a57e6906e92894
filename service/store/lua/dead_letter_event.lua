-- A claimed event whose retries are spent goes to the dead letters (its body is kept), and
-- the delivery log records its last attempt.
-- KEYS: [1] due zset, [2] dead zset, [3] meta hash, [4] the endpoint's recent attempts
-- ARGV: [1] event id, [2] token held, [3] now ms, [4] meta JSON, [5] endpoint id,
--       [6] LOG_EVENT_PREFIX, [7] the attempt's record ('' = none)
-- Returns: 1 done, 0 the claim was lost (nothing written)
--!include fence.lua
--!include log.lua
if not held(KEYS[1], ARGV[1], ARGV[2]) then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
if ARGV[7] ~= '' then
  recent(KEYS[4], {attempt(ARGV[6] .. ARGV[1], ARGV[5], ARGV[1], 'dead', ARGV[7])})
end
return 1
