"""The Lua scripts behind every atomic state change.

A claimed member's zset score is its lease expiry, and that score is the fencing token: a
worker whose lease expired and was taken over finds a different score and changes nothing.
"""

from __future__ import annotations

# KEYS[1] zset; ARGV now_ms, lease_until_ms, limit → {member, due score, ...} claimed
CLAIM_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0,
  tonumber(ARGV[3]))
for j = 1, #due, 2 do redis.call('ZADD', KEYS[1], ARGV[2], due[j]) end
return due
"""

# KEYS due, body, meta; ARGV now_ms, lease_until_ms, limit → {id, body, meta|false, ...}
CLAIM_EVENTS = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(due) do
  local body = redis.call('HGET', KEYS[2], id)
  if body then
    redis.call('ZADD', KEYS[1], ARGV[2], id)
    out[#out + 1] = id
    out[#out + 1] = body
    out[#out + 1] = redis.call('HGET', KEYS[3], id) or false
  else
    -- a queue entry without a body can never be sent; drop it instead of looping on it
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
"""

# Queues the events that follow: KEYS from k on are (due, body) pairs per endpoint, ARGV
# from i on is, per endpoint, n then (event id, body, due ms)*n. The same event id committed
# twice (a poll replayed after a crash) is queued once.
_ENQUEUE = """
while k <= #KEYS do
  local count = tonumber(ARGV[i]); i = i + 1
  for _ = 1, count do
    if redis.call('HSETNX', KEYS[k + 1], ARGV[i], ARGV[i + 1]) == 1 then
      redis.call('ZADD', KEYS[k], ARGV[i + 2], ARGV[i])
    end
    i = i + 3
  end
  k = k + 2
end
"""

# One poll's commit: snapshots, user state, the lease/next-due score and the outgoing events.
# KEYS[1] POLL_DUE, KEYS[2] snapshots, KEYS[3] user state, KEYS[4] OVERDUE, KEYS[5] legacy
# snapshots (deleted when snapshots are written), then (due, body) per endpoint.
# ARGV: member, token ('' = unfenced), new score ('' = keep), snapshots ('' = unchanged),
#       n, (field, value)*n (state), n, (overdue member, due ms)*n (watch),
#       n, overdue member*n (unwatch), then per endpoint:
#       n, (event id, body, due ms)*n
COMMIT_POLL = (
    """
if ARGV[2] ~= '' then
  local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if (not score) or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
end
if ARGV[4] ~= '' then
  redis.call('SET', KEYS[2], ARGV[4])
  redis.call('DEL', KEYS[5])
end
local i = 5
local n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1]); i = i + 2 end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do redis.call('ZADD', KEYS[4], ARGV[i + 1], ARGV[i]); i = i + 2 end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do redis.call('ZREM', KEYS[4], ARGV[i]); i = i + 1 end
local k = 6
"""
    + _ENQUEUE
    + """
if ARGV[3] ~= '' then redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1]) end
return 1
"""
)

_FENCE = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if (not score) or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
"""

# KEYS due, body, meta; ARGV (id, token)* → per event 1 done, 0 lease lost (not touched)
ACK_EVENTS = """
local done = {}
for j = 1, #ARGV, 2 do
  local id = ARGV[j]
  local score = redis.call('ZSCORE', KEYS[1], id)
  if score and tonumber(score) == tonumber(ARGV[j + 1]) then
    redis.call('ZREM', KEYS[1], id)
    redis.call('HDEL', KEYS[2], id)
    redis.call('HDEL', KEYS[3], id)
    done[#done + 1] = 1
  else
    done[#done + 1] = 0
  end
end
return done
"""

# KEYS due, meta; ARGV id, token, new due ms, meta json → 1 / 0
RESCHEDULE_EVENT = (
    _FENCE
    + """
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[4])
return 1
"""
)

# An overdue check's outcome: its events (maybe none) queued, the member unwatched.
# KEYS[1] OVERDUE, then (due, body) per endpoint; ARGV member, token, then per endpoint:
#   n, (event id, body, due ms)*n
COMMIT_OVERDUE = (
    _FENCE
    + """
local i = 3
local k = 2
"""
    + _ENQUEUE
    + """
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
"""
)

# KEYS due; ARGV id, token, new lease → 1 / 0 (the new lease is the new token)
EXTEND_LEASE = (
    _FENCE
    + """
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
"""
)

# KEYS due, dead, meta; ARGV id, token, now ms, meta json → 1 / 0
DEAD_LETTER_EVENT = (
    _FENCE
    + """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
return 1
"""
)

# KEYS due, dead, meta; ARGV now ms, ids... (none: all) → number queued again
REPLAY_DEAD = """
local ids = {}
if #ARGV > 1 then
  for j = 2, #ARGV do ids[#ids + 1] = ARGV[j] end
else
  ids = redis.call('ZRANGE', KEYS[2], 0, -1)
end
local n = 0
for _, id in ipairs(ids) do
  if redis.call('ZREM', KEYS[2], id) == 1 then
    redis.call('ZADD', KEYS[1], ARGV[1], id)
    redis.call('HDEL', KEYS[3], id)
    n = n + 1
  end
end
return n
"""

# GCRA on Redis' own clock, so every process shares one limit whatever its clock says.
# acquire(rate key, pause key, emission ms, tolerance ms) → ms to wait (0: granted)
_GCRA = """
local function acquire(rate_key, pause_key, emission, tolerance)
  local pause = redis.call('PTTL', pause_key)
  if pause > 0 then return pause end
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local tat = tonumber(redis.call('GET', rate_key) or now)
  if tat < now then tat = now end
  local wait = tat - tonumber(tolerance) - now
  if wait > 0 then return math.ceil(wait) end
  local new_tat = tat + tonumber(emission)
  redis.call('SET', rate_key, new_tat, 'PX', math.ceil(new_tat - now + 1000))
  return 0
end
"""

# KEYS rate, pause; ARGV emission_ms, tolerance_ms → ms to wait (0: granted)
GCRA_ACQUIRE = _GCRA + "return acquire(KEYS[1], KEYS[2], ARGV[1], ARGV[2])"

# What a poll needs before it reads upstream, in one round trip: the permit for its first
# request, the user's state and its snapshots.
# KEYS user state, snapshots, rate, pause, legacy snapshots; ARGV emission_ms, tolerance_ms
#   → {ms to wait for the permit (0: granted), state as a flat list, snapshots or false,
#      the legacy hash as a flat list (empty unless snapshots is missing)}
LOAD_USER = (
    _GCRA
    + """
local wait = acquire(KEYS[3], KEYS[4], ARGV[1], ARGV[2])
local snaps = redis.call('GET', KEYS[2])
local legacy = {}
if not snaps then legacy = redis.call('HGETALL', KEYS[5]) end
return {wait, redis.call('HGETALL', KEYS[1]), snaps, legacy}
"""
)

# KEYS pause; ARGV ms → extends the pause, never shortens it
PAUSE = """
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
return 1
"""
