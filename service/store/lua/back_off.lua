-- Back a whole account off (its users, feed and listing wait), fenced by the lease of the
-- read that found it refused or failing: a read whose lease is gone (taken over, or its
-- account forgotten: LinkedAccountStore.forget removes every schedule entry of the account
-- before its back-off) writes nothing, so no back-off outlives a forgotten account.
-- KEYS: [1] the read's schedule zset, [2] backed-off accounts hash
-- ARGV: [1] the read's member, [2] token held, [3] account id, [4] the back-off (JSON)
-- Returns: 1 written, 0 the lease was lost (nothing written)
--!include fence.lua
if not held(KEYS[1], ARGV[1], ARGV[2]) then return 0 end
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
return 1
