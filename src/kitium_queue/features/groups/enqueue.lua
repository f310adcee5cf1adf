(function()
  @PRELUDE@
  -- Marks a new job of a group (gk, gm), counts it, and parks it in its group's line
  -- unless it may take a turn at once (the group is not paused, has a free turn and
  -- nobody in its line): then it goes to wait holding its turn. A group that looks
  -- full first gives back turns held by jobs that finished without passing here (a
  -- process without the feature ran them). A delayed job takes
  -- its turn (or its place in the line) at its first admission, once due.
  return function(id, jk, opts, state)
    local g = group_of(opts)
    if not g then return nil end
    local gkey = GP .. g
    local f = redis.call('HMGET', gkey, 'paused', 'conc', 'n')
    if COUNT then
      local n = num(f[3])
      redis.call('HSET', jk, 'gk', g, 'gm', '1')
      redis.call('HSET', gkey, 'n', int(n + 1))
      if n == 0 then
        redis.call('ZADD', INDEX, 0, g)
        redis.call('PERSIST', gkey)
      end
    else
      redis.call('HSET', jk, 'gk', g)
    end
    if state ~= 'waiting' then return nil end
    if f[1] == '1' then return 'g:' .. g end
    local conc = conc_of(f[2])
    local held = redis.call('SCARD', RUN .. g)
    if held >= conc and NOW % 8 == 0 then
      -- Turns held by finished jobs (turn_stale, prelude.lua) go back to the line
      -- first: a group none of whose jobs can be claimed would otherwise wait until the
      -- workers' walk (heal.py). Checked on one call in eight (by the clock's ms): two
      -- commands per job into a busy group otherwise, for a case that is rare.
      local left = heal_turns(g, held, conc, 3)
      if left < held then
        hand_turns(g, conc - left)
        held = redis.call('SCARD', RUN .. g)
      end
    end
    if held >= conc or redis.call('EXISTS', LINE .. g) == 1 then
      return 'g:' .. g
    end
    take_turn(g, id)
    return nil
  end
end)()
