(function()
  @PRELUDE@
  local FINISHED = { completed = true, failed = true, dlq = true }

  -- Copy `id` (in state `was` where it was accepted: copy_of) is step `step` of workflow
  -- `wid`: the workflow is written here if it is not yet (running), and counts the step
  -- once. A workflow whose steps' copies all finished here before this one came ended
  -- then (wf_end); it goes on again when this step is unfinished and the workflow had
  -- completed, and otherwise stays ended, the step closing late (close_step). False
  -- (nothing written) when a record of the workflow is damaged (another type).
  local function copy_step(id, wid, step, was)
    local wk, sk = WF .. wid, WFS .. wid
    if damaged(wk, 'hash') or damaged(sk, 'hash') or damaged(WFI, 'zset') then return false end
    local f = redis.call('HMGET', wk, 'st', 'n', 'left', 'f')
    if not f[1] then
      redis.call('HSET', wk, 'st', 'running', 'ts', NOW_S, 'n', 0, 'left', 0)
      redis.call('ZADD', WFI, 'NX', NOW, wid)
      f = { 'running', '0', '0', false }
    end
    if redis.call('HGET', sk, step) == id then return true end
    redis.call('HSET', sk, step, id)
    local left = num(f[3])
    if not f[4] then
      left = left + 1
    elseif f[1] == 'completed' and not FINISHED[was] then
      redis.call('HSET', wk, 'st', 'running')
      redis.call('HDEL', wk, 'f')
      redis.call('PERSIST', wk)
      redis.call('PERSIST', sk)
      local ids = hvals(sk)
      for i = 1, #ids do
        redis.call('PERSIST', DEP .. ids[i])
        redis.call('PERSIST', DEPP .. ids[i])
        redis.call('PERSIST', DEPC .. ids[i])
      end
      left = left + 1
    end
    redis.call('HSET', wk, 'n', int(num(f[2]) + 1), 'left', int(left))
    return true
  end

  -- Records a new job's parents (and, with a workflow_id, makes it a step of that
  -- workflow); parks it behind its first unfinished parent. A copy (copy_of) is recorded
  -- as where it was accepted: its parents (depends_on: on a multi-region queue a step's
  -- options list them, wf_create.lua) and its workflow, which need not be here yet; its
  -- parents need not be either (their records wait for them, open); a copy whose records
  -- are here already (it comes back) keeps them.
  return function(id, jk, opts, state)
    local was = copy_of(id)
    local deps, wid, o = opts_of(opts)
    if not deps then return nil end
    local step = o['workflow_step']
    if was then
      local dk = DEP .. id
      local kind = key_type(dk)
      if kind ~= 'hash' and kind ~= 'none' then return nil end
      -- 'np' is written for a job whose parents were recorded (a parent's record alone,
      -- written by its dependents, has none).
      if redis.call('HEXISTS', dk, 'np') == 1 then
        if field(dk, 'st') == 'pending' and num(field(dk, 'np')) > 0 then
          redis.call('HSET', jk, 'wd', '1')
          return 'wn:' .. id
        end
        return nil
      end
      if wid then
        step = step_name(id, o)
        if not copy_step(id, wid, step, was) then return nil end
      end
    elseif wid then
      step = step_name(id, o)
      if preset(id, wid, step) then
        -- A step of wf_create, which recorded its parents just before adding it.
        local pre = redis.call('HMGET', DEP .. id, 'np', 'wb')
        if num(pre[1]) <= 0 or not pre[2] then return nil end
        redis.call('HSET', jk, 'wd', '1')
        return 'wp:' .. pre[2]
      end
      -- add_job with a workflow_id: a new step of the running workflow (accept checked).
      join(wid, step, id)
    end
    local first = add_parents(id, deps, wid, step, o['on_failure'])
    if not first then return nil end
    redis.call('HSET', jk, 'wd', '1')
    return 'wp:' .. first
  end
end)()
