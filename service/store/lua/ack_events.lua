-- Delivered: events leave the queue, each fenced by its own claim.
-- KEYS: [1] due zset, [2] body hash, [3] meta hash
-- ARGV: n × (event id, token held)
-- Returns: per event, 1 done or 0 the claim was lost (that event untouched)
local done = {}
for j = 1, #ARGV, 2 do
  local id = ARGV[j]
  local score = redis.call('ZSCORE', KEYS[1], id)
  if score and tonumber(score) == tonumber(ARGV[j + 1]) then
    redis.call('ZREM', KEYS[1], id)
    redis.call('HDEL', KEYS[2], id)
    redis.call('HDEL', KEYS[3], id)
    done[#done + 1] = 1
  else
    done[#done + 1] = 0
  end
end
return done
