-- One poll's commit, all or nothing: snapshots, user state, overdue watches, the outgoing
-- events and the user's next score (its extended lease, or its next due time).
-- KEYS: [1] poll due zset, [2] snapshots, [3] user state hash, [4] overdue zset,
--       [5] 0.1's snapshot hash (deleted once snapshots are written),
--       [6..] (due zset, body hash) per endpoint, as enqueue.lua reads them
-- ARGV: [1] member, [2] token held ('' = unfenced), [3] new score ('' = leave it),
--       [4] snapshots ('' = unchanged),
--       [5] n, n × (state field, value),
--       then n, n × (overdue member, due ms) to watch,
--       then n, n × overdue member to stop watching,
--       then the events, as enqueue.lua reads them
-- Returns: 1 committed, 0 the lease was lost (nothing written)
--!include fence.lua
--!include enqueue.lua
if ARGV[2] ~= '' and not held(KEYS[1], ARGV[1], ARGV[2]) then return 0 end
if ARGV[4] ~= '' then
  redis.call('SET', KEYS[2], ARGV[4])
  redis.call('DEL', KEYS[5])
end
local i = 5
local n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1]); i = i + 2 end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do redis.call('ZADD', KEYS[4], ARGV[i + 1], ARGV[i]); i = i + 2 end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do redis.call('ZREM', KEYS[4], ARGV[i]); i = i + 1 end
enqueue(6, i)
if ARGV[3] ~= '' then redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1]) end
return 1
