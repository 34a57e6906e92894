-- One linked-account listing's commit, all or nothing: the accounts it found or found
-- changed (their public fields, as JSON), those it found unlinked (gone from the known set,
-- from the not-LMS retries, and queued to have their state forgotten unless the config
-- names them), the version counter every process's directory watches (moved when anything
-- changed), the listing's state and its next due time; fenced by the listing's lease.
-- KEYS: [1] account listing due zset, [2] account listing state hash, [3] linked accounts
--       hash, [4] linked version counter, [5] not-LMS accounts zset, [6] accounts to forget set
-- ARGV: [1] the listing's member, [2] token held, [3] next due time (ms ≥ 0, as lease.lua's
--       move reads it), then the listing state as hset_pairs reads it,
--       then n, n × (account id, its JSON) to write,
--       then n, n × (account id, 1: forget its state | 0: keep it, a config account) to drop
-- Returns: 1 committed, 0 the lease was lost (nothing written)
--!include fence.lua
--!include lease.lua
--!include commit_parts.lua
if not held(KEYS[1], ARGV[1], ARGV[2]) then return 0 end
local i = hset_pairs(KEYS[2], 4)
local changed = false
local n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1]); i = i + 2
  changed = true
end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  redis.call('HDEL', KEYS[3], ARGV[i])
  redis.call('ZREM', KEYS[5], ARGV[i])
  if ARGV[i + 1] == '1' then redis.call('SADD', KEYS[6], ARGV[i]) end
  i = i + 2
  changed = true
end
if changed then redis.call('INCR', KEYS[4]) end
move(KEYS[1], ARGV[1], ARGV[3], KEYS[2])
return 1
