-- Gives back units that check_all.lua charged to a request that then did not go ahead (refused
-- by a later step, such as a concurrency limit). Mirrors algo.rs `refund`, with Redis' clock.
-- KEYS: the counter hash each limit was charged to (the requester's group key for a shared
-- limit), all in one hash slot.
-- ARGV: per limit: kind, a, cost
--   kind 'f' fixed aligned window: a = window length ms
--   kind 'm' calendar window:      a = 'e1,...,e6' window edges (as for check_all.lua)
--   kind 's' sliding window:       a = window ms
--   kind 'g' GCRA:                 a = emission interval us
-- The state is only changed if it is of that kind and its window is still current (sliding:
-- current or previous sub-window); counts never drop below 0; the TTL is kept. Returns the
-- number of counters changed.
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now = math.floor(now_us / 1000)
local changed = 0
for i = 1, #KEYS do
  local kind, pa, cost = ARGV[3 * i - 2], ARGV[3 * i - 1], tonumber(ARGV[3 * i])
  local st = redis.call('HMGET', KEYS[i], 'k', 'a', 'b')
  if st[1] == kind and cost > 0 then
    local a, b = tonumber(st[2]) or 0, tonumber(st[3]) or 0
    if kind == 'f' or kind == 'm' then
      local s
      if kind == 'f' then
        local w = tonumber(pa)
        s = now - (now % w)
      else
        local es = {}
        for v in string.gmatch(pa, '[^,]+') do table.insert(es, tonumber(v)) end
        for k = 1, #es - 1 do
          if es[k] <= now and now < es[k + 1] then s = es[k] end
        end
      end
      if s ~= nil and a == s then
        redis.call('HSET', KEYS[i], 'b', string.format('%.0f', math.max(b - cost, 0)))
        changed = changed + 1
      end
    elseif kind == 's' then
      local w = tonumber(pa)
      local cs = now - (now % w)
      if a == cs or a + w == cs then
        redis.call('HSET', KEYS[i], 'b', string.format('%.0f', math.max(b - cost, 0)))
        changed = changed + 1
      end
    elseif kind == 'g' then
      local tat = math.max(a - tonumber(pa) * cost, now_us)
      redis.call('HSET', KEYS[i], 'a', string.format('%.0f', tat))
      changed = changed + 1
    end
  end
end
return changed
