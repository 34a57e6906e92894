-- Delivered: events leave the queue, each fenced by its own claim, and the delivery log
-- records each attempt (in the same round trip).
-- KEYS: [1] due zset, [2] body hash, [3] meta hash, [4] the endpoint's recent attempts
-- ARGV: [1] endpoint id, [2] LOG_EVENT_PREFIX, then n × (event id, token held, the
--       attempt's record ('' = none))
-- Returns: per event, 1 done or 0 the claim was lost (that event untouched)
--!include log.lua
local done, entries = {}, {}
for j = 3, #ARGV, 3 do
  local id = ARGV[j]
  local score = redis.call('ZSCORE', KEYS[1], id)
  if score and tonumber(score) == tonumber(ARGV[j + 1]) then
    redis.call('ZREM', KEYS[1], id)
    redis.call('HDEL', KEYS[2], id)
    redis.call('HDEL', KEYS[3], id)
    if ARGV[j + 2] ~= '' then
      entries[#entries + 1] = attempt(ARGV[2] .. id, ARGV[1], id, 'delivered', ARGV[j + 2])
    end
    done[#done + 1] = 1
  else
    done[#done + 1] = 0
  end
end
recent(KEYS[4], entries)
return done
