-- Move a claimed event: extend its claim, or schedule its next attempt with what the
-- attempts so far left behind (and the delivery log records the attempt just made).
-- KEYS: [1] due zset, [2] meta hash, [3] the endpoint's recent attempts, [4] the event's
--       log hash
-- ARGV: [1] event id, [2] token held, [3] new score (a later claim expiry, or the next
--       attempt's due time), [4] meta JSON ('' = leave it), [5] endpoint id, [6] the
--       attempt's record ('' = no attempt: a claim extended or handed back)
-- Returns: 1 moved, 0 the claim was lost (nothing written)
--!include fence.lua
--!include log.lua
if not held(KEYS[1], ARGV[1], ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[2], ARGV[1], ARGV[4]) end
if ARGV[6] ~= '' then
  recent(KEYS[3], {attempt(KEYS[4], ARGV[5], ARGV[1], 'queued', ARGV[6])})
end
return 1
