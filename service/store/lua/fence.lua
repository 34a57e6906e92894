-- Library part (included, not run alone): the fence of every leased write.
-- A claimed member's zset score is its lease expiry, and that score is the fencing token: a
-- worker whose lease expired and was taken over finds another score and must change nothing.
-- held(zset, member, token) → true while `member` still has the score `token` in `zset`
local function held(zset, member, token)
  local score = redis.call('ZSCORE', zset, member)
  return score ~= false and tonumber(score) == tonumber(token)
end
