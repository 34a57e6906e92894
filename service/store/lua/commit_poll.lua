-- One poll's commit, all or nothing: snapshots, user state, the weight of its polls,
-- overdue watches, the outgoing events and the user's next score (its extended lease, or
-- its next due time).
-- KEYS: [1] poll due zset, [2] snapshots, [3] user state hash, [4] overdue zset,
--       [5] 0.1's snapshot hash (deleted once snapshots are written), [6] user weights zset,
--       [7] failing accounts hash, [8] backed-off accounts hash, [9..] the log's and the
--       queues' keys, as enqueue.lua reads them
-- ARGV: [1] member, [2] token held ('' = unfenced), [3] new score as lease.lua's move reads
--       it (the next due time, or -n: the lease n ms longer; '' = leave it),
--       [4] snapshots ('' = unchanged), [5] the user's weight ('' = unchanged),
--       [6] the account as answered reads it (the poll's last commit: it succeeded),
--       then the user state as hset_pairs reads it,
--       then the overdue watches as watch reads them, then the events as enqueue reads them
-- Returns: the score written (an extended lease's new token; 0 when ARGV[3] is ''), or -1:
--          the lease was lost (nothing written)
--!include fence.lua
--!include lease.lua
--!include log.lua
--!include enqueue.lua
--!include commit_parts.lua
if ARGV[2] ~= '' and not held(KEYS[1], ARGV[1], ARGV[2]) then return -1 end
if ARGV[4] ~= '' then
  redis.call('SET', KEYS[2], ARGV[4])
  redis.call('DEL', KEYS[5])
end
if ARGV[5] ~= '' then redis.call('ZADD', KEYS[6], ARGV[5], ARGV[1]) end
answered(KEYS[7], KEYS[8], ARGV[6])
local i = hset_pairs(KEYS[3], 7)
i = watch(KEYS[4], i)
enqueue(9, i)
if ARGV[3] == '' then return 0 end
return move(KEYS[1], ARGV[1], ARGV[3], KEYS[3])
