-- Library part (included, not run alone): the delivery log (store/log.py).
-- One hash per event, named LOG_EVENT_PREFIX .. id (the scripts are given the prefix, not
-- each event's key: a commit of thousands of events would pass thousands of keys):
--   h   type and when logged (ms), joined by \31; t its timestamp; c, u, g its account,
--       user and assignment (each absent when empty). The head comes joined in one argument
--       (scripts.log_head) and is kept in fields of at most 64 bytes each, so that the hash
--       stays a listpack (hash-max-listpack-value); entries logged before kept it all in h
--   d   the key of the body's `data`, shared by the events of one change (LOG_DATA_PREFIX ..
--       digest: the count of events holding it, 6 digits, then `data` compressed; see
--       store/log_body.py): the body is its envelope, built from the id and h, then `data`
--   b   or the body as sent, whole (one that is not envelope and `data`, or logged before d)
--   o:E the outcome at endpoint E and its attempts: '<queued|delivered|dead> <n>'
--   a:E:k the record of the k-th attempt at E (a JSON array; the last KEEP_ATTEMPTS kept)
-- Indexes (zsets, id → when logged): every event's, and each endpoint's
-- (LOG_ENDPOINT_PREFIX .. endpoint id).
local KEEP_ATTEMPTS = 20 -- attempt records kept per event and endpoint (store/log.py says so)
local RECENT_ATTEMPTS = 500 -- entries kept in an endpoint's list of recent attempts
local unpack = unpack or table.unpack

local COUNT_WIDTH = 6 -- digits of a shared data's count of holders (store/log_body.py)

-- share(key, stored, ttl): one more logged event holds the shared data `key`; `stored`
-- (its value, false when an earlier event of the same call passed it) makes it if missing
local function share(key, stored, ttl)
  local n = tonumber(redis.call('GETRANGE', key, 0, COUNT_WIDTH - 1))
  if n then
    redis.call('SETRANGE', key, 0, string.format('%0' .. COUNT_WIDTH .. 'd', n + 1))
  else
    redis.call('SET', key, string.format('%0' .. COUNT_WIDTH .. 'd', 1) .. stored)
  end
  -- it outlives every holder: each one's TTL is set now, as long as this
  redis.call('PEXPIRE', key, ttl)
end

-- release(key): a logged event holding the shared data `key` leaves the log; the last
-- one deletes it
local function release(key)
  local n = tonumber(redis.call('GETRANGE', key, 0, COUNT_WIDTH - 1))
  if n and n > 1 then
    redis.call('SETRANGE', key, 0, string.format('%0' .. COUNT_WIDTH .. 'd', n - 1))
  else
    redis.call('DEL', key)
  end
end

-- body_stored(id, h, timestamp, d) → the body in the form the queue keeps for a logged
-- event whose `data` is shared (store/log_body.py: queued_body puts it back together), or
-- nil when the shared data is gone
local function body_stored(id, h, timestamp, d)
  local value = redis.call('GET', d)
  if not value then return nil end
  return '\31{"id":"' .. id .. '","type":"' .. string.match(h, '^[^\31]*') .. '","timestamp":"'
    .. (timestamp or '') .. '","data":\31' .. string.sub(value, COUNT_WIDTH + 1)
end

local HEAD_FIELDS = {'t', 'c', 'u', 'g'} -- the head's parts after type and time (see above)

-- head_fields(fields, h): the hash's fields for the head as passed (type, when logged,
-- timestamp, account, user, assignment, joined by \31), appended to `fields`
local function head_fields(fields, h)
  local kind_at, rest = string.match(h, '^([^\31]*\31[^\31]*)\31(.*)$')
  fields[#fields + 1] = 'h'
  fields[#fields + 1] = kind_at
  local n = 0
  for part in string.gmatch(rest .. '\31', '([^\31]*)\31') do
    n = n + 1
    if part ~= '' then
      fields[#fields + 1] = HEAD_FIELDS[n]
      fields[#fields + 1] = part
    end
  end
end

-- new_event(hash, index, id, at, ttl, h, body, eps, ep_indexes): an event enters the log,
-- queued for the endpoints `eps` (ids), whose log indexes are `ep_indexes`. `body`: {field,
-- value}, {'b', the body} or {'d', its shared data's key} (whose holder it becomes)
local function new_event(hash, index, id, at, ttl, h, body, eps, ep_indexes)
  local fields = {body[1], body[2]}
  head_fields(fields, h)
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
    if f == 'd' then release(redis.call('HGET', hash, 'd')) end
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

-- cap(index, ev_prefix, ep_prefix, ep, most, budget): endpoint ep's log keeps its `most`
-- newest events (dropping at most `budget` at once); an event that no endpoint's log keeps
-- any longer leaves the log
local function cap(index, ev_prefix, ep_prefix, ep, most, budget)
  local ep_index = ep_prefix .. ep
  local over = redis.call('ZCARD', ep_index) - most
  if over <= 0 then return end
  local popped = redis.call('ZPOPMIN', ep_index, math.min(over, budget))
  for j = 1, #popped, 2 do
    local id = popped[j]
    local kept = false
    for _, f in ipairs(redis.call('HKEYS', ev_prefix .. id)) do
      local other = string.sub(f, 3)
      if string.sub(f, 1, 2) == 'o:' and other ~= ep
          and redis.call('ZSCORE', ep_prefix .. other, id) then
        kept = true
        break
      end
    end
    if not kept then forget(index, ev_prefix, ep_prefix, id) end
  end
end

-- attempt(hash, ep, id, outcome, record) → the entry for the endpoint's recent attempts:
-- an attempt at delivering a logged event to endpoint `ep` is recorded, with the outcome
-- it leaves (queued, delivered, dead); an event no longer logged records nothing
local function attempt(hash, ep, id, outcome, record)
  local field = 'o:' .. ep
  local found = redis.call('HMGET', hash, field, 'h')
  if found[1] then
    local n = tonumber(string.match(found[1], '%d+$')) + 1
    redis.call('HSET', hash, field, outcome .. ' ' .. n, 'a:' .. ep .. ':' .. n, record)
    if n > KEEP_ATTEMPTS then redis.call('HDEL', hash, 'a:' .. ep .. ':' .. (n - KEEP_ATTEMPTS)) end
  end
  return id .. '\t' .. string.match(found[2] or '', '^[^\31]*') .. '\t' .. record
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
