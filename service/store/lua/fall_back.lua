-- A `strategy: auto` account falls back to per-user polling, fenced by the lease of the
-- feed read that found the feed unserved: a read whose account was forgotten meanwhile
-- writes no fallback, which never expires and nothing would clear.
-- KEYS: [1] the read's schedule zset, [2] feed fallbacks hash
-- ARGV: [1] the read's member, [2] token held, [3] account id, [4] the fallback (JSON)
-- Returns: 1 written, 0 the lease was lost (nothing written)
--!include fence.lua
if not held(KEYS[1], ARGV[1], ARGV[2]) then return 0 end
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
return 1
