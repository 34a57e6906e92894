-- Move a claimed event: extend its claim, or schedule its next attempt with what the
-- attempts so far left behind (and the delivery log records the attempt just made).
-- KEYS: [1] due zset, [2] meta hash, [3] the endpoint's recent attempts
-- ARGV: [1] event id, [2] token held, [3] new score as lease.lua's move reads it (the next
--       attempt's due time, or -n: the claim n ms longer), [4] meta JSON ('' = leave it),
--       [5] endpoint id, [6] LOG_EVENT_PREFIX, [7] the attempt's record ('' = no attempt: a
--       claim extended or handed back)
-- Returns: the score written (an extended claim's new token), or -1: the claim was lost
--          (nothing written)
--!include fence.lua
--!include lease.lua
--!include log.lua
if not held(KEYS[1], ARGV[1], ARGV[2]) then return -1 end
local score = move(KEYS[1], ARGV[1], ARGV[3])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[2], ARGV[1], ARGV[4]) end
if ARGV[7] ~= '' then
  recent(KEYS[3], {attempt(ARGV[6] .. ARGV[1], ARGV[5], ARGV[1], 'queued', ARGV[7])})
end
return score
