-- One use of a token's quota, atomically. KEYS[1] holds the period being
-- counted: e, when it ends (Unix milliseconds; 0: never, a quota without
-- refill), and u, the uses counted in it. ARGV: now (ms), the quota's uses,
-- the end of the period the quota gives now (ms; 0 without refill), and how
-- long to keep the key past its end (ms).
--
-- A period is counted until it ends, whatever the quota says meanwhile: a
-- changed refill takes effect at the next period, so editing it never
-- starts a fresh count. A lifetime count that gets a refill becomes the
-- current period's. A refused use counts nothing, so raising the quota
-- mid-period lets exactly the difference through.
-- Returns {1 if allowed else 0, uses counted, the period's end}.
local now, uses, fresh = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local st = redis.call('HMGET', KEYS[1], 'e', 'u')
local e, u = tonumber(st[1]), tonumber(st[2])
if e == nil or u == nil then
  e, u = fresh, 0
elseif e == 0 then
  if fresh ~= 0 then e = fresh end
elseif now >= e then
  e, u = fresh, 0
end
local allowed = 0
if u < uses then
  u = u + 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'e', e, 'u', u)
if e > 0 then
  -- Relative to the replica's clock, as the period is.
  redis.call('PEXPIRE', KEYS[1], math.max(e - now, 0) + tonumber(ARGV[4]))
else
  redis.call('PERSIST', KEYS[1])
end
return {allowed, u, e}
