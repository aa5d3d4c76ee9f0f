-- Decides every limit of one request atomically with Redis' own clock. Mirrors src/algo.rs.
-- KEYS[i]: counter hash of limit i (all in one hash slot).
-- ARGV[1]: '1' to charge when all limits allow, '0' to peek.
-- ARGV[2 + 5*(i-1) ...]: kind, limit, a, b, cost
--   kind 'f' fixed aligned window: a = window length ms
--   kind 'm' calendar month:       a = UTC offset minutes, b = renewal day
--   kind 's' sliding window:       a = window ms
--   kind 'g' GCRA:                 limit = burst, a = emission interval us
-- Hash fields: k = kind, a/b/c = state (fixed: start, count; sliding: start, cur, prev;
-- GCRA: tat in us). Returns 5 integers per limit: allowed, limit, remaining, reset ms, retry ms.
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now = math.floor(now_us / 1000)
local DAY = 86400000
-- Caps TTLs so absurd parameters never make PEXPIRE reject the write.
local MAX_TTL = 400 * DAY

local function dfc(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

local function cfd(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m
  if mp < 10 then m = mp + 3 else m = mp - 9 end
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m
end

local function dim(y, m)
  if m == 2 then
    if (y % 4 == 0 and y % 100 ~= 0) or y % 400 == 0 then return 29 end
    return 28
  end
  if m == 4 or m == 6 or m == 9 or m == 11 then return 30 end
  return 31
end

local function renewal(y, m, rd)
  return dfc(y, m, math.min(rd, dim(y, m)))
end

local function month_bounds(off, rd)
  if rd < 1 then rd = 1 end
  if rd > 31 then rd = 31 end
  local offms = off * 60000
  local day = math.floor((now + offms) / DAY)
  local y, m = cfd(day)
  local this = renewal(y, m, rd)
  local s, e
  if day >= this then
    local ny, nm = y, m + 1
    if nm == 13 then ny, nm = y + 1, 1 end
    s, e = this, renewal(ny, nm, rd)
  else
    local py, pm = y, m - 1
    if pm == 0 then py, pm = y - 1, 12 end
    s, e = renewal(py, pm, rd), this
  end
  return s * DAY - offms, e * DAY - offms
end

-- Returns allowed, remaining, reset, retry and the state to write {a, b, c, ttl_ms}.
local function eval(kind, limit, pa, pb, cost, sa, sb, sc)
  if kind == 'f' or kind == 'm' then
    local s, e
    if kind == 'f' then
      s = now - (now % pa)
      e = s + pa
    else
      s, e = month_bounds(pa, pb)
    end
    local count = 0
    if sa == s then count = sb end
    local reset = e - now
    local allowed = count + cost <= limit
    local used = count
    if allowed then used = count + cost end
    local retry = 0
    if not allowed then retry = reset end
    return allowed, math.max(limit - used, 0), reset, retry, {s, used, 0, reset}
  elseif kind == 's' then
    local w = pa
    local cs = now - (now % w)
    local cur, prev = 0, 0
    if sa == cs then
      cur, prev = sb, sc
    elseif sa + w == cs then
      prev = sb
    end
    local el = now - cs
    local est = math.ceil(prev * (w - el) / w) + cur
    local allowed = est + cost <= limit
    local ncur, used = cur, est
    if allowed then
      ncur = cur + cost
      used = est + cost
    end
    local tonext = w - el
    local reset = 0
    if ncur > 0 then reset = tonext + w elseif prev > 0 then reset = tonext end
    local retry = 0
    if not allowed then
      if cost > limit then
        retry = reset
      elseif cur + cost <= limit and prev > 0 then
        local ml = math.min(math.floor((limit - cur - cost) * w / prev), w)
        retry = math.max(tonext - ml, 1)
      elseif cur == 0 then
        retry = tonext
      else
        local ml = math.min(math.floor((limit - cost) * w / cur), w)
        retry = tonext + (w - ml)
      end
    end
    return allowed, math.max(limit - used, 0), reset, retry, {cs, ncur, prev, cs + 2 * w - now}
  else
    local T = pa
    local tau = T * limit
    local base = math.max(sa, now_us)
    local ntat = base + T * cost
    local allow_at = ntat - tau
    local allowed = allow_at <= now_us
    local stored = base
    if allowed then stored = ntat end
    local rem = math.max(math.floor((now_us + tau - stored) / T), 0)
    local reset = math.ceil((stored - now_us) / 1000)
    local retry = 0
    if not allowed then retry = math.max(math.ceil((allow_at - now_us) / 1000), 1) end
    return allowed, rem, reset, retry, {stored, 0, 0, reset}
  end
end

local n = #KEYS
local args, states, res = {}, {}, {}
local all = true
for i = 1, n do
  local b = 2 + (i - 1) * 5
  local a = {ARGV[b], tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]),
    tonumber(ARGV[b + 4])}
  local st = redis.call('HMGET', KEYS[i], 'k', 'a', 'b', 'c')
  local s = {0, 0, 0}
  if st[1] == a[1] then
    s = {tonumber(st[2]) or 0, tonumber(st[3]) or 0, tonumber(st[4]) or 0}
  end
  local ok, rem, reset, retry, w = eval(a[1], a[2], a[3], a[4], a[5], s[1], s[2], s[3])
  args[i], states[i] = a, s
  res[i] = {ok, rem, reset, retry, w}
  all = all and ok
end

local out = {}
for i = 1, n do
  local a, s, r = args[i], states[i], res[i]
  local ok, rem, reset, retry = r[1], r[2], r[3], r[4]
  if not all and ok then
    -- Another limit denied: nothing is charged, so report this one as it stands.
    local _, rem0, reset0, retry0 = eval(a[1], a[2], a[3], a[4], 0, s[1], s[2], s[3])
    ok, rem, reset, retry = false, rem0, reset0, retry0
  end
  if all and ARGV[1] == '1' then
    local w = r[5]
    local ttl = math.min(math.max(w[4], 1), MAX_TTL)
    redis.call('HSET', KEYS[i], 'k', a[1], 'a', string.format('%.0f', w[1]),
      'b', string.format('%.0f', w[2]), 'c', string.format('%.0f', w[3]))
    redis.call('PEXPIRE', KEYS[i], string.format('%.0f', ttl))
  end
  local flag = 0
  if ok then flag = 1 end
  table.insert(out, flag)
  table.insert(out, a[2])
  table.insert(out, rem)
  table.insert(out, reset)
  table.insert(out, retry)
end
return out
