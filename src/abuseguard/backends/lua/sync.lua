-- abuseguard: merge one worker's local bucket consumption into the shared buckets (synced
-- mode) and answer the shared state, for many identities in one call.
--
-- Bucket values have decide.lua's format ("tokens timestamp" on Redis time), so inline and
-- synced workers may share one Redis. Each bucket also has a sorted set of the workers that
-- touched it recently (member: worker id, score: last sync), whose size says how many
-- workers share its tokens.
--
-- ARGV: 1 now (seconds; "" = the server clock), 2 worker id, 3 share window (seconds a
-- worker counts as sharing a bucket after its last sync), 4 n entries, then one string per
-- entry: "delta rate burst ttl_rate ban_ms ban"
--   delta     cost consumed locally since the last sync (< 0: refunds); charged after the
--             refill, the bucket may go into debt (the cost was already served)
--   rate      refill per second; burst: capacity (0: no bucket, only the ban)
--   ttl_rate  the slowest refill, for the key's TTL
--   ban_ms    > 0: ban the identity for that long now (its ladder reached the ban)
--   ban       1: the entry has a ban key
-- KEYS per entry: the bucket and its workers set (when burst > 0), then the ban key (when
-- ban is 1). In a cluster the caller sends the keys of one identity per call.
-- Reply: {now, then per entry: tokens, workers sharing the bucket, ban seconds left}.
-- Floats travel as strings: Lua numbers would be truncated to integers in the reply.

local function fmt(x) return string.format('%.17g', x) end

local now = tonumber(ARGV[1])
if now == nil then
    local t = redis.call('TIME')
    now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local worker = ARGV[2]
local window = tonumber(ARGV[3])
local n = tonumber(ARGV[4])
local out = {fmt(now)}
local k = 1
for i = 1, n do
    local d, r, b, t, bm, hb = string.match(
        ARGV[4 + i], '^(%S+) (%S+) (%S+) (%S+) (%d+) ([01])$')
    local delta, rate, burst, ttl_rate, ban_ms = tonumber(d), tonumber(r), tonumber(b),
        tonumber(t), tonumber(bm)
    local tk, sharing, left = 0, 0, 0
    if burst > 0 then
        local key, wkey = KEYS[k], KEYS[k + 1]
        k = k + 2
        local ts = now
        tk = burst
        local v = redis.call('GET', key)
        if v then
            local sp = string.find(v, ' ', 1, true)
            tk, ts = tonumber(string.sub(v, 1, sp - 1)), tonumber(string.sub(v, sp + 1))
        end
        if now > ts then
            tk = tk + (now - ts) * rate
            if tk > burst then tk = burst end
            ts = now
        end
        tk = tk - delta
        if tk > burst then tk = burst end
        if tk < burst then
            local ttl = math.ceil((burst - tk) / ttl_rate * 1000) + 1000
            redis.call('SET', key, fmt(tk) .. ' ' .. fmt(ts), 'PX', ttl)
        else
            redis.call('DEL', key)
        end
        redis.call('ZADD', wkey, now, worker)
        redis.call('ZREMRANGEBYSCORE', wkey, '-inf', '(' .. fmt(now - window))
        redis.call('PEXPIRE', wkey, math.ceil(window * 1000) + 1000)
        sharing = redis.call('ZCARD', wkey)
    end
    if hb == '1' then
        local bkey = KEYS[k]
        k = k + 1
        if ban_ms > 0 then
            redis.call('SET', bkey, fmt(now + ban_ms / 1000), 'PX', math.ceil(ban_ms))
            left = ban_ms / 1000
        else
            local until_ts = tonumber(redis.call('GET', bkey) or '0')
            if until_ts > now then left = until_ts - now end
        end
    end
    out[#out + 1] = fmt(tk)
    out[#out + 1] = sharing
    out[#out + 1] = fmt(left)
end
return out
