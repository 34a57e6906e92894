-- An overdue check's outcome for claimed due dates (many of one user, in one round trip):
-- each one's events (maybe none) queued and logged, and the due date no longer watched,
-- each fenced by its own claim.
-- KEYS: [1] overdue zset, [2..] the log's and the queues' keys, as enqueue.lua reads them
-- ARGV: [1] n, then n × (overdue member, token held, e, e × the ids of its events),
--       then the events of them all, as enqueue.lua reads them
-- Returns: per due date, 1 committed or 0 its claim was lost (nothing of it written)
--!include fence.lua
--!include log.lua
--!include enqueue.lua
local done, lost = {}, {}
local i = 2
for _ = 1, tonumber(ARGV[1]) do
  local member, token, e = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local mine = held(KEYS[1], member, token)
  if mine then
    redis.call('ZREM', KEYS[1], member)
  else
    for x = 1, e do lost[ARGV[i + 2 + x]] = true end
  end
  done[#done + 1] = mine and 1 or 0
  i = i + 3 + e
end
enqueue(2, i, lost)
return done
