-- Library part (included, not run alone, after log.lua): queue outgoing events, each once,
-- and record each in the delivery log, once per event (not once per endpoint).
-- enqueue(k, i): KEYS[k] is the log's index of every event, KEYS[k+1..k+m] the log hash of
-- each of the m events, then (due zset, body hash, log index) per endpoint, up to the last
-- key. ARGV[i] on: the log's retention (ms), its cap per endpoint, its hashes' TTL (ms),
-- LOG_EVENT_PREFIX, LOG_ENDPOINT_PREFIX, p, the p endpoints' ids (in the order of their
-- keys), m, then per event: id, type, timestamp, account, user, assignment ('' = none),
-- body, when logged (ms), e, e × (endpoint number 1..p, due ms).
-- The same event id committed twice (a poll replayed after a crash) is queued once and
-- logged once; queued again for an endpoint that has it delivered, it keeps its attempts.
local function enqueue(k, i)
  local retention, most, ttl = tonumber(ARGV[i]), tonumber(ARGV[i + 1]), ARGV[i + 2]
  local ev_prefix, ep_prefix = ARGV[i + 3], ARGV[i + 4]
  local p = tonumber(ARGV[i + 5]); i = i + 6
  local eps = {}
  for j = 1, p do eps[j] = ARGV[i]; i = i + 1 end
  local m = tonumber(ARGV[i]); i = i + 1
  local index, first = KEYS[k], k + m + 1 -- first: the first endpoint's due zset
  local latest, logged, touched = nil, 0, {}
  for e = 1, m do
    local hash, id, body, at = KEYS[k + e], ARGV[i], ARGV[i + 6], ARGV[i + 7]
    local head = {ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]}
    local count = tonumber(ARGV[i + 8]); i = i + 9
    local fresh = {} -- endpoint numbers it is newly queued for
    for _ = 1, count do
      local j = tonumber(ARGV[i])
      local due = first + 3 * (j - 1)
      if redis.call('HSETNX', KEYS[due + 1], id, body) == 1 then
        redis.call('ZADD', KEYS[due], ARGV[i + 1], id)
        fresh[#fresh + 1] = j
      end
      i = i + 2
    end
    if #fresh > 0 then
      logged = logged + 1
      if latest == nil or tonumber(at) > latest then latest = tonumber(at) end
      if redis.call('EXISTS', hash) == 0 then
        local ids, indexes = {}, {}
        for n, j in ipairs(fresh) do
          ids[n], indexes[n] = eps[j], KEYS[first + 3 * (j - 1) + 2]
          touched[j] = true
        end
        new_event(hash, index, id, at, ttl, head, body, ids, indexes)
      else
        for _, j in ipairs(fresh) do
          local field = 'o:' .. eps[j]
          if redis.call('HEXISTS', hash, field) == 1 then
            requeued(hash, eps[j])
          else -- logged for other endpoints before: this one's log holds it from now on
            redis.call('HSET', hash, field, 'queued 0')
            redis.call('HINCRBY', hash, 'n', 1)
            redis.call('ZADD', KEYS[first + 3 * (j - 1) + 2], at, id)
            touched[j] = true
          end
        end
      end
    end
  end
  if latest == nil then return end
  -- bounded: as many old events leave as twice the new ones (and a few), so a backlog of
  -- them shrinks call by call without any one call taking long
  local budget = 2 * logged + 10
  trim_old(index, ev_prefix, ep_prefix, latest - retention, budget)
  for j in pairs(touched) do
    cap(index, ev_prefix, ep_prefix, KEYS[first + 3 * (j - 1) + 2], most, budget)
  end
end
