-- One permit of a shared rate.
-- KEYS: [1] rate key, [2] pause key
-- ARGV: [1] emission ms, [2] tolerance ms
-- Returns: ms to wait (0: granted)
--!include gcra.lua
return acquire(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
