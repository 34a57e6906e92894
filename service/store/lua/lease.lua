-- Library part (included, not run alone): leases on Redis' own clock.
-- A schedule (users, feeds, listings, overdue checks) or an endpoint's queue is a zset that
-- scores each member by when it is next due: epoch ms on the clock of the process that wrote
-- it, and due-ness is judged on the claiming process's clock (tests drive it). A member being
-- worked on is scored LEASED + its lease's expiry, epoch ms on Redis' clock instead, and that
-- score is the lease's fencing token (fence.lua). LEASED (2^52) lies above any due time, so
-- whether a lease still holds is judged on Redis' clock only: a process whose clock runs
-- ahead takes no live lease. Scores stay exact integers (below 2^53).
local LEASED = 4503599627370496
-- redis_ms() → now on Redis' clock, epoch ms
local function redis_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- as_score(n) → n as ZADD takes it (Lua's tostring keeps 14 digits only; a lease has 16)
local function as_score(n) return string.format('%.0f', n) end
-- claimable(zset, due_by, limit) → {member, its due ms, ...}: members whose lease ran out
-- (their holder died; reported as due at `due_by`), then members due by `due_by` ms (the
-- caller's clock), at most `limit` in all. Claims nothing: the caller leases what it takes.
local function claimable(zset, due_by, limit)
  due_by = tonumber(due_by)
  limit = tonumber(limit)
  local out = {}
  local expired = redis.call('ZRANGEBYSCORE', zset, as_score(LEASED),
    as_score(LEASED + redis_ms()), 'LIMIT', 0, limit)
  for _, member in ipairs(expired) do
    out[#out + 1] = member
    out[#out + 1] = due_by
  end
  if #expired < limit then
    local due = redis.call('ZRANGEBYSCORE', zset, '-inf', as_score(math.min(due_by, LEASED - 1)),
      'WITHSCORES', 'LIMIT', 0, limit - #expired)
    for j = 1, #due, 2 do
      out[#out + 1] = due[j]
      out[#out + 1] = tonumber(due[j + 1])
    end
  end
  return out
end
-- lease_token(hold_ms) → the score of a lease that runs out `hold_ms` from now (Redis' clock)
local function lease_token(hold_ms) return LEASED + redis_ms() + tonumber(hold_ms) end
-- move(zset, member, score, state) → the score written. `score` ≥ 0 is the member's next due
-- time and ends its lease; -n keeps the lease n ms more, on Redis' clock (the new token).
-- Ending a lease of a member asked to be read at once while it was being read (`state`, its
-- state hash, holds due_now: see due_now.lua) makes it due at once instead.
-- Removed and added back, as claim_events.lua does: a lease moved (a retry scheduled, a claim
-- extended) still goes through while Redis is out of memory.
local function move(zset, member, score, state)
  score = tonumber(score)
  if score < 0 then
    score = lease_token(-score)
  elseif state and redis.call('HDEL', state, 'due_now') == 1 then
    score = 0
  end
  redis.call('ZREM', zset, member)
  redis.call('ZADD', zset, as_score(score), member)
  return score
end
