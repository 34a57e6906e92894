-- Library part (included, not run alone, after log.lua): queue outgoing events, each once,
-- and record each in the delivery log, once per event (not once per endpoint).
-- enqueue(k, i): KEYS[k] is the log's index of every event, then (due zset, body hash, log
-- index, meta hash) per endpoint, up to the last key. ARGV[i] on: the log's retention (ms),
-- its cap per endpoint, its hashes' TTL (ms), LOG_EVENT_PREFIX, LOG_ENDPOINT_PREFIX, the
-- commit's W3C traceparent ('' = tracing off: nothing more is written), p, the p
-- endpoints' ids (in the order of their keys), m, then per event four: its id and log
-- head ('<id>\31<the hash's field h>'), its body, where it goes ('<endpoint number
-- 1..p>:<due ms>', space-separated; the first due is when it is logged), and how the log
-- keeps its body: '' whole, or the key of its shared data (lua/log.lua, field d), followed
-- by '\31' and the data as stored where the call names that key first.
-- With a traceparent, each event newly queued for an endpoint gets its meta there
-- ('{"traceparent":"…"}'), which its attempts keep: the trace follows it to the dispatcher.
-- `skip` (optional): a set of event ids to read past, queueing and logging nothing of them.
-- Returns the index of the argument after the events read.
-- The same event id committed twice (a poll replayed after a crash) is queued once and
-- logged once; queued again for an endpoint that has it delivered, it keeps its attempts.
local function enqueue(k, i, skip)
  local retention, most, ttl = tonumber(ARGV[i]), tonumber(ARGV[i + 1]), ARGV[i + 2]
  local ev_prefix, ep_prefix = ARGV[i + 3], ARGV[i + 4]
  local meta = nil
  if ARGV[i + 5] ~= '' then meta = '{"traceparent":"' .. ARGV[i + 5] .. '"}' end
  local p = tonumber(ARGV[i + 6]); i = i + 7
  local eps = {}
  for j = 1, p do eps[j] = ARGV[i]; i = i + 1 end
  local m = tonumber(ARGV[i]); i = i + 1
  local index = KEYS[k]
  local latest, logged, touched = nil, 0, {}
  local stored = {} -- shared data key → its value as passed (once per call)
  for _ = 1, m do
    local id, h = string.match(ARGV[i], '^([^\31]*)\31(.*)$')
    local body, routes, kept = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
    i = i + 4
    local shared = nil
    if kept ~= '' then
      local value
      shared, value = string.match(kept, '^([^\31]*)\31?(.*)$')
      if value ~= '' then stored[shared] = value end
    end
    if skip and skip[id] then routes = '' end
    local at = nil
    local fresh = {} -- endpoint numbers it is newly queued for
    for number, due_ms in string.gmatch(routes, '(%d+):(%d+)') do
      local j = tonumber(number)
      local due = k + 1 + 4 * (j - 1)
      at = at or due_ms
      if redis.call('HSETNX', KEYS[due + 1], id, body) == 1 then
        redis.call('ZADD', KEYS[due], due_ms, id)
        if meta then redis.call('HSETNX', KEYS[due + 3], id, meta) end
        fresh[#fresh + 1] = j
      end
    end
    if #fresh > 0 then
      logged = logged + 1
      if latest == nil or tonumber(at) > latest then latest = tonumber(at) end
      local hash = ev_prefix .. id
      if redis.call('EXISTS', hash) == 0 then
        local ids, indexes = {}, {}
        for n, j in ipairs(fresh) do
          ids[n], indexes[n] = eps[j], KEYS[k + 4 * j - 1]
          touched[j] = true
        end
        if shared then
          share(shared, stored[shared], ttl)
          new_event(hash, index, id, at, ttl, h, {'d', shared}, ids, indexes)
        else
          new_event(hash, index, id, at, ttl, h, {'b', body}, ids, indexes)
        end
      else
        for _, j in ipairs(fresh) do
          if redis.call('HEXISTS', hash, 'o:' .. eps[j]) == 1 then
            requeued(hash, eps[j])
          else -- logged for other endpoints before: this one's log holds it from now on
            redis.call('HSET', hash, 'o:' .. eps[j], 'queued 0')
            redis.call('ZADD', KEYS[k + 4 * j - 1], at, id)
            touched[j] = true
          end
        end
      end
    end
  end
  if latest == nil then return i end
  -- bounded: as many old events leave as twice the new ones (and a few), so a backlog of
  -- them shrinks call by call without any one call taking long
  local budget = 2 * logged + 10
  trim_old(index, ev_prefix, ep_prefix, latest - retention, budget)
  for j in pairs(touched) do cap(index, ev_prefix, ep_prefix, eps[j], most, budget) end
  return i
end
