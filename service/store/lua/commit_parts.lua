-- Library part (included, not run alone): the parts of a commit read from ARGV in turn.
-- Each takes the index of its first argument and returns the index after its last.
-- hset_pairs(hash, i): ARGV[i] = n, then n × (field, value) written to `hash`
local function hset_pairs(hash, i)
  local n = tonumber(ARGV[i]); i = i + 1
  for _ = 1, n do redis.call('HSET', hash, ARGV[i], ARGV[i + 1]); i = i + 2 end
  return i
end
-- watch(zset, i): ARGV[i] = n, n × (overdue member, due ms) to watch in `zset`,
-- then n, n × overdue member to stop watching
local function watch(zset, i)
  local n = tonumber(ARGV[i]); i = i + 1
  for _ = 1, n do redis.call('ZADD', zset, ARGV[i + 1], ARGV[i]); i = i + 2 end
  n = tonumber(ARGV[i]); i = i + 1
  for _ = 1, n do redis.call('ZREM', zset, ARGV[i]); i = i + 1 end
  return i
end
-- answered(failing, blocked, account): the read this commit ends succeeded, so its account's
-- run of failing reads (FAILING_ACCOUNTS) and its back-off (BLOCKED_ACCOUNTS) end, whichever
-- process wrote them, even while the read was in flight; '' = not a success (a flush, a read
-- that only waited)
local function answered(failing, blocked, account)
  if account ~= '' then
    redis.call('HDEL', failing, account)
    redis.call('HDEL', blocked, account)
  end
end
