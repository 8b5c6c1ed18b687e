-- abuseguard: the unverified-key budgets of one client address and its network prefix
-- (Policy.unverified_keys, Redis inline mode; see keyprobe.py and redis/unverified.py).
-- KEYS: per level (address, then prefix; either may be off) its budget ("tokens ts", an
-- absent key is a full budget) and the set of keys accepted behind it (its growth). All
-- keys share the prefix's hash tag: one Cluster slot.
-- ARGV: op ("admit", "charge", "accept"), now ("" = server TIME), the op's argument (the
-- tokens to charge, or the accepted identity), then per level: capacity, rate (tokens a
-- second), growth_per_key, max_growth, growth_keys (accepted keys that still grow it).
-- admit: {"1"} after drawing one token from every level, else {"0", then per level its
-- tokens and scale} with nothing drawn. charge: tokens into debt by at most one ceiling.
-- accept: a key new to a level that can still grow joins its set and gives one token back.
local op = ARGV[1]
local now = tonumber(ARGV[2])
if now == nil then
    local t = redis.call('TIME')
    now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local levels = #KEYS / 2
local tokens, stamps, scales, params = {}, {}, {}, {}
for i = 1, levels do
    local a = 3 + (i - 1) * 5
    local p = {
        cap = tonumber(ARGV[a + 1]), rate = tonumber(ARGV[a + 2]),
        per_key = tonumber(ARGV[a + 3]), max_growth = tonumber(ARGV[a + 4]),
        growth_keys = tonumber(ARGV[a + 5]),
    }
    local grown = redis.call('SCARD', KEYS[2 * i])
    local scale = math.min(p.max_growth, 1 + p.per_key * grown)
    local tk, ts = p.cap, now
    local v = redis.call('GET', KEYS[2 * i - 1])
    if v then
        local t1, t2 = string.match(v, '^(%S+) (%S+)')
        tk, ts = tonumber(t1), tonumber(t2)
    end
    if now > ts then
        tk = math.min(p.cap * scale, tk + (now - ts) * p.rate * scale)
        ts = now
    end
    p.grown = grown
    tokens[i], stamps[i], scales[i], params[i] = tk, ts, scale, p
end

local function save(i)
    local p, scale = params[i], scales[i]
    local full = p.cap * scale
    if tokens[i] >= full then
        redis.call('DEL', KEYS[2 * i - 1])
    else
        local ttl = math.ceil((full - tokens[i]) / (p.rate * scale) * 1000) + 1000
        redis.call('SET', KEYS[2 * i - 1], string.format('%.17g %.17g', tokens[i], stamps[i]),
            'PX', ttl)
    end
end

if op == 'admit' then
    for i = 1, levels do
        if tokens[i] < 1 then
            local out = {'0'}
            for j = 1, levels do
                out[#out + 1] = string.format('%.17g', tokens[j])
                out[#out + 1] = string.format('%.17g', scales[j])
            end
            return out
        end
    end
    for i = 1, levels do
        tokens[i] = tokens[i] - 1
        save(i)
    end
    return {'1'}
elseif op == 'charge' then
    local amount = tonumber(ARGV[3])
    for i = 1, levels do
        tokens[i] = math.max(tokens[i] - amount, -params[i].cap * scales[i])
        save(i)
    end
elseif op == 'accept' then
    for i = 1, levels do
        local p = params[i]
        if p.grown < p.growth_keys and redis.call('SADD', KEYS[2 * i], ARGV[3]) == 1 then
            scales[i] = math.min(p.max_growth, 1 + p.per_key * (p.grown + 1))
            tokens[i] = math.min(p.cap * scales[i], tokens[i] + 1)
            save(i)
        end
        -- the growth of an address lasts a day after its last accepted key
        redis.call('PEXPIRE', KEYS[2 * i], 86400000)
    end
end
return {'1'}
