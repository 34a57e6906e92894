-- Library part (included, not run alone): a GCRA rate limiter on Redis' own clock, so every
-- process shares one limit whatever its clock says.
-- acquire(rate key, pause key, emission ms, tolerance ms) → ms to wait (0: granted, and spent).
-- While `pause key` exists (a Retry-After pause) nothing is granted.
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
  -- deleted first: Redis out of memory (noeviction) refuses a script's writes that may add
  -- data only until its first write, so a throttled endpoint's queue still drains then; the
  -- value set is the size of the one deleted
  redis.call('DEL', rate_key)
  redis.call('SET', rate_key, new_tat, 'PX', math.ceil(new_tat - now + 1000))
  return 0
end
