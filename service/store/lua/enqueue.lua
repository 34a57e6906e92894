-- Library part (included, not run alone): queue outgoing events, each once.
-- enqueue(k, i, skip) → the index of the argument after the events read.
-- KEYS[k], KEYS[k+1], ... are (due zset, body hash) pairs, one per endpoint, up to the last
-- key; ARGV[i] on is, per endpoint: n, then n × (event id, body, due ms). `skip`: read past
-- them, queue nothing.
-- The same event id committed twice (a poll replayed after a crash) is queued once.
local function enqueue(k, i, skip)
  while k <= #KEYS do
    local count = tonumber(ARGV[i]); i = i + 1
    for _ = 1, count do
      if not skip and redis.call('HSETNX', KEYS[k + 1], ARGV[i], ARGV[i + 1]) == 1 then
        redis.call('ZADD', KEYS[k], ARGV[i + 2], ARGV[i])
      end
      i = i + 3
    end
    k = k + 2
  end
  return i
end
