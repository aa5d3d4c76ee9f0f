-- Decides every limit of one request atomically with Redis' own clock. Mirrors src/algo.rs.
-- KEYS: the counter hashes of every limit, in order (all in one hash slot): one key for a plain
--   limit, one key per share group (in group order) for a shared limit.
-- ARGV[1]: '1' to charge when all limits allow, '0' to peek.
-- Then per limit: kind, limit, a, b, cost, n, me, borrow, g_1 .. g_n
--   kind 'f' fixed aligned window: a = window length ms
--   kind 'm' calendar (a time zone's day or month): a = the edges of six consecutive windows
--                                  around the gateway's clock, 'e1,...,e6' in ms (algo.rs
--                                  calendar_edges); the window is the one holding Redis' time
--   kind 's' sliding window:       a = window ms
--   kind 'g' GCRA:                 limit = burst, a = emission interval us
--   n = 0 for a plain limit; else the number of share groups, me = the requester's group
--   (1-based), borrow = '1' (unallocated capacity and idle groups' guarantees), 'u' (only
--   unallocated capacity) or '0' (none), g_j = group j's guarantee in units.
-- Hash fields: k = kind, a/b/c = state (fixed: start, count; sliding: start, cur, prev;
-- GCRA: tat in us); share groups also d = when the group was last charged or refused (ms). Returns 5 integers per limit: allowed, limit, remaining, reset ms, retry ms.
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now = math.floor(now_us / 1000)
local DAY = 86400000
-- Caps TTLs so absurd parameters never make PEXPIRE reject the write.
local MAX_TTL = 400 * DAY

-- The calendar window [s, e) holding `at` among the edges `es` (algo.rs calendar_edges), with
-- the previous window's start and the next one's end. The gateway computes the edges (Lua has
-- no time-zone database) around its own clock; Redis' clock picks the window. A clock
-- difference of more than one window is refused, so the caller fails open or closed.
local function cal(es, at)
  for k = 2, 4 do
    if es[k] <= at and at < es[k + 1] then return es[k], es[k + 1], es[k - 1], es[k + 2] end
  end
  return error('calendar edges do not cover the Redis clock: gateway and Redis clocks differ too much')
end

-- Earliest wait after which `cost` more units fit under `limit` for sliding counters
-- (cur, prev) that do not fit now, with no other traffic; nil if never (algo.rs sliding_retry).
local function sretry(limit, w, cur, prev, el, cost)
  if cost > limit then return nil end
  local tonext = w - el
  if cur + cost <= limit and prev > 0 then
    local ml = math.min(math.floor((limit - cur - cost) * w / prev), w)
    return math.max(tonext - ml, 1)
  end
  if cur == 0 then return tonext end
  local ml = math.min(math.floor((limit - cost) * w / cur), w)
  return tonext + (w - ml)
end

-- Like sretry, but 0 when the units fit now (algo.rs sliding_wait).
local function swait(limit, w, cur, prev, el, cost)
  if math.ceil(prev * (w - el) / w) + cur + cost <= limit then return 0 end
  return sretry(limit, w, cur, prev, el, cost)
end

-- Returns allowed, remaining, reset, retry and the state to write {a, b, c, ttl_ms}.
local function eval(kind, limit, pa, pb, cost, sa, sb, sc)
  if kind == 'f' or kind == 'm' then
    local s, e
    if kind == 'f' then
      s = now - (now % pa)
      e = s + pa
    else
      s, e = cal(pa, now)
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
    if not allowed then retry = sretry(limit, w, cur, prev, el, cost) or reset end
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

-- The share admission rule (algo.rs share_fit): returns allowed and what the group could still
-- take after the charge.
local function fit(limit, gme, usedme, total, reserved, borrow, cost)
  -- borrow: whether lending is on at all (mode '1' or 'u').
  local own = usedme + cost <= gme and total + cost <= limit
  local lent = borrow and total + cost + reserved <= limit
  local ok = cost == 0 or own or lent
  local u, tt = usedme, total
  if ok then u, tt = usedme + cost, total + cost end
  local rem = math.min(math.max(gme - u, 0), math.max(limit - tt, 0))
  if borrow then rem = math.max(rem, limit - tt - reserved) end
  return ok, rem
end

