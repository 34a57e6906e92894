-- One more read of an account failed (5xx, timeout): its run of failures grows, fenced by
-- the lease of the read that failed: a read whose account was forgotten meanwhile
-- (LinkedAccountStore.forget removes its schedule entries before its failure count) counts
-- nothing, so a re-linked account starts no run part-way in.
-- KEYS: [1] the read's schedule zset, [2] failing accounts hash
-- ARGV: [1] the read's member, [2] token held, [3] account id, [4] the hash's TTL (s)
-- Returns: the account's failures in a row, 0 the lease was lost (nothing written)
--!include fence.lua
if not held(KEYS[1], ARGV[1], ARGV[2]) then return 0 end
local count = redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
redis.call('EXPIRE', KEYS[2], ARGV[4])
return count
