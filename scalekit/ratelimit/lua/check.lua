-- scalekit rate limiter: check (and consume) every rule of one identity at once.
--
-- KEYS[i]   the counter of check i; all keys share one hash tag (the identity).
-- ARGV[1]   number of checks n
-- ARGV[2]   timestamp in ms to act at ("0": read Redis' clock with TIME)
-- then per check i, 5 values starting at 3 + (i-1)*5:
--   strategy ("fixed", "sliding", "moving"), limit, window_ms, cost, mode
--   mode: "hit"    check, consume if every check passes
--         "peek"   check only (count="failures" before the response)
--         "add"    consume without checking (a failure was counted)
--         "refund" give back a hit made at ARGV[2]
-- Returns {allowed, now_ms, ok_1, remaining_1, reset_ms_1, ...}: nothing is
-- written unless every "hit"/"peek" check passes.

local n = tonumber(ARGV[1])
local now = tonumber(ARGV[2])
if now == 0 then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local result = {1, now}
local plans = {}

for i = 1, n do
    local base = 3 + (i - 1) * 5
    local strategy = ARGV[base]
    local limit = tonumber(ARGV[base + 1])
    local window = tonumber(ARGV[base + 2])
    local cost = tonumber(ARGV[base + 3])
    local mode = ARGV[base + 4]
    local key = KEYS[i]
    local ok, remaining, reset = 1, 0, 0
    local plan = {strategy = strategy, key = key, cost = cost, mode = mode,
                  window = window, limit = limit}

    if strategy == 'fixed' then
        -- the window's end is stored, not read from PTTL, so the script is a
        -- function of `now` alone (TIME in production)
        local stored = redis.call('HMGET', key, 'c', 'e')
        local used = tonumber(stored[1]) or 0
        local expires = tonumber(stored[2]) or 0
        plan.fresh = expires <= now
        if plan.fresh then used = 0; expires = now + window end
        plan.used, plan.expires = used, expires
        if mode ~= 'add' and mode ~= 'refund' and used + cost > limit then
            ok, remaining, reset = 0, limit - used, expires - now
        else
            local after = used
            if mode == 'hit' or mode == 'add' then after = used + cost end
            ok, remaining, reset = 1, limit - after, expires - now
        end
    elseif strategy == 'sliding' then
        local index = math.floor(now / window)
        local stored = redis.call('HMGET', key, 'w', 'c', 'p')
        local w = tonumber(stored[1])
        local current, previous = 0, 0
        if w == index then
            current = tonumber(stored[2]) or 0
            previous = tonumber(stored[3]) or 0
        elseif w == index - 1 then
            previous = tonumber(stored[2]) or 0
        end
        local into = now % window
        local left = window - into
        local weighted = math.floor(previous * left / window) + current
        plan.index, plan.current, plan.previous = index, current, previous
        if mode ~= 'add' and mode ~= 'refund' and weighted + cost > limit then
            ok = 0
            remaining = limit - weighted
            local wait
            if current + cost > limit then
                -- only the next window can help: wait for its start, then
                -- for this window's count to fade enough
                local need = window - (limit - cost + 1) * window / current
                if need < 0 then need = 0 end
                wait = left + math.floor(need) + 1
            else
                local need = window - (limit - current - cost + 1) * window / previous
                wait = math.floor(need) - into + 1
                if wait < 1 then wait = 1 end
            end
            reset = wait
        else
            local after = weighted
            if mode == 'hit' or mode == 'add' then after = weighted + cost end
            remaining = limit - after
            reset = left
        end
    else -- moving
        if mode ~= 'add' and mode ~= 'refund' then
            local entry = tonumber(redis.call('LINDEX', key, limit - cost))
            if entry and entry >= now - window then
                ok = 0
                remaining = 0
                reset = entry + window - now + 1
            end
        end
        if ok == 1 then
            local entries = redis.call('LRANGE', key, 0, limit - 1)
            local inside, oldest = 0, now
            for _, value in ipairs(entries) do
                local stamp = tonumber(value)
                if stamp >= now - window then
                    inside = inside + 1
                    oldest = stamp
                end
            end
            if mode == 'hit' or mode == 'add' then
                inside = inside + cost
                if inside == cost then oldest = now end
            end
            remaining = limit - inside
            if remaining < 0 then remaining = 0 end
            reset = oldest + window - now + 1
        end
    end

    if remaining < 0 then remaining = 0 end
    if ok == 0 then result[1] = 0 end
    result[#result + 1] = ok
    result[#result + 1] = remaining
    result[#result + 1] = reset
    plans[i] = plan
end

if result[1] == 0 then
    return result
end

for i = 1, n do
    local p = plans[i]
    if p.mode == 'hit' or p.mode == 'add' then
        if p.strategy == 'fixed' then
            if p.fresh then
                redis.call('HSET', p.key, 'c', p.cost, 'e', p.expires)
                redis.call('PEXPIRE', p.key, p.window)
            else
                redis.call('HINCRBY', p.key, 'c', p.cost)
            end
        elseif p.strategy == 'sliding' then
            redis.call('HSET', p.key, 'w', p.index, 'c', p.current + p.cost, 'p', p.previous)
            redis.call('PEXPIRE', p.key, p.window * 2)
        else
            for _ = 1, p.cost do redis.call('LPUSH', p.key, now) end
            redis.call('LTRIM', p.key, 0, p.limit - 1)
            redis.call('PEXPIRE', p.key, p.window)
        end
    elseif p.mode == 'refund' then
        if p.strategy == 'fixed' then
            -- only to the window the hit went to: not one that started after it
            if not p.fresh and p.used >= p.cost and p.expires - p.window <= now then
                redis.call('HINCRBY', p.key, 'c', -p.cost)
            end
        elseif p.strategy == 'sliding' then
            if p.current >= p.cost then
                redis.call('HSET', p.key, 'c', p.current - p.cost)
            end
        else
            redis.call('LREM', p.key, p.cost, now)
        end
    end
end

return result
