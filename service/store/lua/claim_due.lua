-- Claim what is due in a schedule (users to poll, feeds, listings, overdue checks).
-- KEYS: [1] the zset (member → due ms; a claimed member's score is its lease, see lease.lua)
-- ARGV: [1] now ms on the caller's clock (what is due by then), [2] the lease's length ms
--       (on Redis' clock), [3] at most this many, [4...] members claimed first when due
--       (the accounts read fastest: their reads go before the others' backlog)
-- Returns: {the claims' fencing token, member, its due ms, member, its due ms, ...}; a member
--          whose lease ran out is reported as due at ARGV[1]
--!include lease.lua
local limit = tonumber(ARGV[3])
local due_by = math.min(tonumber(ARGV[1]), LEASED - 1)
local first = {}
for j = 4, #ARGV do
  local score = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[j]))
  if score and score <= due_by then first[#first + 1] = {ARGV[j], score} end
end
table.sort(first, function(a, b) return a[2] < b[2] end)
local due = {}
for j = 1, math.min(#first, limit) do
  due[#due + 1] = first[j][1]
  due[#due + 1] = first[j][2]
end
local token = lease_token(ARGV[2])
-- leased before the rest is looked up, so it is not claimed twice
for j = 1, #due, 2 do redis.call('ZADD', KEYS[1], as_score(token), due[j]) end
if #due / 2 < limit then
  local rest = claimable(KEYS[1], ARGV[1], limit - #due / 2)
  for j = 1, #rest, 2 do
    redis.call('ZADD', KEYS[1], as_score(token), rest[j])
    due[#due + 1] = rest[j]
    due[#due + 1] = rest[j + 1]
  end
end
table.insert(due, 1, token)
return due
