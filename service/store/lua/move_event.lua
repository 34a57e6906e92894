-- Move a claimed event: extend its claim, or schedule its next attempt with what the
-- attempts so far left behind.
-- KEYS: [1] due zset, [2] meta hash
-- ARGV: [1] event id, [2] token held, [3] new score (a later claim expiry, or the next
--       attempt's due time), [4] meta JSON ('' = leave it)
-- Returns: 1 moved, 0 the claim was lost (nothing written)
-- Removed and added back, as claim_events.lua does: a retry scheduled and a claim extended
-- still go through while Redis is out of memory (what that may add, an event's meta of a few
-- hundred bytes, is bounded by the events queued).
--!include fence.lua
if not held(KEYS[1], ARGV[1], ARGV[2]) then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[2], ARGV[1], ARGV[4]) end
return 1
