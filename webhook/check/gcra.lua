-- GCRA over every budget of one check, atomically: the check counts against
-- all of them or none. KEYS[i] is a budget, ARGV[i] its rate a minute.
-- A budget's value is its theoretical arrival time (TAT) in microseconds on
-- Redis's clock; a missing key is a whole budget. Returns
-- {allowed, binding budget (1-based), remaining, reset in µs from now,
-- retry-after in µs}: for a refusal the budget that waits longest, else the
-- one with the least left.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local period = 60000000
local next = {}
local best, bestLeft, bestReset = 0, -1, 0
local worst, worstRetry, worstReset = 0, -1, 0
for i = 1, #KEYS do
  local limit = tonumber(ARGV[i])
  if limit < 1 then limit = 1 end
  local emission = math.floor(period / limit)
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  local n = tat + emission
  local allowAt = n - period
  if now < allowAt then
    if allowAt - now > worstRetry then
      worst, worstRetry, worstReset = i, allowAt - now, tat - now
    end
  else
    local left = math.floor((now + period - n) / emission)
    if left > limit then left = limit end
    if bestLeft < 0 or left < bestLeft then
      best, bestLeft, bestReset = i, left, n - now
    end
  end
  next[i] = n
end
if worst > 0 then
  return {0, worst, 0, worstReset, worstRetry}
end
for i = 1, #KEYS do
  -- The key goes once its budget is whole again.
  redis.call('SET', KEYS[i], string.format('%.0f', next[i]), 'PX', math.floor((next[i] - now) / 1000) + 1000)
end
return {1, best, bestLeft, bestReset, 0}
