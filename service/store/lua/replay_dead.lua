-- Dead letters queued again with the same ids, atomically (a crash mid-replay loses none);
-- the delivery log shows them queued.
-- KEYS: [1] due zset, [2] dead zset, [3] meta hash
-- ARGV: [1] now ms (their due time), [2] LOG_EVENT_PREFIX, [3] endpoint id, then the event
--       ids (none: every dead letter)
-- Returns: how many were queued again
--!include log.lua
local ids = {}
if #ARGV > 3 then
  for j = 4, #ARGV do ids[#ids + 1] = ARGV[j] end
else
  ids = redis.call('ZRANGE', KEYS[2], 0, -1)
end
local n = 0
for _, id in ipairs(ids) do
  if redis.call('ZREM', KEYS[2], id) == 1 then
    redis.call('ZADD', KEYS[1], ARGV[1], id)
    redis.call('HDEL', KEYS[3], id)
    requeued(ARGV[2] .. id, ARGV[3])
    n = n + 1
  end
end
return n
