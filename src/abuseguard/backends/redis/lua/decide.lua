-- abuseguard: every shared step of one request, atomically, on Redis server time.
--
-- The caller (abuseguard.backends.redis.backend) has already scored the request in-process; this
-- script applies the limits of one identity and returns what the decision and the
-- RateLimit headers need. Keys of one identity share a hash tag ({k:<hash>} or
-- {i:<ip>}), so in Redis Cluster the whole call lands on one slot. Keys of other
-- identities (network buckets, fan-in sketches) are only passed here on a standalone
-- server; in a cluster they are sent in background batches with `force` set.
--
-- ARGV (few strings: every argument costs the client more than the script's parsing):
--   1 now      seconds; "" = use the server clock (TIME)
--   2 header   fixed width: six flag characters ('0'/'1') serves gate override ban_check
--              ban_gate force, then n_sketch n_bucket n_quota n_conc as two digits each,
--              then ban_ms (e.g. "1110000001000030000" bans for 30 s)
--        serves     1 when the request, if affordable, is served (buckets are charged)
--        gate       1 when quotas and concurrency apply (the local verdict is no denial)
--        override   1 when a bucket denial replaces the local verdict (throttle): the gate
--                   then stays open only if every denied bucket is in shadow mode
--        ban_check  1: look up the ban key (first of KEYS when ban_check or ban_ms)
--        ban_gate   1: a banned identity still gets quotas and concurrency (shadow mode)
--        force      1: charge buckets even when short (background batches: already served)
--        ban_ms     > 0: ban the identity for that long now (its ladder reached the ban)
--   then one string per op, in this order (space-separated fields):
--   sketch  KEYS cur, prev     "ttl_ms item item ..."
--   bucket  KEYS key           "rate burst cost ttl_rate shadow"
--   quota   KEYS key           "strategy amount window_seconds cost flags"
--                              (strategy 1 fixed window, 2 sliding window counter; flags
--                              1 shadow mode, + 2 asked whatever the gate: a route or
--                              plan quota, tested as the memory backend tests it before
--                              anything else, counted only with a served request)
--   conc    KEYS key           "limit lease_id lease_ttl_ms flags" (flags as a quota's:
--                              1 shadow mode, + 2 asked whatever the gate, a lease taken
--                              only with a served request)
--
-- A refused request costs nothing: every limit is asked first, and the buckets are charged,
-- the quotas counted and the lease taken only when none of them refuses (a limit refusing
-- in shadow mode does not refuse). Shadowed buckets that cannot afford the request are
-- charged anyway: the request is served.
--
-- Reply: {status, now, ban_seconds_left, sketch estimates..., denied_mask, charged, retry,
--         tokens per bucket..., per quota: ran, ok, remaining, reset ..., per conc: ran,
--         acquired (1 taken, 2 full: it refused, or in shadow mode would have)}. status 0: not banned; 1: banned, nothing else was done (the reply
--         ends after ban_seconds_left); 2: banned, quotas and concurrency still applied.
-- Floats travel as strings: Lua numbers would be truncated to integers in the reply.

local function num(s) return tonumber(s) end
local function fmt(x) return string.format('%.17g', x) end
local function fields(s)
    local t = {}
    for w in string.gmatch(s, '%S+') do t[#t + 1] = w end
    return t
end

local now = num(ARGV[1])
if now == nil then
    local t = redis.call('TIME')
    now = num(t[1]) + num(t[2]) / 1000000
end
local h = ARGV[2]
local byte, sub = string.byte, string.sub
local serves, gate, override = byte(h, 1) == 49, byte(h, 2) == 49, byte(h, 3) == 49
local ban_check, ban_gate, force = byte(h, 4) == 49, byte(h, 5) == 49, byte(h, 6) == 49
local n_sketch, n_bucket = num(sub(h, 7, 8)), num(sub(h, 9, 10))
local n_quota, n_conc = num(sub(h, 11, 12)), num(sub(h, 13, 14))
local ban_ms = num(sub(h, 15))
local a = 3
local k = 1
local out = {0, fmt(now), '0'}
local banned = false

if ban_ms > 0 or ban_check then
    local key = KEYS[k]
    k = k + 1
    if ban_ms > 0 then
        redis.call('SET', key, fmt(now + ban_ms / 1000), 'PX', math.ceil(ban_ms))
    else
        local until_ts = num(redis.call('GET', key) or '0')
        if until_ts > now then
            if not ban_gate then
                return {1, fmt(now), fmt(until_ts - now)}
            end
            banned = true
            out[1] = 2
            out[3] = fmt(until_ts - now)
        end
    end
end

-- Sketches (HyperLogLog): add the items to the current half, count the union of both.
for _ = 1, n_sketch do
    local cur, prev = KEYS[k], KEYS[k + 1]
    local f = fields(ARGV[a])
    a = a + 1
    k = k + 2
    if not banned and #f > 1 then
        if redis.call('PFADD', cur, unpack(f, 2)) == 1 then
            redis.call('PEXPIRE', cur, num(f[1]))
        end
    end
    out[#out + 1] = redis.call('PFCOUNT', cur, prev)
end

-- Token buckets: refill all; charged (below) only when the request is served: every bucket
-- can afford it or refused it in shadow mode, and no quota or concurrency limit refuses it.
-- Nothing is written before everything is decided: a refused request costs nothing.
local denied, retry = 0, 0
local bkeys, tokens, tstamp, rates, bursts, costs, ttl_rates = {}, {}, {}, {}, {}, {}, {}
local all_shadow = true
for i = 1, n_bucket do
    local key = KEYS[k]
    k = k + 1
    local r, b, c, t, sh = string.match(ARGV[a], '^(%S+) (%S+) (%S+) (%S+) (%d)$')
    a = a + 1
    local rate, burst, cost, ttl_rate = num(r), num(b), num(c), num(t)
    local shadow = sh == '1'
    local tk, ts = burst, now
    local v = redis.call('GET', key)
    if v then
        local t1, t2 = string.match(v, '^(%S+) (%S+)')  -- synced mode may append more
        tk, ts = num(t1), num(t2)
    end
    local elapsed = now - ts
    if elapsed > 0 then
        tk = tk + elapsed * rate
        if tk > burst then tk = burst end
        ts = now
    end
    local need = cost
    if need > burst then need = burst end
    if tk < need and not banned then
        denied = denied + 2 ^ (i - 1)
        if not shadow then all_shadow = false end
        local wait = (need - tk) / rate
        if wait > retry then retry = wait end
    end
    bkeys[i], tokens[i], tstamp[i], rates[i], bursts[i], costs[i], ttl_rates[i] = key, tk, ts, rate, burst, cost, ttl_rate
end
local admit = not banned and serves and all_shadow
local bucket_out = #out + 1
out[bucket_out] = denied
out[bucket_out + 1] = 0
out[bucket_out + 2] = fmt(retry)
for i = 1, n_bucket do out[bucket_out + 2 + i] = '0' end
if denied ~= 0 and override then gate = all_shadow end
if banned then gate = true end

-- Window quotas, `limits` semantics: a fixed window starts at its first hit and counts
-- every hit of a served request (INCRBY, EXPIRE on the first); a sliding window counter
-- weighs the previous fixed window by the share of it still inside the sliding window.
-- Asked first, counted below only for a served request. Any quota that refuses and is not
-- in shadow mode refuses the request, whichever was asked first (an app-wide one is asked
-- only while the gate is open, a route or plan one, flags >= 2, whatever the gate); quotas
-- that refuse in shadow mode only are reported and the request served, as the guard's
-- decision does with the quotas' answers.
local refuses = false
local quotas = {}
for q = 1, n_quota do
    local key = KEYS[k]
    k = k + 1
    local st, am, w, c, fl = string.match(ARGV[a], '^(%d) (%S+) (%S+) (%S+) (%d)$')
    a = a + 1
    local strategy, amount, window, cost, flags = num(st), num(am), num(w), num(c), num(fl)
    local shadow = flags % 2 == 1
    local asked = gate or flags >= 2
    local quota = {key = key, strategy = strategy, amount = amount, window = window, cost = cost, ok = true, ran = asked}
    quotas[q] = quota
    if asked then
        if strategy == 1 then
            quota.ok = cost <= 0 or num(redis.call('GET', key) or '0') + cost <= amount
        elseif cost > 0 then
            local idx = math.floor(now / window)
            local cur = num(redis.call('HGET', key, string.format('%d', idx)) or '0')
            local prev = num(redis.call('HGET', key, string.format('%d', idx - 1)) or '0')
            local prev_ttl = 0
            if prev ~= 0 then prev_ttl = (1 - (((now - window) / window) % 1)) * window end
            quota.ok = cost <= amount and math.floor(prev * prev_ttl / window + cur) + cost <= amount
        end
        if not quota.ok and not shadow then refuses = true end
    end
end
if refuses then gate = false end

-- Concurrency: a sorted set of leases scored by their expiry; expired leases (a worker
-- that died holding them) are dropped before counting.
local concs = {}
for c = 1, n_conc do
    local key = KEYS[k]
    k = k + 1
    local l, lease, t, fl = string.match(ARGV[a], '^(%S+) (%S+) (%S+) (%d)$')
    a = a + 1
    local limit, ttl, flags = num(l), num(t), num(fl)
    local asked = gate or flags >= 2
    local conc = {key = key, lease = lease, ttl = ttl, ran = asked, acquired = false, full = false}
    concs[c] = conc
    if asked then
        redis.call('ZREMRANGEBYSCORE', key, '-inf', now * 1000)
        if redis.call('ZCARD', key) < limit then
            conc.acquired = true
        else
            conc.full = true
            if flags % 2 == 0 then gate = false end
        end
    end
end

-- Served (or a background batch, already served): charge and count. Refused: nothing.
local served = gate
local charged = force or (admit and gate)
if charged then
    out[bucket_out + 1] = 1
    for i = 1, n_bucket do tokens[i] = tokens[i] - costs[i] end
end
for i = 1, n_bucket do
    local tk = tokens[i]
    out[bucket_out + 2 + i] = fmt(tk)
    if tk < bursts[i] then
        local ttl = math.ceil((bursts[i] - tk) / ttl_rates[i] * 1000) + 1000
        redis.call('SET', bkeys[i], fmt(tk) .. ' ' .. fmt(tstamp[i]), 'PX', ttl)
    else
        redis.call('DEL', bkeys[i])
    end
end
for q = 1, n_quota do
    local quota = quotas[q]
    local key, strategy, amount, window, cost = quota.key, quota.strategy, quota.amount, quota.window, quota.cost
    if not quota.ran then
        out[#out + 1] = 0; out[#out + 1] = 0; out[#out + 1] = '0'; out[#out + 1] = '0'
    else
        local remaining, reset = 0, 0
        if strategy == 1 then
            local value
            if served and cost > 0 then
                value = redis.call('INCRBY', key, cost)
                if value == cost then redis.call('PEXPIRE', key, math.ceil(window * 1000)) end
            else
                value = num(redis.call('GET', key) or '0')
            end
            remaining = amount - value
            if remaining < 0 then remaining = 0 end
            local pttl = redis.call('PTTL', key)
            if pttl > 0 then reset = pttl / 1000 end
        else
            local idx = math.floor(now / window)
            local cur_f, prev_f = string.format('%d', idx), string.format('%d', idx - 1)
            local cur = num(redis.call('HGET', key, cur_f) or '0')
            local prev = num(redis.call('HGET', key, prev_f) or '0')
            local prev_ttl = 0
            if prev ~= 0 then prev_ttl = (1 - (((now - window) / window) % 1)) * window end
            if served and cost > 0 and quota.ok then
                cur = redis.call('HINCRBY', key, cur_f, cost)
                redis.call('HDEL', key, string.format('%d', idx - 2))
                redis.call('PEXPIRE', key, math.ceil(2 * window * 1000))
            end
            remaining = amount - math.floor(prev * prev_ttl / window + cur)
            if remaining < 0 then remaining = 0 end
            if prev ~= 0 or cur ~= 0 then
                local best = math.huge
                if prev ~= 0 then best = prev_ttl % (window / prev) end
                if cur ~= 0 then
                    local cur_ttl = (1 - ((now / window) % 1)) * window + window
                    local r = cur_ttl % window
                    if r < best then best = r end
                end
                reset = best
                if reset > window then reset = window end
                if reset < 0 then reset = 0 end
            end
        end
        out[#out + 1] = 1
        out[#out + 1] = quota.ok and 1 or 0
        out[#out + 1] = fmt(remaining)
        out[#out + 1] = fmt(reset)
    end
end
for c = 1, n_conc do
    local conc = concs[c]
    if not conc.ran then
        out[#out + 1] = 0; out[#out + 1] = 0
    else
        local acquired = 0
        if conc.acquired and served then
            redis.call('ZADD', conc.key, now * 1000 + conc.ttl, conc.lease)
            redis.call('PEXPIRE', conc.key, conc.ttl)
            acquired = 1
        elseif conc.full then
            acquired = 2
        end
        out[#out + 1] = 1
        out[#out + 1] = acquired
    end
end
return out
