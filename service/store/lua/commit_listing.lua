-- One user listing's commit, all or nothing: the users it added and dropped (a dropped
-- user's schedule entry, state and snapshots are forgotten), the listing's state and its
-- next due time.
-- KEYS: [1] discovery due zset, [2] discovery state hash, [3] the account's listed user set,
--       [4] poll due zset, [5] user weights zset, [6] tracked users' version counter,
--       then per user dropped: (snapshots, user state hash, 0.1's hash)
-- ARGV: [1] account member, [2] token held, [3] next due time (ms ≥ 0, as lease.lua's move
--       reads it),
--       then the listing state as hset_pairs reads it,
--       then n, n × user id to add, then n, n × (user id, its poll member) to drop
-- Returns: 1 committed, 0 the lease was lost (nothing written)
--!include fence.lua
--!include lease.lua
--!include commit_parts.lua
if not held(KEYS[1], ARGV[1], ARGV[2]) then return 0 end
local i = hset_pairs(KEYS[2], 4)
local n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do redis.call('SADD', KEYS[3], ARGV[i]); i = i + 1 end
if n > 0 then redis.call('INCR', KEYS[6]) end
n = tonumber(ARGV[i]); i = i + 1
if n > 0 then redis.call('INCR', KEYS[6]) end
for u = 0, n - 1 do
  redis.call('SREM', KEYS[3], ARGV[i])
  redis.call('ZREM', KEYS[4], ARGV[i + 1])
  redis.call('ZREM', KEYS[5], ARGV[i + 1])
  redis.call('DEL', KEYS[7 + 3 * u], KEYS[8 + 3 * u], KEYS[9 + 3 * u])
  i = i + 2
end
move(KEYS[1], ARGV[1], ARGV[3], KEYS[2])
return 1
