--[[
  rg_apply.lua — apply replication entries to this copy of the queue (a secondary, or a
  new primary catching up from its peers). Every entry is idempotent and the order of
  entries of different jobs does not matter; for one job, an outcome that ends it wins
  over anything older (an 'end' that arrives before its job leaves a tombstone, so the
  late 'put' is skipped). A batch may be applied late, after newer ones (a replicator
  that waited out a backoff, entries taken over from a silent one): 'put' and 'req'
  copy the job as it is now at the source, and each 'req' of a replication call (one
  with a source) records its place in the source's outbox on the copy (field rq,
  "<ms>-<seq>|<source>"), so an 'end' of the same source written before it (the job was
  requeued since) is skipped. Places of different sources (other servers' clocks) are
  never compared.

  KEYS: the shared layout (lib_base.lua).
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4]   dlq enabled ('1' | '0'): where a job that failed for good goes here
  ARGV[5]   replication position to record once applied ('' = none): an outbox entry id
  ARGV[6]   its source, "<region>@<epoch>". With a position, a copy that knows a later
            epoch than the source's refuses the whole call (KQ_FENCED, nothing written): a
            replicator that still follows a deposed primary cannot apply its stream.
  ARGV[7]   trim the index of copies older than this (ms; 0 = do not trim)
  ARGV[8]   index floor (ms): the `at` of entries that give none
  ARGV[9..] 20 fields per entry (features/regions/lua.py ENTRY), at most 500 entries:
            op, id, name, data, opts, priority, lifo, created, state, due, attempts,
            epoch, idempotency key, its ms left, payload, finished, keep count, keep age,
            at (when the source wrote it: a copy added here is indexed at max(created,
            at), so that a peer catching up from this copy finds what arrived after its
            own position, whenever the job was created), seq (the sequence number of its
            outbox entry within that ms: with at, the entry's place in the source's
            outbox, which orders a requeue and an outcome written in the same ms)
    op 'put'   the job as it is at the source (rg_export.lua): created here if missing
               (through add_job, so the features' enqueue fragments run), ended here if
               it is finished there. A copy here not started whose options list no
               parents takes the source's options when those list some (parents added
               there since: wait_for_dependencies) and passes the `requeue` slot (its
               state here as `from`): the workflows feature records them
       'req'   the same, and a copy finished here goes back to wait (retry, replay);
               a copy removed here (its tombstone) is added again when the 'req' was
               written after the removal by the same source: the job came back there
               (a workflow's step revived by a replay); one written before stays gone.
               So is a 'put' or an 'end' (not 'removed') written after the removal: a
               new job took the id there (an erasure frees a chosen id at once)
       'end'   the job ended at the source (state: completed | failed | removed,
               payload: its result or reason): this copy ends the same way (the
               `release` slot runs with that outcome), or, when there is no copy, one is
               written already finished (completed, failed) or a tombstone (removed)
       'att'   a retry at the source spent attempts: the copy counts them
       'gone'  the source has no such job any more: nothing to do
       'erase' the job was erased at the source (docs/compliance.md; state:
               'removed', payload: its subject, '' none): this copy is erased too,
               in any state, finished included: a copy not finished passes the
               `release` slot ('removed'), the `erase` slot deletes what features
               keep of it here (found by the id, the idempotency key, the subject: a
               copy already removed here leaves its subject's index too), its
               idempotency key goes if it names the job (also where no feature
               keeps it), then its record and logs go and a tombstone stays. No
               requeue mark holds an erasure back.
  Malformed arguments are refused before the first write (KQ_BAD_ARGUMENT).
  Copies pass the features' slots (add_job's accept and enqueue, the release of an
  outcome) with SLOT_SCRATCH.copy = { id = <the entry's job id>, state = <its state
  at the source, or the outcome of an 'end'> } (lib_slots.lua): a feature that keeps
  state beside its jobs records a copy as the source has it (the workflows feature: a
  step of a workflow this copy does not know yet joins it).

  Returns one status per entry: 'added' | 'ended' | 'requeued' | 'exists' | 'gone' |
  'erased' | 'refused' (a feature's accept slot refused the copy here; nothing of it
  written).
  Keys: <prefix>rg:idx (ZSET copy id -> created at the source, for peers catching up),
  <prefix>rg:gone:<id> (tombstone, a day: the removal's place in its source's outbox,
  "<ms>-<seq>|<source>", or 1), the record <prefix>rg (pos, src).
]]
--@include lib_base
--@include lib_events
--@include lib_jobs
--@include lib_sets
--@include lib_retention
--@include lib_parking
--@include lib_requeue
--@include lib_add
--@include slot_release
--@include slot_erase

