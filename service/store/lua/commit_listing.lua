-- One user listing's commit, all or nothing: the users it added (each with when it was
-- found) and dropped (a dropped user's schedule entry, state and snapshots are
-- forgotten), the listing's state and its next due time.
-- KEYS: [1] discovery due zset, [2] discovery state hash, [3] the account's listed user set,
--       [4] poll due zset, [5] user weights zset, [6] tracked users' version counter,
--       [7] failing accounts hash, [8] backed-off accounts hash,
--       then per user added: its user state hash,
--       then per user dropped: (snapshots, user state hash, 0.1's hash, completion snapshots)
-- ARGV: [1] account member, [2] token held, [3] next due time (ms ≥ 0, as lease.lua's move
--       reads it), [4] when the added users were found (ms, the upstream's clock),
--       [5] the account as answered reads it (a listing commits only when it succeeded),
--       then the listing state as hset_pairs reads it,
--       then n, n × user id to add, then n, n × (user id, its poll member) to drop
-- Returns: 1 committed, 0 the lease was lost (nothing written)
--!include fence.lua
--!include lease.lua
--!include commit_parts.lua
if not held(KEYS[1], ARGV[1], ARGV[2]) then return 0 end
answered(KEYS[7], KEYS[8], ARGV[5])
local i = hset_pairs(KEYS[2], 6)
local n = tonumber(ARGV[i]); i = i + 1
for k = 1, n do
  redis.call('SADD', KEYS[3], ARGV[i]); i = i + 1
  -- only a user not baselined yet: a baselined one (also in the config) has nothing to absorb
  if redis.call('HEXISTS', KEYS[8 + k], 'baselined') == 0 then
    redis.call('HSET', KEYS[8 + k], 'found', ARGV[4])
  end
end
if n > 0 then redis.call('INCR', KEYS[6]) end
local drops = 9 + n
n = tonumber(ARGV[i]); i = i + 1
if n > 0 then redis.call('INCR', KEYS[6]) end
for u = 0, n - 1 do
  redis.call('SREM', KEYS[3], ARGV[i])
  redis.call('ZREM', KEYS[4], ARGV[i + 1])
  redis.call('ZREM', KEYS[5], ARGV[i + 1])
  local k = drops + 4 * u
  redis.call('DEL', KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3])
  i = i + 2
end
move(KEYS[1], ARGV[1], ARGV[3], KEYS[2])
return 1
