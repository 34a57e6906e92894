-- Pause everyone who checks a pause key (a Retry-After); extends a pause, never shortens it.
-- KEYS: [1] pause key
-- ARGV: [1] ms
-- Returns: 1
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
return 1
