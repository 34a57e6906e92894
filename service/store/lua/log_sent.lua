-- An event sent outside the queue (a test send) enters the delivery log with its one
-- attempt, and the log is trimmed as enqueue.lua trims it.
-- KEYS: [1] the log's index of every event, [2] the event's log hash, [3] the endpoint's
--       log index, [4] the endpoint's recent attempts
-- ARGV: [1] retention (ms), [2] cap per endpoint, [3] the hash's TTL (ms),
--       [4] LOG_EVENT_PREFIX, [5] LOG_ENDPOINT_PREFIX, [6] endpoint id, [7] event id,
--       [8] type, [9] timestamp, [10] body, [11] when logged (ms), [12] outcome (delivered
--       or dead), [13] the attempt's record
-- Returns: 1
--!include log.lua
new_event(KEYS[2], KEYS[1], ARGV[7], ARGV[11], ARGV[3], {ARGV[8], ARGV[9], '', '', ''},
          ARGV[10], {ARGV[6]}, {KEYS[3]})
recent(KEYS[4], {attempt(KEYS[2], ARGV[6], ARGV[7], ARGV[12], ARGV[13])})
trim_old(KEYS[1], ARGV[4], ARGV[5], tonumber(ARGV[11]) - tonumber(ARGV[1]), 10)
cap(KEYS[1], ARGV[4], ARGV[5], KEYS[3], tonumber(ARGV[2]), 10)
return 1
