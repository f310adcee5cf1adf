--[[
  lib_sets.lua — fragment: set updates of a whole call, batched and bounded.

  Never unpack() a list of arbitrary length: Lua's C stack takes about 8000 values, and a
  failure there comes after the writes made for the list's members. These send at most
  500 members (1000 arguments) per command:
    zrem_all(key, ids)          ZREM every id
    zadd_all(key, score, ids)   ZADD every id with one score
    zadd_pairs(key, pairs)      ZADD a flat list score1, id1, score2, id2, ...
    flush_wait(pairs)           zadd_pairs into wait (a bulk enqueue's waiting jobs)
]]
--@include lib_base

local function zrem_all(key, ids)
  for i = 1, #ids, 500 do
    redis.call('ZREM', key, unpack(ids, i, math.min(i + 499, #ids)))
  end
end

local function zadd_all(key, score, ids)
  for i = 1, #ids, 500 do
    local za = {}
    for j = i, math.min(i + 499, #ids) do
      za[#za + 1] = score
      za[#za + 1] = ids[j]
    end
    redis.call('ZADD', key, unpack(za))
  end
end

local function zadd_pairs(key, pairs)
  for i = 1, #pairs, 1000 do
    redis.call('ZADD', key, unpack(pairs, i, math.min(i + 999, #pairs)))
  end
end

local function flush_wait(batch)
  zadd_pairs(K_WAIT, batch)
end
