-- Redelivery: an endpoint's logged events of a time range that were delivered or
-- dead-lettered are queued again with the same ids (the bodies as sent), atomically.
-- KEYS: [1] the endpoint's log index, [2] due zset, [3] body hash, [4] meta hash,
--       [5] dead zset
-- ARGV: [1] LOG_EVENT_PREFIX, [2] endpoint id, [3] since ms, [4] until ms (both included),
--       [5] outcome: delivered, dead or any (either), [6] now ms (their due time),
--       [7] a type never sent again (webhook.test)
-- Returns: how many were queued again
--!include log.lua
local field = 'o:' .. ARGV[2]
local n = 0
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[3], ARGV[4])) do
  local hash = ARGV[1] .. id
  local found = redis.call('HMGET', hash, field, 'h', 'b', 'd', 't')
  local outcome, attempts
  if found[1] then outcome, attempts = string.match(found[1], '^(%a+) (%d+)$') end
  local body = found[3]
  if not body and found[4] and found[2] then
    body = body_stored(id, found[2], found[5], found[4])
  end
  if outcome and outcome ~= 'queued' and string.match(found[2] or '', '^[^\31]*') ~= ARGV[7]
      and body
      and (ARGV[5] == 'any' or ARGV[5] == outcome)
      and not redis.call('ZSCORE', KEYS[2], id) then
    if outcome == 'dead' then -- its body is still queued; its retries start afresh
      redis.call('ZREM', KEYS[5], id)
      redis.call('HDEL', KEYS[4], id)
    else -- delivered: the queue let it go, its body is the log's (the same bytes once
      -- put back together: store/log_body.py, queued_body)
      redis.call('HSET', KEYS[3], id, body)
    end
    redis.call('ZADD', KEYS[2], ARGV[6], id)
    redis.call('HSET', hash, field, 'queued ' .. attempts)
    n = n + 1
  end
end
return n
