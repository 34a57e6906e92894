-- An account's entry in a hash of what its reads found (its back-off, its feed's fallback to
-- per-user polling), fenced by the lease of the read that found it: a read whose lease is
-- gone (taken over, or its account forgotten: LinkedAccountStore.forget removes every
-- schedule entry of the account before these entries) writes nothing, so no entry outlives
-- a forgotten account (a fallback never expires, nothing else would clear it).
-- KEYS: [1] the read's schedule zset, [2] the hash
-- ARGV: [1] the read's member, [2] token held, [3] account id, [4] the entry (JSON)
-- Returns: 1 written, 0 the lease was lost (nothing written)
--!include fence.lua
if not held(KEYS[1], ARGV[1], ARGV[2]) then return 0 end
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
return 1