-- A limit split into guaranteed shares (algo.rs evaluate_shared). sts[j] = {a, b, c, d} of
-- group j, gs[j] its guarantee, me the requester's group, mode the borrow mode. Same return
-- shape as eval, the state to write also carrying d = the requester's last activity.
local function shared(kind, limit, pa, pb, cost, gs, me, mode, sts)
  local n = #sts
  local borrow = mode ~= '0'
  local seen = sts[me][4]
  if cost > 0 then seen = now end
  local function active_since(j, since)
    return sts[j][4] ~= 0 and sts[j][4] >= since
  end
  -- Others' unused guarantees that stay reserved: all of them with 'u', the active ones with '1'.
  local function reserved_of(used, active)
    local r = 0
    for j = 1, n do
      if j ~= me and (mode ~= '1' or active[j]) then r = r + math.max(gs[j] - used[j], 0) end
    end
    return r
  end
  if kind == 'f' or kind == 'm' then
    local s, e, ps, ne
    if kind == 'f' then
      s = now - (now % pa)
      e = s + pa
      ps, ne = s - pa, e + pa
    else
      s, e, ps, ne = cal(pa, now)
    end
    local used, active, total = {}, {}, 0
    for j = 1, n do
      used[j] = 0
      if sts[j][1] == s then used[j] = sts[j][2] end
      active[j] = active_since(j, ps) or (sts[j][2] > 0 and sts[j][1] >= ps)
      total = total + used[j]
    end
    local ok, rem = fit(limit, gs[me], used[me], total, reserved_of(used, active), borrow, cost)
    local reset = e - now
    local retry, mine = 0, used[me]
    if ok then mine = mine + cost else retry = math.max(reset, 1) end
    return ok, rem, reset, retry, {s, mine, 0, ne - now, seen}
  elseif kind == 's' then
    local w = pa
    local cs = now - (now % w)
    local el = now - cs
    local cur, prev, used, active = {}, {}, {}, {}
    local scur, sprev = 0, 0
    for j = 1, n do
      cur[j], prev[j] = 0, 0
      if sts[j][1] == cs then
        cur[j], prev[j] = sts[j][2], sts[j][3]
      elseif sts[j][1] + w == cs then
        prev[j] = sts[j][2]
      end
      used[j] = math.ceil(prev[j] * (w - el) / w) + cur[j]
      active[j] = active_since(j, math.max(cs - w, 0)) or cur[j] > 0 or prev[j] > 0
      scur, sprev = scur + cur[j], sprev + prev[j]
    end
    local total = math.ceil(sprev * (w - el) / w) + scur
    local reserved = reserved_of(used, active)
    local ok, rem = fit(limit, gs[me], used[me], total, reserved, borrow, cost)
    local ncur = cur[me]
    if ok then ncur = ncur + cost end
    local tonext = w - el
    local reset = 0
    if scur + (ncur - cur[me]) > 0 then reset = tonext + w elseif sprev > 0 then reset = tonext end
    local retry = 0
    if not ok then
      local best = nil
      local a = swait(gs[me], w, cur[me], prev[me], el, cost)
      local b = swait(limit, w, scur, sprev, el, cost)
      if a and b then best = math.max(a, b) end
      if borrow then
        local l = swait(math.max(limit - reserved, 0), w, scur, sprev, el, cost)
        if l and (not best or l < best) then best = l end
      end
      retry = math.max(best or reset, 1)
    end
    return ok, rem, reset, retry, {cs, ncur, prev[me], cs + 2 * w - now, seen}
  else
    return eval(kind, limit, pa, pb, cost, sts[me][1], sts[me][2], sts[me][3])
  end
end

-- Parse every limit: its arguments, its keys and their current states.
local lims = {}
local ai, ki = 2, 1
while ai <= #ARGV do
  local a = {kind = ARGV[ai], limit = tonumber(ARGV[ai + 1]), pa = tonumber(ARGV[ai + 2]),
    pb = tonumber(ARGV[ai + 3]), cost = tonumber(ARGV[ai + 4])}
  if a.kind == 'm' then
    a.pa = {}
    for v in string.gmatch(ARGV[ai + 2], '[^,]+') do table.insert(a.pa, tonumber(v)) end
    if #a.pa ~= 6 then return redis.error_reply('calendar window needs 6 edges') end
  end
  local ng = tonumber(ARGV[ai + 5])
  a.me = tonumber(ARGV[ai + 6])
  a.borrow = ARGV[ai + 7]
  ai = ai + 8
  a.gs, a.keys, a.sts = {}, {}, {}
  local nk = ng
  if ng == 0 then nk = 1 end
  for j = 1, nk do
    if ng > 0 then a.gs[j] = tonumber(ARGV[ai + j - 1]) end
    a.keys[j] = KEYS[ki]
    local st = redis.call('HMGET', KEYS[ki], 'k', 'a', 'b', 'c', 'd')
    local s = {0, 0, 0, 0}
    if st[1] == a.kind then
      s = {tonumber(st[2]) or 0, tonumber(st[3]) or 0, tonumber(st[4]) or 0, tonumber(st[5]) or 0}
    end
    a.sts[j] = s
    ki = ki + 1
  end
  ai = ai + ng
  if ng == 0 then a.me = 1 end
  table.insert(lims, a)
end

local function decide(a, cost)
  if #a.gs > 0 then
    return shared(a.kind, a.limit, a.pa, a.pb, cost, a.gs, a.me, a.borrow, a.sts)
  end
  local s = a.sts[1]
  return eval(a.kind, a.limit, a.pa, a.pb, cost, s[1], s[2], s[3])
end

local res = {}
local all = true
for i, a in ipairs(lims) do
  local ok, rem, reset, retry, w = decide(a, a.cost)
  res[i] = {ok, rem, reset, retry, w}
  all = all and ok
end

local out = {}
for i, a in ipairs(lims) do
  local r = res[i]
  local ok, rem, reset, retry = r[1], r[2], r[3], r[4]
  if not all and ok then
    -- Another limit denied: nothing is charged, so report this one as it stands.
    local _, rem0, reset0, retry0 = decide(a, 0)
    ok, rem, reset, retry = false, rem0, reset0, retry0
  end
  -- A refused request charges nothing; only a shared limit that refused it records the
  -- group's demand (d), so an idle group claims its reservation back at once.
  local refused_here = #a.gs > 0 and not r[1] and a.cost > 0
  if ARGV[1] == '1' and (all or refused_here) then
    local w = r[5]
    local ttl = math.min(math.max(w[4], 1), MAX_TTL)
    local key = a.keys[a.me]
    redis.call('HSET', key, 'k', a.kind, 'a', string.format('%.0f', w[1]),
      'b', string.format('%.0f', w[2]), 'c', string.format('%.0f', w[3]))
    if w[5] then redis.call('HSET', key, 'd', string.format('%.0f', w[5])) end
    redis.call('PEXPIRE', key, string.format('%.0f', ttl))
  end
  local flag = 0
  if ok then flag = 1 end
  table.insert(out, flag)
  table.insert(out, a.limit)
  table.insert(out, rem)
  table.insert(out, reset)
  table.insert(out, retry)
end
return out