local N = 20
local fields = #ARGV - 8
if fields < 0 or fields % N ~= 0 or fields / N > 500 then
  return bad_arg('rg_apply', 'expected ' .. N .. ' fields for each of at most 500 entries after ' ..
    'ARGV[8], got ' .. fields .. ' fields')
end
local OPS = { put = true, req = true, ['end'] = true, att = true, gone = true, erase = true }
for b = 9, #ARGV, N do
  if not OPS[ARGV[b]] then return bad_arg('rg_apply', 'unknown op ' .. tostring(ARGV[b])) end
end
local dlq_enabled = ARGV[4] == '1'
local pos, src = ARGV[5], ARGV[6]
if pos ~= '' then
  local src_epoch = tonumber(string.match(src, '@(%d+)$') or '')
  local here = tonumber(redis.call('HGET', PREFIX .. 'rg', 'epoch') or '')
  if src_epoch == nil or (here ~= nil and here > src_epoch) then
    return redis.error_reply('KQ_FENCED replication from ' .. src .. ' refused: this copy ' ..
      'knows epoch ' .. tostring(here) .. ', a later one; its source is no longer the primary')
  end
end
local cutoff = arg_int(ARGV[7], 0, 0, MAX_MS)
local floor = arg_int(ARGV[8], 0, 0, MAX_MS)
local K_IDX = PREFIX .. 'rg:idx'
local GONE_TTL = 86400000
local TERMINAL = { completed = K_COMPLETED, failed = K_FAILED, dlq = K_DLQ }
local PLACE = { waiting = K_WAIT, delayed = K_DELAYED, active = K_ACTIVE }

-- The tombstone of a copy removed here. In a replication call it holds the place of
-- the removal in its source's outbox ("<ms>-<seq>|<source>", as the requeue mark rq),
-- so that a 'req' written after it brings the job back and one written before it,
-- applied late, does not (gone_before).
local function tombstone(id, at, seq)
  local mark = '1'
  if src ~= '' then mark = int(at) .. '-' .. int(seq) .. '|' .. src end
  redis.call('SET', PREFIX .. 'rg:gone:' .. id, mark, 'PX', GONE_TTL)
end

-- Erase this copy of a job erased at the source (op 'erase'), whatever its state here.
-- `kind`: the type of its key; `st`: its state (nil: no record). `sj`: the subject the
-- source named: a record removed here already gets a stand-in holding it for the
-- `erase` slot, so the features find what they keep of the job under its subject.
local function erase_copy(id, jk, kind, st, ik, sj)
  if kind == 'hash' then
    if not TERMINAL[st] then
--@if release
      release_slot(id, jk, 'removed')
--@end
      if st == 'pending' then forget_parked(id, jk) end
    end
    local own = redis.call('HGET', jk, 'ik')
    if own then ik = own end
  elseif kind == 'none' and sj ~= '' then
    redis.call('HSET', jk, 'sj', sj)
  end
  for _, set in ipairs({ K_WAIT, K_DELAYED, K_ACTIVE, K_COMPLETED, K_FAILED, K_DLQ }) do
    redis.call('ZREM', set, id)
  end
  -- Its chosen id's window ends (enqueue.lua); a key damaged by hand is left as it is.
  if key_type(PREFIX .. 'jids') == 'zset' then redis.call('ZREM', PREFIX .. 'jids', id) end
--@if erase
  erase_slot(id, jk, ik)
--@end
  -- The copy's idempotency key (keep_key wrote it here) goes too, if it still names
  -- this job, whatever features this copy has (the compliance feature's `erase`
  -- fragment, when there, deleted it already).
  if ik ~= '' then
    local ikey = PREFIX .. 'idem:' .. ik
    if key_type(ikey) == 'string' and redis.call('GET', ikey) == id then
      redis.call('DEL', ikey)
    end
  end
  -- A key damaged by hand (another type than a hash) is the erased job's all the same.
  delete_job(id)
  redis.call('ZREM', K_IDX, id)
end

-- Whether a copy's options lack the parents (depends_on) the source's options `opts`
-- list: the source added them after the copy was made (wait_for_dependencies). Once:
-- a copy whose options list parents keeps them.
local UNSTARTED = { waiting = true, delayed = true, pending = true }
local function takes_parents(jk, opts)
  if not string.find(opts, '"depends_on"', 1, true) then return false end
  local own = redis.call('HGET', jk, 'o') or ''
  return not string.find(own, '"depends_on"', 1, true)
end

local function keep_key(id, ik, ttl)
  if ik ~= '' and ttl > 0 then
    redis.call('HSET', job_key(id), 'ik', ik)
    redis.call('SET', PREFIX .. 'idem:' .. ik, id, 'PX', int(ttl), 'NX')
  end
