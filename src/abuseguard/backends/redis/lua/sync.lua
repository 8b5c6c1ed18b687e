-- abuseguard: merge one worker's local bucket consumption into the shared buckets (synced
-- mode) and answer the shared state, for many identities in one call.
--
-- A bucket's value starts like decide.lua's ("tokens timestamp", Redis time), so inline
-- and synced workers may share one Redis (decide.lua reads the first two fields), and
-- goes on with the workers that synced it within the share window: " id@seconds" each
-- (at most 64). Their number says how many workers share its tokens.
--
-- ARGV: 1 now (seconds; "" = the server clock), 2 worker id, 3 share window (seconds),
-- 4 ban_ms (0: no bans in this policy), 5 the key prefix, 6..9 per bucket kind 0..3 (key,
-- ip, prefix, asn) its defaults "rate burst ttl_rate" (burst 0: no such bucket), 10 the
-- entries, one line each:
--   "K ID D"          kind K, identity ID, delta D, the kind's default rate and burst
--   "K ID D R S B"    the same with refill rate R, burst multiplier S (NAT) and B = 1 when
--                     the identity was just banned here (kind 0 only)
--   delta: cost consumed locally since the last sync (< 0: refunds), charged after the
--   refill; the bucket may go into debt (the cost was already served).
-- Key names are built here as abuseguard.backends.redis.keys names them: kind 0
-- "<prefix>:{ID}:b" (and ":ban"), kind K "<prefix>:{nK:ID}:b". On one server KEYS is
-- empty; in a cluster the caller sends one identity per call and names its bucket (or ban)
-- key in KEYS, which routes the call to the slot every key of the identity shares.
-- Reply: {now, then per entry: tokens, workers sharing the bucket, ban seconds left}.
-- Floats travel as strings: Lua numbers would be truncated to integers in the reply.

local function fmt(x) return string.format('%.17g', x) end
local tonumber, match, gmatch = tonumber, string.match, string.gmatch

local now = tonumber(ARGV[1])
if now == nil then
    local t = redis.call('TIME')
    now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local worker, window, ban_ms, prefix = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local oldest = now - window
local stamp = ' ' .. worker .. '@' .. string.format('%.3f', now)
local defaults = {}
for kind = 0, 3 do
    local r, b, t = match(ARGV[6 + kind], '^(%S+) (%S+) (%S+)$')
    defaults[kind] = {tonumber(r), tonumber(b), tonumber(t)}
end
local nowstr = fmt(now)
local out = {nowstr}
for e in gmatch(ARGV[10], '[^\n]+') do
    local kind, id, delta, r, s, b = match(e, '^(%d) (%S+) (%S+)$')
    if kind == nil then
        kind, id, delta, r, s, b = match(e, '^(%d) (%S+) (%S+) (%S+) (%S+) ([01])$')
    end
    kind, delta = tonumber(kind), tonumber(delta)
    local d = defaults[kind]
    local rate, burst, ttl_rate, banned = d[1], d[2], d[3], false
    if r then
        rate, burst, banned = tonumber(r), burst * tonumber(s), b == '1'
    end
    local base
    if kind == 0 then
        base = prefix .. ':{' .. id .. '}'
    else
        base = prefix .. ':{n' .. kind .. ':' .. id .. '}'
    end
    local tk, tks, sharing, left = 0, '0', 0, '0'
    if burst > 0 then
        local key = base .. ':b'
        local ts, tss, rest = now, nowstr, ''
        tk = burst
        local v = redis.call('GET', key)
        if v then
            local t1, t2, t3 = match(v, '^(%S+) (%S+)(.*)$')
            tk, ts, tss, rest = tonumber(t1), tonumber(t2), t2, t3
        end
        if now > ts then
            tk = tk + (now - ts) * rate
            if tk > burst then tk = burst end
            tss = nowstr
        end
        tk = tk - delta
        if tk > burst then tk = burst end
        tks = fmt(tk)
        local parts = {tks, ' ', tss, stamp}
        sharing = 1
        for wid, at in gmatch(rest, ' ([^@ ]+)@(%S+)') do
            if wid ~= worker and sharing < 64 and tonumber(at) >= oldest then
                sharing = sharing + 1
                parts[#parts + 1] = ' ' .. wid .. '@' .. at
            end
        end
        local ttl = math.ceil(window * 1000) + 1000
        if tk < burst then
            local refill = math.ceil((burst - tk) / ttl_rate * 1000) + 1000
            if refill > ttl then ttl = refill end
        end
        redis.call('SET', key, table.concat(parts), 'PX', ttl)
    end
    if kind == 0 and ban_ms > 0 then
        local bkey = base .. ':ban'
        if banned then
            redis.call('SET', bkey, fmt(now + ban_ms / 1000), 'PX', math.ceil(ban_ms))
            left = fmt(ban_ms / 1000)
        else
            local until_ts = tonumber(redis.call('GET', bkey) or '0')
            if until_ts > now then left = fmt(until_ts - now) end
        end
    end
    out[#out + 1] = tks
    out[#out + 1] = sharing
    out[#out + 1] = left
end
return out
