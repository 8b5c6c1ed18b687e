-- abuseguard: reconcile a by-cost window quota with the real cost of a served request.
-- KEYS[1] quota key. ARGV: strategy (1 fixed window, 2 sliding window counter), window
-- seconds, delta (real cost - counted cost, whole units; < 0 gives back), now ("" = server
-- TIME). The current window takes the difference (a sliding window counter gives back from
-- the previous window what the current one does not hold); a count never goes below 0.
local now = tonumber(ARGV[4])
if now == nil then
    local t = redis.call('TIME')
    now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local strategy, window, delta = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local key = KEYS[1]
if strategy == 1 then
    local value = tonumber(redis.call('GET', key) or '0')
    if delta > 0 then
        value = redis.call('INCRBY', key, delta)
        if value == delta then redis.call('PEXPIRE', key, math.ceil(window * 1000)) end
    elseif value > 0 then
        local left = value + delta
        if left < 0 then left = 0 end
        redis.call('SET', key, left, 'KEEPTTL')
        value = left
    end
    return value
end
local idx = math.floor(now / window)
local cur_f, prev_f = string.format('%d', idx), string.format('%d', idx - 1)
if delta > 0 then
    local cur = redis.call('HINCRBY', key, cur_f, delta)
    redis.call('PEXPIRE', key, math.ceil(2 * window * 1000))
    return cur
end
local back = -delta
for _, field in ipairs({cur_f, prev_f}) do
    local held = tonumber(redis.call('HGET', key, field) or '0')
    local taken = held
    if taken > back then taken = back end
    if taken > 0 then
        redis.call('HINCRBY', key, field, -taken)
        back = back - taken
    end
end
return -delta - back
