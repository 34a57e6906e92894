-- One account feed read's commit (or one flush of a long read), all or nothing: the
-- snapshots and state of every user it changed, overdue watches, the outgoing events, the
-- feed's state and its next score (its extended lease, or its next due time).
-- KEYS: [1] feed due zset, [2] feed state hash, [3] overdue zset, [4] tracked users' version
--       counter, [5] failing accounts hash, [6] backed-off accounts hash,
--       then per user written: (snapshots, user state hash, 0.1's snapshot hash),
--       then the log's and the queues' keys, as enqueue.lua reads them
-- ARGV: [1] account member, [2] token held, [3] new score as lease.lua's move reads it (the
--       next due time, or -n: the lease n ms longer; '' = leave it), [4] the tracked users'
--       version the read's users were taken at, [5] the account as answered reads it (the
--       read's last commit: it succeeded),
--       then the feed state as hset_pairs reads it,
--       then n users, each: snapshots ('' = unchanged), its state as hset_pairs reads it,
--       then the overdue watches as watch reads them, then the events as enqueue reads them
-- Returns: the score written (an extended lease's new token; 0 when ARGV[3] is ''), or -1:
--          the lease was lost, or -2: users were added or removed since the read took its
--          users and it writes some (nothing written: a removed user's snapshots and state
--          must not come back; the caller drops those no longer tracked and commits again)
--!include fence.lua
--!include lease.lua
--!include log.lua
--!include enqueue.lua
--!include commit_parts.lua
if not held(KEYS[1], ARGV[1], ARGV[2]) then return -1 end
local users_at = 7 + 2 * tonumber(ARGV[6])  -- after the feed state's pairs
local users = tonumber(ARGV[users_at])
if users > 0 and (redis.call('GET', KEYS[4]) or '') ~= ARGV[4] then return -2 end
answered(KEYS[5], KEYS[6], ARGV[5])
local i = hset_pairs(KEYS[2], 6) + 1
for u = 0, users - 1 do
  local k = 7 + 3 * u
  if ARGV[i] ~= '' then
    redis.call('SET', KEYS[k], ARGV[i])
    redis.call('DEL', KEYS[k + 2])
  end
  i = hset_pairs(KEYS[k + 1], i + 1)
end
i = watch(KEYS[3], i)
enqueue(7 + 3 * users, i)
if ARGV[3] == '' then return 0 end
return move(KEYS[1], ARGV[1], ARGV[3], KEYS[2])
