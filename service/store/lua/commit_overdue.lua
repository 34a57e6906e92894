-- An overdue check's outcome: its events (maybe none) queued, the due date no longer watched.
-- KEYS: [1] overdue zset, [2..] the log's and the queues' keys, as enqueue.lua reads them
-- ARGV: [1] overdue member, [2] token held, then the events, as enqueue.lua reads them
-- Returns: 1 committed, 0 the claim was lost (nothing written)
--!include fence.lua
--!include log.lua
--!include enqueue.lua
if not held(KEYS[1], ARGV[1], ARGV[2]) then return 0 end
enqueue(2, 3)
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