end

-- End this copy as the source did. `st`: its state here (not terminal).
local function end_job(id, jk, st, outcome, payload, finished, keep_count, keep_age, at, seq)
--@if release
  release_slot(id, jk, outcome, payload)
--@end
  if PLACE[st] then
    redis.call('ZREM', PLACE[st], id)
  elseif st == 'pending' then
    forget_parked(id, jk)
  end
  if outcome == 'removed' then
    delete_job(id)
    tombstone(id, at, seq)
    return
  end
  redis.call('HDEL', jk, 'lt', 'due', 'pk', 'cx')
  if outcome == 'completed' then
    if finished <= 0 then finished = NOW end
    redis.call('HSET', jk, 'st', 'completed', 'r', payload, 'f', int(finished))
    redis.call('ZADD', K_COMPLETED, int(finished), id)
    trim_finished(K_COMPLETED, keep_count, keep_age)
  else
    local state = dead_letter(jk, id, dlq_enabled, payload, '')
    if state == 'failed' then trim_finished(K_FAILED, keep_count, keep_age) end
  end
end

-- Where in this call's source's outbox the job was last requeued (the at, seq of the
-- latest 'req' of this source applied here), or -1, -1: none, another source's, or a
-- damaged field (a time past MAX_MS included: it would hold back every later outcome).
-- A mark without a sequence number ("<ms>|<source>") gives -1 for it: within its ms,
-- nothing is ordered.
local function requeued_at(jk)
  if src == '' then return -1, -1 end
  local rq = redis.call('HGET', jk, 'rq')
  if not rq then return -1, -1 end
  local ms, sq, from = string.match(rq, '^(%d+)%-(%d+)|(.*)$')
  if not ms then
    sq = nil
    ms, from = string.match(rq, '^(%d+)|(.*)$')
  end
  if from ~= src or #ms > 16 or (sq and #sq > 16) then return -1, -1 end
  local n, q = tonumber(ms), tonumber(sq or '-1')
  if not n or n > MAX_MS or not q or q > MAX_MS then return -1, -1 end
  return n, q
end

-- Whether the outbox place at, seq comes before the job's requeue mark (-1 if it has
-- none): an outcome written before the requeue, applied late.
local function before_requeue(jk, at, seq)
  local ms, sq = requeued_at(jk)
  return at < ms or (at == ms and sq >= 0 and seq < sq)
end

-- Whether the place at, seq comes after the job's requeue mark: a newer requeue.
local function after_requeue(jk, at, seq)
  local ms, sq = requeued_at(jk)
  return at > ms or (at == ms and seq > sq)
end

-- Whether job `id`'s tombstone was written by this call's source before the place
-- at, seq: a 'req' written after the removal (the job came back at the source). A
-- tombstone of another source, without a place or damaged says no: the copy stays gone.
local function gone_before(id, at, seq)
  if src == '' then return false end
  local mark = redis.call('GET', PREFIX .. 'rg:gone:' .. id)
  local ms, sq, from = string.match(mark or '', '^(%d+)%-(%d+)|(.*)$')
  if not ms or from ~= src or #ms > 16 or #sq > 16 then return false end
  local n, q = tonumber(ms), tonumber(sq)
  return at > n or (at == n and seq > q)
end

local out = {}
local woke = false
for b = 9, #ARGV, N do
  local op, id, name, data, opts = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4]
  local pri, lifo, created = ARGV[b + 5], ARGV[b + 6], arg_int(ARGV[b + 7], 0, 0, MAX_MS)
  local state, due = ARGV[b + 8], arg_int(ARGV[b + 9], 0, 0, MAX_MS)
  local attempts = arg_int(ARGV[b + 10], 0, 0, MAX_MS)
  local ep, ik, ittl = ARGV[b + 11], ARGV[b + 12], arg_int(ARGV[b + 13], 0, 0, MAX_MS)
  local payload, finished = ARGV[b + 14], arg_int(ARGV[b + 15], 0, 0, MAX_MS)
  local keep_count, keep_age = ARGV[b + 16], ARGV[b + 17]
  local at = arg_int(ARGV[b + 18], floor, 0, MAX_MS)
  local seq = arg_int(ARGV[b + 19], 0, 0, MAX_MS)
  local jk = job_key(id)
--@if enqueue
  -- For the features' fragments (SLOT_SCRATCH, lib_slots.lua): this call applies copies,
  -- and the job of this entry is in `state` at its source (its outcome for an 'end').
  -- A feature that keeps state beside its jobs records a copy as it is there, whatever
  -- this copy knows yet (the workflows feature: a step of a workflow not here yet).
  SLOT_SCRATCH.copy = { id = id, state = state }
