-- An event sent outside the queue (a test send) enters the delivery log with its one
-- attempt (its body kept whole: it shares nothing), and the log is trimmed as enqueue.lua
-- trims it.
-- KEYS: [1] the log's index of every event, [2] the endpoint's log index, [3] the
--       endpoint's recent attempts
-- ARGV: [1] retention (ms), [2] cap per endpoint, [3] the hash's TTL (ms),
--       [4] LOG_EVENT_PREFIX, [5] LOG_ENDPOINT_PREFIX, [6] endpoint id, [7] event id,
--       [8] its log head (the hash's field h), [9] body, [10] when logged (ms),
--       [11] outcome (delivered or dead), [12] the attempt's record
-- Returns: 1
--!include log.lua
local hash = ARGV[4] .. ARGV[7]
new_event(hash, KEYS[1], ARGV[7], ARGV[10], ARGV[3], ARGV[8], {'b', ARGV[9]}, {ARGV[6]}, {KEYS[2]})
recent(KEYS[3], {attempt(hash, ARGV[6], ARGV[7], ARGV[11], ARGV[12])})
trim_old(KEYS[1], ARGV[4], ARGV[5], tonumber(ARGV[10]) - tonumber(ARGV[1]), 10)
cap(KEYS[1], ARGV[4], ARGV[5], ARGV[6], tonumber(ARGV[2]), 10)
return 1
