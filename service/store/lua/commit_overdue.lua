-- An overdue check's outcome for claimed due dates (many of one user, in one round trip):
-- each one's events (maybe none) queued and the due date no longer watched, each fenced by
-- its own claim.
-- KEYS: [1] overdue zset, [2..] (due zset, body hash) per endpoint, as enqueue.lua reads them
-- ARGV: [1] n, then n × (overdue member, token held, its events as enqueue.lua reads them)
-- Returns: per due date, 1 committed or 0 its claim was lost (nothing of it written)
--!include fence.lua
--!include enqueue.lua
local done = {}
local i = 2
for _ = 1, tonumber(ARGV[1]) do
  local member, token = ARGV[i], ARGV[i + 1]
  local mine = held(KEYS[1], member, token)
  i = enqueue(2, i + 2, not mine)
  if mine then redis.call('ZREM', KEYS[1], member) end
  done[#done + 1] = mine and 1 or 0
end
return done
