-- abuseguard: reconcile a token bucket with the real cost of a served request.
-- KEYS[1] bucket key. ARGV: delta (real cost - charged cost; < 0 refunds), burst, ttl_rate
-- (the slowest refill, for the TTL), now ("" = server TIME). Mirrors kernels.charge:
-- tokens -= delta, capped at the burst, no refill. An absent key is a full bucket.
local now = tonumber(ARGV[4])
if now == nil then
    local t = redis.call('TIME')
    now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local delta, burst, ttl_rate = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tk, ts = burst, now
local v = redis.call('GET', KEYS[1])
if v then
    local t1, t2 = string.match(v, '^(%S+) (%S+)')  -- synced mode may append more
    tk, ts = tonumber(t1), tonumber(t2)
end
tk = tk - delta
if tk > burst then tk = burst end
if tk < burst then
    local ttl = math.ceil((burst - tk) / ttl_rate * 1000) + 1000
    redis.call('SET', KEYS[1], string.format('%.17g %.17g', tk, ts), 'PX', ttl)
else
    redis.call('DEL', KEYS[1])
end
return string.format('%.17g', tk)
