-- abuseguard: extend concurrency leases still held by a live worker.
-- KEYS: lease sets (one identity's hash tag per call in a cluster). ARGV[1] lease TTL in
-- ms, then one lease id per key. A lease already dropped (expired, released) stays gone.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local ttl = tonumber(ARGV[1])
local renewed = 0
for i = 1, #KEYS do
    if redis.call('ZADD', KEYS[i], 'XX', 'CH', now_ms + ttl, ARGV[i + 1]) == 1 then
        renewed = renewed + 1
    end
    if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIRE', KEYS[i], ttl) end
end
return renewed
