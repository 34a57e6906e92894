-- Library part (included, not run alone): the delivery log (store/log.py).
-- One hash per event (LOG_EVENT_PREFIX .. id): t type, ts its timestamp, ac, us, as its
-- account, user and assignment ids ('' = none), at when logged (ms), b the body as sent,
-- n how many endpoints' logs hold it; per endpoint ep: o:ep '<outcome> <attempts>'
-- (queued, delivered or dead) and a:ep:k the record of its k-th attempt there (JSON, the
-- last KEEP_ATTEMPTS kept). Indexes (zsets, id → when logged): every event's, and each
-- endpoint's (LOG_ENDPOINT_PREFIX .. endpoint id).
local KEEP_ATTEMPTS = 20 -- attempt records kept per event and endpoint (store/log.py says so)
local RECENT_ATTEMPTS = 500 -- entries kept in an endpoint's list of recent attempts
local unpack = unpack or table.unpack

-- new_event(hash, index, id, at, ttl, head, body, eps, ep_indexes): an event enters the log,
-- queued for the endpoints `eps` (ids), whose log indexes are `ep_indexes`; head = {type,
-- timestamp, account, user, assignment}
local function new_event(hash, index, id, at, ttl, head, body, eps, ep_indexes)
  local fields = {'t', head[1], 'ts', head[2], 'ac', head[3], 'us', head[4], 'as', head[5],
                  'at', at, 'b', body, 'n', #eps}
  for j, ep in ipairs(eps) do
    fields[#fields + 1] = 'o:' .. ep
    fields[#fields + 1] = 'queued 0'
    redis.call('ZADD', ep_indexes[j], at, id)
  end
  redis.call('HSET', hash, unpack(fields))
  -- a safety net: the trims below remove it on time, as long as events keep coming
  redis.call('PEXPIRE', hash, ttl)
  redis.call('ZADD', index, at, id)
end

-- forget(index, ev_prefix, ep_prefix, id): the event leaves the log: its hash, its entry in
-- the index of every event and in every endpoint's
local function forget(index, ev_prefix, ep_prefix, id)
  local hash = ev_prefix .. id
  for _, f in ipairs(redis.call('HKEYS', hash)) do
    if string.sub(f, 1, 2) == 'o:' then redis.call('ZREM', ep_prefix .. string.sub(f, 3), id) end
  end
  redis.call('DEL', hash)
  redis.call('ZREM', index, id)
end

-- trim_old(index, ev_prefix, ep_prefix, before, budget): events logged before `before` (ms)
-- leave the log, at most `budget` of them (the rest on later calls)
local function trim_old(index, ev_prefix, ep_prefix, before, budget)
  local old = redis.call('ZRANGEBYSCORE', index, '-inf', '(' .. before, 'LIMIT', 0, budget)
  for _, id in ipairs(old) do forget(index, ev_prefix, ep_prefix, id) end
end

-- cap(index, ev_prefix, ep_prefix, ep_index, most, budget): an endpoint's log keeps its
-- `most` newest events (dropping at most `budget` at once); an event that no endpoint's log
-- keeps any longer leaves the log
local function cap(index, ev_prefix, ep_prefix, ep_index, most, budget)
  local over = redis.call('ZCARD', ep_index) - most
  if over <= 0 then return end
  local popped = redis.call('ZPOPMIN', ep_index, math.min(over, budget))
  for j = 1, #popped, 2 do
    local id = popped[j]
    local hash = ev_prefix .. id
    if redis.call('EXISTS', hash) == 0 then
      redis.call('ZREM', index, id) -- its hash ran out (TTL) before a trim came
    elseif redis.call('HINCRBY', hash, 'n', -1) <= 0 then
      forget(index, ev_prefix, ep_prefix, id)
    end
  end
end

-- attempt(hash, ep, id, outcome, record) → the entry for the endpoint's recent attempts:
-- an attempt at delivering a logged event to endpoint `ep` is recorded, with the outcome
-- it leaves (queued, delivered, dead); an event no longer logged records nothing
local function attempt(hash, ep, id, outcome, record)
  local field = 'o:' .. ep
  local found = redis.call('HMGET', hash, field, 't')
  if found[1] then
    local n = tonumber(string.match(found[1], '%d+$')) + 1
    redis.call('HSET', hash, field, outcome .. ' ' .. n, 'a:' .. ep .. ':' .. n, record)
    if n > KEEP_ATTEMPTS then redis.call('HDEL', hash, 'a:' .. ep .. ':' .. (n - KEEP_ATTEMPTS)) end
  end
  return id .. '\t' .. (found[2] or '') .. '\t' .. record
end

-- recent(list, entries): the endpoint's recent attempts, newest first
local function recent(list, entries)
  if #entries == 0 then return end
  redis.call('LPUSH', list, unpack(entries))
  redis.call('LTRIM', list, 0, RECENT_ATTEMPTS - 1)
end

-- requeued(hash, ep): a logged event is queued again for `ep` (its attempts are kept)
local function requeued(hash, ep)
  local field = 'o:' .. ep
  local o = redis.call('HGET', hash, field)
  if o then redis.call('HSET', hash, field, 'queued ' .. string.match(o, '%d+$')) end
end
