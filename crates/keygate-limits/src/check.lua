-- keygate: one request against all its limits, atomically; writes only if every limit allows.
--
-- KEYS[i]: the counter of check i (a key may repeat: repeated checks share the counter).
-- ARGV[1]: now in microseconds; ARGV[2]: grace in ms added to every TTL.
-- Then four arguments per check: kind ('r' rate, 'q' quota), a, b, c.
--   rate:  a = emission interval T (µs), b = tolerance (burst - 1) * T (µs), c unused (0)
--   quota: a = max, b = TTL of the key in ms (until the window's end, plus grace),
--          c = units the request spends (a weighted route's cost, >= 1)
-- Returns {committed, v1, v2, ...}: vi is the counter check i saw (a TAT in µs, `now` when
-- absent, or a count), from which the caller builds each answer with keygate-core's math.
-- Numbers stay below 2^53, where Lua's doubles are exact; they are written with %.0f.
local now = tonumber(ARGV[1])
local grace = tonumber(ARGV[2])
local seen, kind_of, ttl_of = {}, {}, {}
local out = {0}
local ok = 1
for i = 1, #KEYS do
  local key = KEYS[i]
  local j = 3 + (i - 1) * 4
  local kind, a, b, c = ARGV[j], tonumber(ARGV[j + 1]), tonumber(ARGV[j + 2]), tonumber(ARGV[j + 3])
  local v = seen[key]
  if v == nil then
    v = tonumber(redis.call('GET', key))
    if v == nil then
      if kind == 'r' then v = now else v = 0 end
    end
  end
  out[i + 1] = v
  kind_of[key] = kind
  if kind == 'r' then
    local tat = math.max(v, now)
    if tat - now <= b then
      seen[key] = tat + a
    else
      ok = 0
      seen[key] = v
    end
  else
    ttl_of[key] = b
    if v + c <= a then
      seen[key] = v + c
    else
      ok = 0
      seen[key] = v
    end
  end
end
if ok == 1 then
  for key, v in pairs(seen) do
    local ttl
    if kind_of[key] == 'r' then
      ttl = math.ceil((v - now) / 1000) + grace
    else
      ttl = ttl_of[key]
    end
    if ttl < 1 then ttl = 1 end
    redis.call('SET', key, string.format('%.0f', v), 'PX', string.format('%.0f', ttl))
  end
end
out[1] = ok
return out
