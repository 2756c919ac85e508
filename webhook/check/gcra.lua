-- GCRA over every budget of one check, atomically: the check counts against
-- all of them or none. ARGV[2i-1] is budget KEYS[i]'s rate a minute and
-- ARGV[2i] how many checks the caller would take from it at once (a lease:
-- more than one only for a check with a single budget; as many as fit are
-- granted, at least one). A budget's value is its theoretical arrival time
-- (TAT) in microseconds on Redis's clock; a missing key is a whole budget.
-- Returns {allowed, binding budget (1-based), remaining after, reset in µs
-- from now, retry-after in µs, checks granted}: for a refusal the budget
-- that waits longest, else the one with the least left.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local period = 60000000
local next = {}
local granted = 0
local best, bestLeft, bestReset = 0, -1, 0
local worst, worstRetry, worstReset = 0, -1, 0
for i = 1, #KEYS do
  local limit = tonumber(ARGV[2 * i - 1])
  if limit < 1 then limit = 1 end
  local want = tonumber(ARGV[2 * i])
  if want < 1 then want = 1 end
  local emission = math.floor(period / limit)
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  local fit = math.floor((now + period - tat) / emission)
  if fit < 1 then
    local allowAt = tat + emission - period
    if allowAt - now > worstRetry then
      worst, worstRetry, worstReset = i, allowAt - now, tat - now
    end
  else
    local take = want
    if take > fit then take = fit end
    local n = tat + take * emission
    local left = math.floor((now + period - n) / emission)
    if left > limit then left = limit end
    if bestLeft < 0 or left < bestLeft then
      best, bestLeft, bestReset = i, left, n - now
    end
    next[i] = n
    if i == 1 then granted = take end
  end
end
if worst > 0 then
  return {0, worst, 0, worstReset, worstRetry, 0}
end
for i = 1, #KEYS do
  -- The key goes once its budget is whole again.
  redis.call('SET', KEYS[i], string.format('%.0f', next[i]), 'PX', math.floor((next[i] - now) / 1000) + 1000)
end
return {1, best, bestLeft, bestReset, 0, granted}