--@end
  local kind = redis.call('TYPE', jk)['ok']
  local st = nil
  if kind == 'hash' then st = redis.call('HGET', jk, 'st') or 'waiting' end
  local status = 'exists'
  if op == 'gone' then
    status = 'gone'
  elseif op == 'erase' then
    erase_copy(id, jk, kind, st, ik, payload)
    tombstone(id, at, seq)
    status = 'erased'
  elseif kind ~= 'hash' and kind ~= 'none' then
    status = 'exists'  -- a damaged key is left for an operator; never overwritten
  elseif op == 'att' then
    if st and not TERMINAL[st] and attempts > num(redis.call('HGET', jk, 'a')) then
      redis.call('HSET', jk, 'a', int(attempts))
    end
    if not st then status = 'gone' end
  elseif not st then
    local gone = redis.call('EXISTS', PREFIX .. 'rg:gone:' .. id) == 1
    if gone and (op == 'put' or op == 'req' or op == 'end') and state ~= 'removed'
        and gone_before(id, at, seq) then
      -- Removed here, and put back in wait at the source since (a workflow's step
      -- revived by a replay: 'req'), or a new job took the id there since (a chosen id
      -- is free again once its job was erased: 'put', 'end'): the copy comes back as
      -- the source has it now. An entry written before the removal, applied late,
      -- leaves it gone.
      redis.call('DEL', PREFIX .. 'rg:gone:' .. id)
      gone = false
    end
    if gone or state == 'removed' then
      if op == 'end' then tombstone(id, at, seq) end
      status = 'gone'
    else
      local delay = 0
      if op ~= 'end' and state == 'delayed' and due > NOW then delay = due - NOW end
      if op == 'end' then data = '' end
      local nid, reason, added = add_job(id, name, data, opts, pri, delay, lifo, nil)
      if not nid then
        status = 'refused'
      else
        if added == 'waiting' then woke = true end
        redis.call('HSET', jk, 'ts', int(created > 0 and created or NOW), 'a', int(attempts))
        if ep ~= '' then redis.call('HSET', jk, 'ep', ep) end
        keep_key(id, ik, ittl)
        local score = created
        if score < at then score = at end
        if score <= 0 then score = NOW end
        redis.call('ZADD', K_IDX, int(score), id)
        status = 'added'
        local now_st = redis.call('HGET', jk, 'st') or 'waiting'
        if op == 'end' or TERMINAL[state] then
          local outcome = state
          if state == 'dlq' then outcome = 'failed' end
          end_job(id, jk, now_st, outcome, payload, finished, keep_count, keep_age, at, seq)
        end
      end
    end
  elseif op == 'end' and not TERMINAL[st] and before_requeue(jk, at, seq) then
    status = 'exists'  -- older than a requeue copied here: applied late (module docstring)
  else
    keep_key(id, ik, ittl)
    local ends = (op == 'end') or TERMINAL[state]
    if ends and not TERMINAL[st] then
      local outcome = state
      if state == 'dlq' then outcome = 'failed' end
      end_job(id, jk, st, outcome, payload, finished, keep_count, keep_age, at, seq)
      status = 'ended'
    elseif op == 'req' and TERMINAL[st] and not TERMINAL[state] and state ~= 'removed' then
      requeue(id, TERMINAL[st])
      woke = true
      status = 'requeued'
    else
      if not TERMINAL[st] and attempts > num(redis.call('HGET', jk, 'a')) then
        redis.call('HSET', jk, 'a', int(attempts))
      end
      if op ~= 'end' and UNSTARTED[st] and takes_parents(jk, opts) then
        -- Parents added at the source after this copy was made (wait_for_dependencies):
        -- it takes the source's options, and the features that record parents do so.
        redis.call('HSET', jk, 'o', opts)
--@if requeue
        requeued(id, jk, st)
--@end
      end
    end
  end
  if op == 'req' and src ~= '' and (status == 'added' or status == 'requeued' or
      status == 'exists') and redis.call('TYPE', jk)['ok'] == 'hash'
      and after_requeue(jk, at, seq) then
    redis.call('HSET', jk, 'rq', int(at) .. '-' .. int(seq) .. '|' .. src)
  end
  out[#out + 1] = status
end
if pos ~= '' then redis.call('HSET', PREFIX .. 'rg', 'pos', pos, 'src', src) end
if cutoff > 0 then
  redis.call('ZREMRANGEBYSCORE', K_IDX, '-inf', '(' .. int(cutoff))
end
if woke then wake() end
return out
