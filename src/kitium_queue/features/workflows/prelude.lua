  -- Workflows and job dependencies: the shared part of every fragment and script
  -- (kitium_queue.features.workflows). Compiled in, as literals where they are used
  -- (not locals: a script composed of every feature shares Lua's 200 locals of its main
  -- chunk, and this prelude is in that chunk): @RETAIN@ (ms a finished workflow's
  -- records are kept; RETAIN in the comments), @MAX_KIDS@ (most dependents of a job),
  -- @MAX_STEPS@ (most steps of a workflow: its end, failure and cancel walk them all),
  -- @MAX_LINKS@ / @MAX_CONTEXT@ (most run links of a job, longest run context:
  -- limits.py), 2000 (longest clear failure reason a dependency record keeps: ERR_MAX).
  -- MAX_PARENTS (most parents of a job) is a local: the scripts use it too.
  local MAX_PARENTS = @MAX_PARENTS@
  -- Keys (under the queue's hash tag; manager.py builds the same names):
  --   dep:<id>    HASH  a tracked job: st (pending | ready | completed | failed | skipped |
  --                     cancelled), np (unfinished parents), w (workflow), s (step),
  --                     pol (on_failure), ts, f, jt (the creation time, 'ts', of the
  --                     job it tracked when it closed: reused), r (encoded result), e
  --                     (error: clip), en (the name of its job, with a sealed e: what
  --                     the text is bound to), wb
  --                     (the parent it was first parked behind), rc (the context its
  --                     last finished run left: run links); a step
  --                     cancelled by a failing workflow keeps its definition (sn, sd, so,
  --                     sp, sq, and sm: its features' markers, keep_marks) so a replay of
  --                     the failed step can bring it back; sx: that definition was erased
  --                     (erase.lua), so nothing of its workflow comes back
  --   dep-p:<id>  LIST  its parents' ids, in the order given
  --   dep-c:<id>  SET   the jobs that depend on it
  --   wf:<wid>    HASH  st (running | completed | failed | cancelled), ts, f, n, left,
  --                     err (the step that failed it)
  --   wf-s:<wid>  HASH  step name -> job id
  --   wfs         ZSET  workflow id -> created (ms)
  --   wf-log      STREAM workflow-completed / workflow-failed, for the in-process report
  -- Blockers (lib_parking.lua): 'wp:<id>' jobs waiting for parent <id> (released by a
  -- timer in chunks when it finishes), 'wn:<id>' job <id> alone, waiting for its last
  -- parents. Job-hash marker: wd = '1' while the job had unfinished parents when added.
  -- Run links (the engine's job-hash field fw, Job.follows): see add_links below.
  local DEP, DEPP, DEPC = PREFIX .. 'dep:', PREFIX .. 'dep-p:', PREFIX .. 'dep-c:'
  local WF, WFS, WFI, WFLOG = PREFIX .. 'wf:', PREFIX .. 'wf-s:', PREFIX .. 'wfs', PREFIX .. 'wf-log'
  local PARKED_AT = PREFIX .. 'parked:'
  local TERMINAL = { completed = true, failed = true, skipped = true, cancelled = true }
  -- The payload of the removal of a step its workflow's cancellation removed
  -- (wf_cancel.lua): the release fragments see it with the outcome 'removed', and so
  -- does a copy of the queue elsewhere (the regions feature replicates a removal with
  -- its payload), where the step is closed as cancelled and its workflow is cancelled
  -- (copy_cancelled) rather than failed.
  local CANCELLED = 'workflow-cancelled'
  local POLICIES = { fail_workflow = true, continue = true, skip = true }
  -- Whether this call applies copies of jobs another copy of the queue accepted (the
  -- regions feature's rg_apply.lua: a secondary region following the primary, a new
  -- primary catching up from its peers, stranded work re-submitted); the fragments set
  -- it (copy_of). A copy's workflow is rebuilt here from the copies of its steps, in
  -- whatever order they come (copy_step, enqueue.lua), and reports nothing: the copy
  -- that ran it reported its end.
  local COPYING = false

  -- Whether job `id` is a copy (SLOT_SCRATCH.copy, the entry lib_slots.lua names for
  -- every feature; the regions feature's rg_apply.lua sets it for each job it applies):
  -- nil when this call applies no copies; else the job's state where it was accepted
  -- ('waiting', 'pending', 'active', 'completed', 'failed', 'dlq'...), or '' when that
  -- is not said. Sets COPYING. Only fragments call it (the scripts that run them hold
  -- SLOT_SCRATCH).
  local function copy_of(id)
    local r = SLOT_SCRATCH.copy
    COPYING = type(r) == 'table'
    if not COPYING then return nil end
    if r.id == id and type(r.state) == 'string' then return r.state end
    return ''
  end

  -- Records of other jobs and workflows are read through these: a key overwritten with
  -- another type (damaged by hand) reads as missing, so it is skipped and never fails a
  -- script (or a slot fragment) half way, after writes made for the jobs before it.
  local function field(key, name)
    local v = redis.pcall('HGET', key, name)
    if type(v) ~= 'string' then return nil end
    return v
  end

  local function fields(key, ...)
    local v = redis.pcall('HMGET', key, ...)
    if v.err then return {} end
    return v
  end

  local function members(key)
    local v = redis.pcall('SMEMBERS', key)
    if v.err then return {} end
    return v
  end

  local function hvals(key)
    local v = redis.pcall('HVALS', key)
    if v.err then return {} end
    return v
  end

  -- Why key `key` (a record of this feature, of type `want`) cannot be used: nil when it
  -- is of that type or absent. Checked by the admin scripts before their first write.
  local function damaged(key, want)
    local t = key_type(key)
    if t == want or t == 'none' then return nil end
    return 'KQ_BAD_STATE key ' .. key .. ' holds a ' .. t .. ', not a ' .. want ..
      ' (damaged by hand?); nothing was written. Delete or repair that key, then try again'
  end

  -- A failure reason as a dependency record keeps it, and whether it is sealed. A text
  -- a feature sealed starts with middleware.py's SEALED_TEXT_MARK (@SEALED_MARK@): kept
  -- whole, since cut it would never open, up to the longest a failure-text filter may
  -- answer (@SEALED_MAX@ bytes), else a marker with its length, never a part; a clear
  -- one is cut to ERR_MAX bytes. (No top-level locals: a script composed of every
  -- feature stays under Lua's 200.)
  local function clip(s)
    if type(s) ~= 'string' then return 'failed', false end
    if string.sub(s, 1, #'@SEALED_MARK@') == '@SEALED_MARK@' then
      if #s <= @SEALED_MAX@ then return s, true end
      return '@SEALED_MARK@not kept: a sealed reason of ' .. #s .. ' bytes, above the ' ..
        '@SEALED_MAX@ a dependency record keeps; its job\'s own record holds it)', true
    end
    if #s > 2000 then return string.sub(s, 1, 2000), false end
    return s, false
  end

  -- Run links. A dependent follows its parents' runs: the context a tracked job's run
  -- left when it finished (the release slot's `context`: tracing's process span) is
  -- kept as its 'rc' and added to the 'fw' field of each dependent still waiting for
  -- it; a dependent added later takes those of its finished parents. At most MAX_LINKS
  -- per job, in the order they came, without repeats. A parent gets 'fw' (empty) when
  -- a dependent is recorded, so the worker sends its run's context. Nothing is written
  -- for runs that left none (no tracing, sampled out).

  -- A run's context, or nil: untrusted text from the worker, one printable line.
  local function run_context(ctx)
    if type(ctx) ~= 'string' or ctx == '' or #ctx > @MAX_CONTEXT@ or string.find(ctx, '%c') then
      return nil
    end
    return ctx
  end

  -- Job `p` is followed: its record (when there is one) gets 'fw', if it has none.
  local function mark_followed(p)
    local jk = job_key(p)
    if redis.call('EXISTS', jk) == 1 then redis.pcall('HSETNX', jk, 'fw', '') end
  end

  -- Adds the contexts `ctxs` to job `id`'s 'fw' (on its record only: nothing when it
  -- has none), those it has not, while it has fewer than MAX_LINKS.
  local function add_links(id, ctxs)
    if #ctxs == 0 then return end
    local jk = job_key(id)
    local f = redis.pcall('HMGET', jk, 'n', 'fw')
    if f.err or not f[1] then return end
    local cur = f[2] or ''
    local seen, n, changed = {}, 0, false
    for e in string.gmatch(cur, '[^\n]+') do
      seen[e] = true
      n = n + 1
    end
    for i = 1, #ctxs do
      if n >= @MAX_LINKS@ then break end
      local c = ctxs[i]
      if not seen[c] then
        seen[c], n, changed = true, n + 1, true
        if cur == '' then cur = c else cur = cur .. '\n' .. c end
      end
    end
    if changed then redis.pcall('HSET', jk, 'fw', cur) end
  end

  -- The contexts its finished parents' runs left, of job `id`'s first MAX_LINKS parents.
  local function parent_contexts(id)
    local ps = redis.call('LRANGE', DEPP .. id, 0, @MAX_LINKS@ - 1)
    local out = {}
    for i = 1, #ps do
      local c = field(DEP .. ps[i], 'rc')
      if c then out[#out + 1] = c end
    end
    return out
  end

  local function opts_of(opts)
    if opts == nil or opts == false or opts == '' then return nil end
    if not string.find(opts, '"depends_on"', 1, true)
        and not string.find(opts, '"workflow_id"', 1, true) then
      return nil
    end
    local ok, o = pcall(cjson.decode, opts)
    if not ok or type(o) ~= 'table' then return nil end
    local deps = o['depends_on']
    if type(deps) ~= 'table' then deps = {} end
    local wid = o['workflow_id']
    if type(wid) ~= 'string' or wid == '' then wid = nil end
    if #deps == 0 and not wid then return nil end
    return deps, wid, o
  end

  -- A workflow's end: raised as a feature event (the event stream, and the features
  -- that forward events: webhooks), and logged for the in-process report (events.py).
  local function log_event(name, wid, step)
    if COPYING then return end
    feature_event(name, wid, 'workflow_id', wid, 'step', step or '')
    -- pcall: a log key damaged by hand loses this line, and fails nothing after writes.
    redis.pcall('XADD', WFLOG, 'MAXLEN', '~', 10000, '*', 'e', name, 'w', wid, 's', step or '')
  end

  -- A workflow ended (no unfinished step left): completed unless it failed or was
  -- cancelled; its records expire RETAIN ms from now.
  local function wf_end(wid)
    local wk = WF .. wid
    if key_type(wk) ~= 'hash' then return end
    local st = redis.call('HGET', wk, 'st')
    if st == 'running' then
      redis.call('HSET', wk, 'st', 'completed')
      log_event('workflow-completed', wid)
    end
    redis.call('HSET', wk, 'f', NOW_S)
    local ids = hvals(WFS .. wid)
    for i = 1, #ids do
      redis.call('PEXPIRE', DEP .. ids[i], @RETAIN@)
      redis.call('PEXPIRE', DEPP .. ids[i], @RETAIN@)
      redis.call('PEXPIRE', DEPC .. ids[i], @RETAIN@)
    end
    redis.call('PEXPIRE', wk, @RETAIN@)
    redis.call('PEXPIRE', WFS .. wid, @RETAIN@)
  end

  local function wf_left(wid, delta)
    local wk = WF .. wid
    if key_type(wk) ~= 'hash' then return end
    local left = num(redis.call('HGET', wk, 'left')) + delta
    if left < 0 then left = 0 end
    redis.call('HSET', wk, 'left', int(left))
    if left == 0 and delta <= 0 then wf_end(wid) end
  end

  -- Dependency record `dk` of job `id` closes now: 'f' (this server's clock) and 'jt',
  -- the creation time of the job it tracks ('ts' of its job record, as written there:
  -- for a copy, on its source's clock), or no 'jt' when that job record is gone or
  -- damaged. reused() compares 'jt' with the job under the id later.
  local function stamp_closed(dk, id)
    local ts = redis.pcall('HGET', job_key(id), 'ts')
    if type(ts) == 'string' then
      redis.call('HSET', dk, 'f', NOW_S, 'jt', ts)
    else
      redis.call('HSET', dk, 'f', NOW_S)
      redis.call('HDEL', dk, 'jt')
    end
  end

  -- A step reaches a final state (once).
  local function close_step(id, state, err)
    local dk = DEP .. id
    local f = redis.call('HMGET', dk, 'st', 'w')
    if not f[1] or TERMINAL[f[1]] then return false end
    redis.call('HSET', dk, 'st', state)
    stamp_closed(dk, id)
    if err then
      local e, is_sealed = clip(err)
      redis.call('HSET', dk, 'e', e)
      -- A sealed reason is bound to its job's name: kept with it, for when the job's
      -- record is gone (its views open it, a key rotation re-seals it: install.py).
      local n = is_sealed and redis.pcall('HGET', job_key(id), 'n')
      if type(n) == 'string' then redis.call('HSET', dk, 'en', n) end
    end
    if f[2] and COPYING and field(WF .. f[2], 'f') then
      -- A copy's step that came after the copies of the rest of its workflow had all
      -- finished here (copy_step): the workflow ended without counting it, and its
      -- records expire as the others' do.
      redis.call('PEXPIRE', dk, @RETAIN@)
      redis.call('PEXPIRE', DEPP .. id, @RETAIN@)
      redis.call('PEXPIRE', DEPC .. id, @RETAIN@)
    elseif f[2] then
      wf_left(f[2], -1)
    else
      -- A plain job with dependencies or dependents: its records are kept as long as a
      -- workflow's (its dependents read its result).
      redis.call('PEXPIRE', dk, @RETAIN@)
      redis.call('PEXPIRE', DEPP .. id, @RETAIN@)
      redis.call('PEXPIRE', DEPC .. id, @RETAIN@)
    end
    return true
  end

  -- Whether job `id` has not started: waiting, delayed, parked, or its record is gone.
  local function unstarted(id)
    local st = field(job_key(id), 'st')
    return not (st == 'active' or st == 'completed' or st == 'failed' or st == 'dlq')
  end

  -- What a revived step takes from the record it had besides its definition: the
  -- markers the features' enqueue fragments wrote on it (records.JOB_FIELDS: its
  -- idempotency key and window, tenant, group, flow-control keys, webhook URL, region
  -- epoch, data subject), so that to every feature it is the job it was, back from a
  -- finished state (counted again, by its tenant and its group, when it starts). The
  -- markers that say a feature counted it (tq, gm) are not kept: their release
  -- fragments removed them.
  local function keep_marks(jk, dk)
    local h = redis.pcall('HMGET', jk, 'ik', 'eo', 'iw', 'tn', 'gk', 'rk', 'ck', 'wu', 'ep', 'sj')
    if h.err then return end
    local kept, any = {}, false
    for i = 1, 10 do
      if type(h[i]) == 'string' then kept[i], any = h[i], true else kept[i] = false end
    end
    if any then redis.call('HSET', dk, 'sm', cjson.encode(kept)) end
  end

  -- Writes back on revived job record `jk` the markers keep_marks kept (JSON, or nil).
  local function put_marks(jk, raw)
    local ok, m = pcall(cjson.decode, raw or '')
    if not ok or type(m) ~= 'table' then return end
    local function v(i)
      local x = m[i]
      if type(x) == 'string' then return x end
      return nil
    end
    if v(1) then redis.call('HSET', jk, 'ik', v(1)) end
    if v(2) then redis.call('HSET', jk, 'eo', v(2)) end
    if v(3) then redis.call('HSET', jk, 'iw', v(3)) end
    if v(4) then redis.call('HSET', jk, 'tn', v(4)) end
    if v(5) then redis.call('HSET', jk, 'gk', v(5)) end
    if v(6) then redis.call('HSET', jk, 'rk', v(6)) end
    if v(7) then redis.call('HSET', jk, 'ck', v(7)) end
    if v(8) then redis.call('HSET', jk, 'wu', v(8)) end
    if v(9) then redis.call('HSET', jk, 'ep', v(9)) end
    if v(10) then redis.call('HSET', jk, 'sj', v(10)) end
  end

  -- Remove a job that has not started, through the engine's remove_unstarted, so every
  -- feature's release fragment sees the removal (a FIFO group gives its place back).
  -- Its step is closed first: this feature's own release fragment, which runs for the
  -- removal too, then finds it finished and applies no policy.
  -- `keep_in`: the step's dependency record, where the job's markers are kept (a step a
  -- failed workflow cancels keeping its definition), or nil.
  -- `payload`: what the removal says to the release fragments (CANCELLED), or nil.
  local function drop_job(id, keep_in, payload)
    local jk = job_key(id)
    -- Gone, or damaged (another type: left in place for remove_job, never read here).
    if key_type(jk) ~= 'hash' then return end
    local before = nil
    if keep_in then before = function(_, k) keep_marks(k, keep_in) end end
    if payload then
      -- remove_unstarted (lib_parking.lua), the removal carrying its payload.
      redis.call('ZREM', K_WAIT, id)
      redis.call('ZREM', K_DELAYED, id)
      forget_parked(id, jk)
      if release_hook then release_hook(id, jk, 'removed', payload) end
      if before then before(id, jk) end
      delete_job(id)
    else
      remove_unstarted(id, jk, before)
    end
    emit('job-removed', id)
  end

  -- Parent `id` finished in a way that lets its dependents go on: one parent fewer for
  -- each; one whose last parent this was goes to wait (its own blocker now, or with the
  -- timer of 'wp:<id>' in chunks, without scanning anything). `ctx`: the context its
  -- run left (or nil), added to the run links of each dependent waiting for it.
  -- Returns how many dependents it made ready.
  local function release_kids(id, ctx)
    local kids = members(DEPC .. id)
    local links = ctx and { ctx } or nil
    local ready = 0
    for i = 1, #kids do
      local c = kids[i]
      local ck = DEP .. c
      -- A dependent whose record is damaged is skipped: the others are still released.
      local st = field(ck, 'st')
      if st == 'pending' or st == 'cancelled' then
        local np = num(field(ck, 'np')) - 1
        if np < 0 then np = 0 end
        redis.call('HSET', ck, 'np', int(np))
        if links and st == 'pending' then add_links(c, links) end
        if np == 0 and st == 'pending' then
          redis.call('HSET', ck, 'st', 'ready')
          ready = ready + 1
          local own = 'wn:' .. c
          if field(job_key(c), 'pk') == own then unpark(own, 1) end
        end
      end
    end
    local b = 'wp:' .. id
    if redis.call('EXISTS', PARKED_AT .. b) == 1 then
      park_timer(b, NOW, 0, 0)
      wake()
    end
    return ready
  end

  -- Every dependent of `id`, transitively, that has not started: removed and closed as
  -- `state` ('skipped' or 'cancelled'). Bounded by the jobs reachable from `id`.
  local function close_dependents(id, state, why)
    local todo, i = { id }, 1
    while i <= #todo do
      local kids = members(DEPC .. todo[i])
      i = i + 1
      for k = 1, #kids do
        local c = kids[k]
        local st = field(DEP .. c, 'st')
        if st and not TERMINAL[st] and unstarted(c) then
          close_step(c, state, why)
          drop_job(c)
          todo[#todo + 1] = c
        end
      end
    end
  end

  local function mark_failed(wid, step)
    local wk = WF .. wid
    if field(wk, 'st') == 'running' then
      redis.call('HSET', wk, 'st', 'failed', 'err', step or '')
      log_event('workflow-failed', wid, step)
    end
  end

  -- A failed workflow: every step that has not started is removed and closed as
  -- cancelled, keeping its definition (a replay of the failed step revives it).
  -- `payload`: what each removal says (drop_job), or nil.
  local function cancel_rest(wid, why, keep, payload)
    local ids = hvals(WFS .. wid)
    for i = 1, #ids do
      local sid = ids[i]
      local dk = DEP .. sid
      local st = field(dk, 'st')
      if (st == 'pending' or st == 'ready') and unstarted(sid) then
        local d = fields(job_key(sid), 'n', 'd', 'o', 'p', 'q')
        local kept = nil
        if keep and d[1] then
          redis.call('HSET', dk, 'sn', d[1], 'sd', d[2] or '', 'so', d[3] or '',
            'sp', d[4] or '0', 'sq', d[5] or '0')
          redis.call('HDEL', dk, 'sm')
          kept = dk
        end
        close_step(sid, 'cancelled', why)
        drop_job(sid, kept, payload)
      end
    end
  end

  -- A copy's step removed at its source by the cancellation of its workflow (a removal
  -- with payload CANCELLED): the copy's workflow is cancelled as there (no event: the
  -- source reported it) and the step closed as cancelled; nothing else is removed
  -- here: each step the source removed comes with its own removal, and the steps that
  -- were running there finish there, their outcomes copied.
  local function copy_cancelled(id)
    local f = fields(DEP .. id, 'st', 'w')
    if not f[1] or TERMINAL[f[1]] then return end
    local wid = f[2]
    if not wid then
      close_step(id, 'cancelled', 'cancelled')
      return
    end
    local wk = WF .. wid
    local st = field(wk, 'st')
    if st == 'running' or st == 'failed' then redis.call('HSET', wk, 'st', 'cancelled') end
    close_step(id, 'cancelled', 'workflow ' .. wid .. ' was cancelled')
  end

  -- Returns the dependents it made ready (policy continue), else 0.
  local function step_failed(id, err, ctx)
    local f = redis.call('HMGET', DEP .. id, 'st', 'w', 'pol', 's')
    if not f[1] or TERMINAL[f[1]] then return 0 end
    local pol, wid, step = f[3], f[2], f[4]
    if not POLICIES[pol] then pol = 'fail_workflow' end
    if ctx then redis.call('HSET', DEP .. id, 'rc', ctx) end
    if pol == 'fail_workflow' and wid then mark_failed(wid, step) end
    close_step(id, 'failed', err)
    if pol == 'continue' then
      return release_kids(id, ctx)
    elseif pol == 'skip' then
      close_dependents(id, 'skipped', 'skipped: parent ' .. (step or id) .. ' failed')
    elseif wid then
      cancel_rest(wid, 'workflow ' .. wid .. ' failed at step ' .. (step or id), true)
    else
      close_dependents(id, 'cancelled', 'cancelled: parent ' .. id .. ' failed')
    end
    return 0
  end

  -- Of a failed workflow's step job ids `ids`, the first step its failure cancelled
  -- whose kept definition an erasure deleted (erase.lua marks it 'sx'), else nil.
  -- Reads only.
  local function erased_step(ids)
    for i = 1, #ids do
      local d = fields(DEP .. ids[i], 'st', 'sn', 'sx')
      if d[1] == 'cancelled' and d[2] and d[3] then return ids[i] end
    end
    return nil
  end

  -- A failed workflow goes on after a replay of its failed step completed: the steps its
  -- failure cancelled come back (parked until their parents finish, or to wait), each
  -- passing the `requeue` slot (requeued, lib_slots.lua) like any finished job put back
  -- in wait, so the features that follow jobs coming back see it (replication to other
  -- regions, an idempotency key held until it finishes).
  -- Not when one of them was erased (its data subject's erasure deleted its data):
  -- nothing comes back, the workflow stays failed at that step, which says why, and
  -- workflow-failed is raised again. A step never runs with its data gone.
  local function revive(wid)
    local wk = WF .. wid
    if field(wk, 'st') ~= 'failed' then return end
    local gone = erased_step(hvals(WFS .. wid))
    if gone then
      local step = field(DEP .. gone, 's') or gone
      redis.call('HSET', DEP .. gone, 'e', 'not revived: its data was erased (an erasure ' ..
        'of its data subject); the workflow cannot go on')
      redis.call('HDEL', DEP .. gone, 'en')
      redis.call('HSET', wk, 'err', step)
      log_event('workflow-failed', wid, step)
      return
    end
    redis.call('HSET', wk, 'st', 'running')
    redis.call('HDEL', wk, 'f', 'err')
    redis.call('PERSIST', wk)
    redis.call('PERSIST', WFS .. wid)
    local ids = hvals(WFS .. wid)
    local back = 0
    for i = 1, #ids do
      local sid = ids[i]
      local dk = DEP .. sid
      redis.call('PERSIST', dk)
      redis.call('PERSIST', DEPP .. sid)
      redis.call('PERSIST', DEPC .. sid)
      local d = fields(dk, 'st', 'sn', 'sd', 'so', 'sp', 'sq', 'np', 'sm')
      local jk = job_key(sid)
      if d[1] == 'cancelled' and d[2] and redis.call('EXISTS', jk) == 0 then
        local pri = arg_int(d[5], 0, 0, 65535)
        redis.call('HSET', jk, 'n', d[2], 'd', d[3] or '', 'ts', NOW_S, 'p', pri,
          'q', int(num(d[6])), 'a', 0, 's', 0, 'st', 'waiting')
        if d[4] and d[4] ~= '' then redis.call('HSET', jk, 'o', d[4]) end
        -- Its features' markers (its tenant, its group...): to them it is the job it was.
        put_marks(jk, d[8])
        -- Its run links, rebuilt: its finished parents' contexts; present when it has
        -- dependents.
        local nk = redis.pcall('SCARD', DEPC .. sid)
        if type(nk) == 'number' and nk > 0 then redis.call('HSET', jk, 'fw', '') end
        add_links(sid, parent_contexts(sid))
        redis.call('HDEL', dk, 'sn', 'sd', 'so', 'sp', 'sq', 'sm', 'e', 'en', 'f', 'jt')
        local score = int(wait_score(pri, num(d[6])))
        if num(d[7]) > 0 then
          redis.call('HSET', dk, 'st', 'pending')
          redis.call('HSET', jk, 'wd', '1')
          park(sid, jk, score, 'wn:' .. sid)
        else
          redis.call('HSET', dk, 'st', 'ready')
          redis.call('ZADD', K_WAIT, score, sid)
        end
        emit('job-added', sid, 'name', d[2], 'st', 'revived')
        requeued(sid, jk, 'cancelled')
        back = back + 1
      end
    end
    redis.call('HSET', wk, 'left', int(num(redis.call('HGET', wk, 'left')) + back))
    if back > 0 then wake() end
    wf_left(wid, 0)
  end

  -- Returns the dependents it made ready.
  local function step_done(id, payload, ctx)
    local dk = DEP .. id
    local f = redis.call('HMGET', dk, 'st', 'w', 'pol')
    if not f[1] or f[1] == 'completed' then return 0 end
    if ctx then redis.call('HSET', dk, 'rc', ctx) end
    if type(payload) == 'string' then
      redis.call('HSET', dk, 'r', payload)
    else
      redis.call('HDEL', dk, 'r')
    end
    if f[1] == 'failed' then
      -- A replayed step: it completes now. Its dependents were released (continue) or
      -- skipped already, or were cancelled with its workflow: those come back.
      redis.call('HSET', dk, 'st', 'completed')
      stamp_closed(dk, id)
      redis.call('HDEL', dk, 'e', 'en')
      if not POLICIES[f[3]] or f[3] == 'fail_workflow' then
        if f[2] then revive(f[2]) end
        return release_kids(id, ctx)
      end
      return 0
    end
    if not close_step(id, 'completed') then return 0 end
    return release_kids(id, ctx)
  end

  -- Tracked job `id` ended as `outcome` ('completed', 'failed' for good, or 'removed'
  -- before it finished): its step closes, and its dependents are released or its
  -- on_failure policy applied. `payload`: its encoded result (completed) or error
  -- (failed); `ctx`: the context its run left (run_context), or nil. The release
  -- fragment calls it as a job ends; wf_heal.lua for a job a process without this
  -- feature finished. Returns the dependents it made ready.
  local function step_ended(id, outcome, payload, ctx)
    if outcome == 'completed' then
      return step_done(id, payload, ctx)
    elseif outcome == 'failed' then
      return step_failed(id, payload or 'failed (its lease expired too often)', ctx)
    end
    return step_failed(id, 'removed before it finished')
  end

  -- The step name of a job added with a workflow_id: its workflow_step, else its id.
  local function step_name(id, o)
    local s = o['workflow_step']
    if type(s) == 'string' and s ~= '' then return s end
    return id
  end

  -- Whether job `id` is a step wf_create is writing now (it recorded the step first).
  local function preset(id, wid, step)
    return field(WFS .. wid, step) == id and field(DEP .. id, 'w') == wid
  end

  -- Why job `id` cannot join workflow `wid` as step `step` (nil: it can). Reads only.
  local function join_refusal(id, wid, step)
    if preset(id, wid, step) then return nil end
    for _, k in ipairs({ WF .. wid, WFS .. wid }) do
      local t = key_type(k)
      if t ~= 'hash' and t ~= 'none' then
        return "workflow '" .. wid .. "' is damaged: key " .. k .. ' holds a ' .. t ..
          ', not a hash; the job was not added. Delete or repair that key'
      end
    end
    local st = redis.call('HGET', WF .. wid, 'st')
    if st ~= 'running' then
      return "workflow '" .. wid .. "' is not running (" .. (st or 'no such workflow') ..
        '): add_job with a workflow_id adds a step to a running workflow; create one ' ..
        'with execute_workflow'
    end
    if redis.call('HEXISTS', WFS .. wid, step) == 1 then
      return "workflow '" .. wid .. "' has a step named '" .. step .. "' already; " ..
        'give the job another workflow_step'
    end
    if num(redis.call('HGET', WF .. wid, 'n')) >= @MAX_STEPS@ then
      return "workflow '" .. wid .. "' has " .. @MAX_STEPS@ .. ' steps, the most a ' ..
        'workflow may have; add the job to another workflow'
    end
    return nil
  end

  -- Job `id` joins running workflow `wid` as step `step`: counted in its steps.
  local function join(wid, step, id)
    local wk = WF .. wid
    local f = redis.call('HMGET', wk, 'n', 'left')
    redis.call('HSET', WFS .. wid, step, id)
    redis.call('HSET', wk, 'n', int(num(f[1]) + 1), 'left', int(num(f[2]) + 1))
  end

  -- Whether the job now under id `p` is another job than the one whose dependency
  -- record closed at `closed` (its 'f', ms) tracking the job created at `jt` (its 'jt'):
  -- an id used again once the job that had it was removed (remove_job, retention) while
  -- that record is kept. With `jt`, the job's creation time is compared with itself
  -- (both as its job record says: for a copy of a job, on its source's clock, so a
  -- clock skew between regions changes nothing). A record closed without one (written
  -- before 'jt' was, or its job record gone then) compares clocks: a job is created
  -- before its record closes, so a job created after that is a new one; one created in
  -- the same ms as the close is taken for the earlier one. Reads only.
  local function reused(p, closed, jt)
    local ts = redis.pcall('HGET', job_key(p), 'ts')
    if type(ts) ~= 'string' then return false end
    local t, was = tonumber(ts), tonumber(jt)
    if was then return t ~= was end
    local c = tonumber(closed)
    if not c then return false end
    return (t or 0) > c
  end

  -- Why `deps` cannot be the parents of job `id` (nil: they can). Reads only.
  local function check_parents(deps, id)
    if #deps > MAX_PARENTS then
      return 'depends_on lists ' .. #deps .. ' jobs, more than ' .. MAX_PARENTS
    end
    for i = 1, #deps do
      local p = deps[i]
      if type(p) ~= 'string' or p == '' then return 'depends_on holds a value that is not a job id' end
      if p == id then return 'job ' .. p .. ' cannot depend on itself' end
      local f = redis.pcall('HMGET', DEP .. p, 'st', 'pol', 'f', 'jt')
      if f.err then
        return 'depends on job ' .. p .. ', whose dependency record ' .. DEP .. p ..
          ' is damaged (it holds another type than a hash); delete or repair that key'
      end
      local st = f[1]
      if st and TERMINAL[st] and reused(p, f[3], f[4]) then
        return 'depends on job ' .. p .. ', whose id was used again: the job now under ' ..
          'that id was added after the job that had it before ' .. (st == 'completed' and
          'completed' or 'ended (' .. st .. ')') .. ', whose dependency record ' .. DEP .. p ..
          ' is kept until its retention ends; that record cannot track the new job. Give ' ..
          'the new job another id, or add the dependent once that record expired'
      end
      if st == 'skipped' or st == 'cancelled' or (st == 'failed' and f[2] ~= 'continue') then
        return 'depends on job ' .. p .. ', which ' .. (st == 'failed' and 'failed' or ('was ' .. st))
      end
      if not st then
        if redis.call('EXISTS', job_key(p)) == 0 then
          return 'depends on job ' .. p .. ', which does not exist (a finished job whose ' ..
            'record was removed cannot be depended on)'
        end
        local js = redis.pcall('HGET', job_key(p), 'st')
        if type(js) == 'table' then
          return 'depends on job ' .. p .. ', whose record is damaged (its key holds ' ..
            'another type than a hash)'
        end
        if js == 'failed' or js == 'dlq' then
          return 'depends on job ' .. p .. ', which failed'
        end
      end
      local nk = redis.pcall('SCARD', DEPC .. p)
      if type(nk) ~= 'number' then
        return 'depends on job ' .. p .. ', whose list of dependents ' .. DEPC .. p ..
          ' is damaged (it holds another type than a set); delete or repair that key'
      end
      if nk >= @MAX_KIDS@ then
        return 'job ' .. p .. ' already has ' .. @MAX_KIDS@ .. ' dependents, the most it may have'
      end
    end
    return nil
  end

  -- What parent `p` means for a new dependent: 'open' (it must finish first) or 'done'.
  -- A finished job tracked by nobody yet gets its record here, with its result.
  local function parent_state(p)
    local dk = DEP .. p
    local st = redis.call('HGET', dk, 'st')
    if st then
      if TERMINAL[st] then return 'done' end
      return 'open'
    end
    local f = redis.call('HMGET', job_key(p), 'st', 'r', 'f', 'ts')
    if f[1] == 'completed' then
      redis.call('HSET', dk, 'st', 'completed', 'f', f[3] or NOW_S)
      if f[4] then redis.call('HSET', dk, 'jt', f[4]) end
      if f[2] then redis.call('HSET', dk, 'r', f[2]) end
      redis.call('PEXPIRE', dk, @RETAIN@)
      return 'done'
    end
    redis.call('HSET', dk, 'st', 'ready', 'ts', NOW_S)
    return 'open'
  end

  -- Records job `id`'s parents and its own record; the first unfinished parent (its
  -- blocker), or nil when none is unfinished. Unfinished parents are marked followed;
  -- the run links of finished ones go to the job's record (when it is written already).
  local function add_parents(id, deps, wid, step, pol)
    local np, first, links = 0, nil, {}
    for i = 1, math.min(#deps, MAX_PARENTS) do
      local p = deps[i]
      if type(p) == 'string' and p ~= '' and p ~= id then
        redis.call('RPUSH', DEPP .. id, p)
        -- SADD's answer: a parent listed twice is counted once, as release counts it.
        if parent_state(p) == 'open' and redis.call('SADD', DEPC .. p, id) == 1 then
          np = np + 1
          mark_followed(p)
          if not first then first = p end
        elseif #links < @MAX_LINKS@ then
          local c = field(DEP .. p, 'rc')
          if c then links[#links + 1] = c end
        end
      end
    end
    add_links(id, links)
    local dk = DEP .. id
    redis.call('HSET', dk, 'st', np > 0 and 'pending' or 'ready', 'np', np, 'ts', NOW_S)
    if wid then redis.call('HSET', dk, 'w', wid) end
    if type(step) == 'string' and step ~= '' then redis.call('HSET', dk, 's', step) end
    if type(pol) == 'string' and POLICIES[pol] then redis.call('HSET', dk, 'pol', pol) end
    if first then redis.call('HSET', dk, 'wb', first) end
    return first
  end
