-- keygate: connection leases on one sorted set (member = lease id, score = expiry in ms).
--
-- KEYS[1]: the lease set. ARGV: op ('acquire' | 'renew' | 'release' | 'count'), now (ms),
-- lease id, expiry (ms), max, grace (ms).
-- Expired leases (score <= now) are removed first; after an acquire or renew the key's TTL
-- follows its last expiry (a release only shortens the set, so its TTL stays valid).
-- Returns {result, live}: acquire → {allowed, live leases other than this id};
-- renew / release → {1 if held, live}; count → {live, live}.
local key = KEYS[1]
local op, now, id = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local grace = tonumber(ARGV[6])
redis.call('ZREMRANGEBYSCORE', key, '-inf', string.format('%.0f', now))
local held = redis.call('ZSCORE', key, id)
local live = redis.call('ZCARD', key)
local result
if op == 'acquire' then
  local others = live
  if held then others = live - 1 end
  if others < tonumber(ARGV[5]) then
    redis.call('ZADD', key, ARGV[4], id)
    result = 1
  else
    result = 0
  end
  live = others
elseif op == 'renew' then
  if held then
    redis.call('ZADD', key, 'XX', ARGV[4], id)
    result = 1
  else
    result = 0
  end
elseif op == 'release' then
  result = redis.call('ZREM', key, id)
  live = live - result
else
  result = live
end
if result == 1 and (op == 'acquire' or op == 'renew') then
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  local ttl = tonumber(last[2]) - now + grace
  if ttl < 1 then ttl = 1 end
  redis.call('PEXPIRE', key, string.format('%.0f', ttl))
end
return {result, live}
