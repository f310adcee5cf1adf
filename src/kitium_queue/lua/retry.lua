--[[
  retry.lua — put finished jobs back to wait (failed | dlq | completed → waiting) with a
  fresh set of attempts.

  KEYS: the shared layout (lib_base.lua).
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4]   mode: 'ids' or 'state'
  mode 'ids':   ARGV[5..] job ids (at most 1000; more is refused with KQ_BAD_ARGUMENT).
                Raises KQ_JOB_NOT_FOUND for an unknown id (or one whose record is gone)
                and KQ_BAD_STATE for a job that is not failed, dlq or completed, or
                whose key holds another type than a hash; nothing is moved in any case.
                An id given twice moves once.
  mode 'state': ARGV[5] state ('failed' | 'dlq' | 'completed'), ARGV[6] limit, clamped
                to 0..1000 (BATCH_MAX; missing or not a number: 1000): the oldest
                `limit` jobs of that state from position ARGV[7] (optional, clamped to
                0..MAX_MS; missing or not a number: 0) are examined, and each whose
                record can run again moved; the others stay (lib_requeue.lua
                requeue_sound).
                ARGV[8] (optional; with ARGV[7] only): the newest score examined
                (lib_requeue.lua requeue_range); missing or not a number: the score of
                the set's newest entry now, the cutoff the reply names.
                bulk_retry() calls again for more, from the number skipped so far and
                with the cutoff of its first call: a job it moved that finishes again
                meanwhile joins the set after the cutoff, and is not moved twice.
  Every argument is checked before the first write, and so are the keys it writes: when
  wait, the event stream, the marker or a finished set it moves jobs from holds another
  type, the reply is KQ_DAMAGED_KEY <found> <expected> <key> and nothing was written.
  Returns the ids moved; in mode 'state' with ARGV[7], { ids moved, number skipped,
  cutoff }.
  Events: job-waiting per job.
]]
--@include lib_requeue
--@include errors

-- skipped: how many entries mode 'state' left, and upto its cutoff (its reply names both
-- when ARGV[7] is given).
local moved, skipped, upto = {}, nil, nil
if ARGV[4] == 'ids' then
  if #ARGV - 4 > BATCH_MAX then
    return bad_arg('retry', 'at most ' .. BATCH_MAX .. ' job ids per call, got ' ..
      (#ARGV - 4))
  end
  local plan, seen = {}, {}
  for i = 5, #ARGV do
    local id = ARGV[i]
    local kt = key_type(job_key(id))
    if kt == 'none' then return fail(ERR_JOB_NOT_FOUND, 'job ' .. id .. ' does not exist') end
    if kt ~= 'hash' then
      return fail(ERR_BAD_STATE, 'job ' .. id .. ' has a damaged record (its key holds a ' ..
        kt .. ', not a hash) and cannot run again; remove it with remove_job')
    end
    local st = redis.call('HGET', job_key(id), 'st')
    if not st then
      return fail(ERR_BAD_STATE, 'job ' .. id .. ' has a damaged record (no state) and ' ..
        'cannot run again; remove it with remove_job')
    end
    local set_key = FINISHED_SETS[st]
    if not set_key then
      return fail(ERR_BAD_STATE, 'job ' .. id .. ' is ' .. st ..
        '; only failed, dlq or completed jobs can be retried')
    end
    -- An id given twice moves once (the `requeue` slot sees each job once).
    if not seen[id] then plan[#plan + 1] = { id, set_key, FINISHED_INDEX[st] } end
    seen[id] = true
  end
  -- The finished sets the plan moves jobs from, each once.
  local sets, listed = {}, {}
  for i = 1, #plan do
    if not listed[plan[i][3]] then sets[#sets + 1] = plan[i][3] end
    listed[plan[i][3]] = true
  end
  local damaged = requeue_damaged(unpack(sets))
  if damaged then return damaged end
  for i = 1, #plan do
    requeue(plan[i][1], plan[i][2])
    moved[#moved + 1] = plan[i][1]
  end
else
  local set_key = FINISHED_SETS[ARGV[5]]
  if not set_key then
    return fail(ERR_BAD_STATE, 'cannot bulk-retry state ' .. ARGV[5] ..
      '; use failed, dlq or completed')
  end
  local damaged = requeue_damaged(FINISHED_INDEX[ARGV[5]])
  if damaged then return damaged end
  -- A limit of 0 must not become ZRANGE 0 -1, which is the whole set.
  local limit = arg_int(ARGV[6], BATCH_MAX, 0, BATCH_MAX)
  local start = arg_int(ARGV[7], 0, 0, MAX_MS)
  local ids = {}
  if ARGV[7] then
    ids, upto = requeue_range(set_key, start, limit, ARGV[8])
  elseif limit > 0 then
    ids = redis.call('ZRANGE', set_key, int(start), int(start + limit - 1))
  end
  moved, skipped = requeue_sound(ids, set_key)
  if not ARGV[7] then skipped = nil end
end
if #moved > 0 then wake() end
if skipped then return { moved, skipped, upto or '' } end
return moved
