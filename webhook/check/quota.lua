-- One use of a quota, atomically: INCR the period's count, and on the first
-- use give the key its expiry (ARGV[1] milliseconds; 0 keeps it, for a
-- quota without refill). Returns the count, this use included.
local n = redis.call('INCR', KEYS[1])
if n == 1 and tonumber(ARGV[1]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return n
