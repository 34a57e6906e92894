-- What a poll needs before it reads upstream, in one round trip: the permit for its first
-- request, the user's state and its snapshots.
-- KEYS: [1] user state hash, [2] snapshots, [3] rate key, [4] pause key,
--       [5] 0.1's snapshot hash (read only while [2] is missing)
-- ARGV: [1] emission ms, [2] tolerance ms (the budget, as gcra.lua reads it)
-- Returns: {ms to wait for the permit (0: granted), the state hash as a flat list,
--           the snapshots or false, 0.1's hash as a flat list (empty unless [2] is missing)}
--!include gcra.lua
local wait = acquire(KEYS[3], KEYS[4], ARGV[1], ARGV[2])
local snaps = redis.call('GET', KEYS[2])
local legacy = {}
if not snaps then legacy = redis.call('HGETALL', KEYS[5]) end
return {wait, redis.call('HGETALL', KEYS[1]), snaps, legacy}
