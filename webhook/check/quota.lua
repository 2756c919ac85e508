-- One use of a quota, atomically: INCR the period's count, and on the first
-- use give the key its expiry (ARGV[1] milliseconds; 0 keeps it, for a
-- quota without refill). A use past the quota (ARGV[2] uses) is taken back,
-- so the count never passes the quota: raising it mid-period lets exactly
-- the difference through. Returns the count with this use, which is above
-- the quota when it was refused.
local n = redis.call('INCR', KEYS[1])
if n == 1 and tonumber(ARGV[1]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
if n > tonumber(ARGV[2]) then
  redis.call('DECR', KEYS[1])
end
return n
