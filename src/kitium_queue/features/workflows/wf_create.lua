--[[
  wf_create.lua — write a whole workflow at once (kitium_queue.features.workflows).

  KEYS: the shared layout (lib_base.lua).
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4]   workflow id
  ARGV[5..] 9 fields per step, parents before children: step name, job id, job name,
            data, options JSON (with workflow_id, workflow_step, on_failure), priority,
            delay ms, lifo ('1' | '0'), the parents' job ids (JSON list)
  Checked before anything is written: the workflow id is new and no job id is taken.
  Each step's parents are recorded, then it goes through add_job (every feature's
  accept and enqueue slots): roots to wait, the others parked behind their first
  unfinished parent. On a queue with a fence (one copy among several: a multi-region
  queue) a step's stored options also list its parents (depends_on, added here: a list
  of up to MAX_PARENTS ids may be longer than the options a producer may send), so that
  its copies elsewhere record them. A step another feature refuses is failed at once
  (its on_failure applies).
  Returns { 'ok', n } | { 'exists', workflow id } | { 'taken', job id }; KQ_BAD_STATE
  (nothing written) when the index of workflows holds another type than a sorted set.
  Fence: as enqueue.lua, when a feature filled the `fence` slot and it refuses (a region
  of a multi-region queue that is not the primary), KQ_FENCED <reason> before anything
  is written.
]]
--@include lib_base
--@include lib_events
--@include lib_add
--@include lib_parking
--@include lib_park_timers
--@include slot_release
--@include slot_fence
@PRELUDE@

-- (Blocks keep this script's own locals few: a script of every feature shares the 200
-- locals of its main chunk with the prelude and the fragments.)
--@if fence
do
  local fenced = fence_slot('enqueue')
  if fenced then return redis.error_reply('KQ_FENCED ' .. fenced) end
end
--@end

-- `opts` (an options JSON object, or '') with depends_on = the JSON list `listed`.
local function with_parents(opts, listed)
  if opts == '' or string.match(opts, '^{%s*}$') then return '{"depends_on":' .. listed .. '}' end
  return string.sub(opts, 1, -2) .. ',"depends_on":' .. listed .. '}'
end

local wid = ARGV[4]
local fields = #ARGV - 4
if wid == nil or wid == '' then return bad_arg('wf_create', 'empty workflow id') end
if fields <= 0 or fields % 9 ~= 0 then
  return bad_arg('wf_create', 'expected 9 fields per step, got ' .. fields)
end
local n = fields / 9
local parents = {}
for j = 0, n - 1 do
  local ok, ps = pcall(cjson.decode, ARGV[13 + j * 9])
  if not ok or type(ps) ~= 'table' then
    return bad_arg('wf_create', 'step ' .. tostring(ARGV[5 + j * 9]) .. ': parents are not a list')
  end
  parents[j] = ps
end
-- The index damaged by hand (another type): refused before anything is written.
do
  local bad = damaged(WFI, 'zset')
  if bad then return redis.error_reply(bad) end
end
if redis.call('EXISTS', WF .. wid) == 1 or redis.call('ZSCORE', WFI, wid) then
  return { 'exists', wid }
end
for j = 0, n - 1 do
  local id = ARGV[6 + j * 9]
  if id == '' then return bad_arg('wf_create', 'a step has no job id') end
  -- A job, or the dependency record of one (a step of another workflow whose id reads
  -- the same: workflow "a" step "b:c" and workflow "a:b" step "c"), holds the id.
  if redis.call('EXISTS', job_key(id)) == 1 or redis.call('EXISTS', DEP .. id) == 1 then
    return { 'taken', id }
  end
end
redis.call('HSET', WF .. wid, 'st', 'running', 'ts', NOW_S, 'n', n, 'left', n)
redis.call('ZADD', WFI, NOW, wid)
redis.call('UNLINK', WFS .. wid)  -- an earlier run's steps (one field each): freed lazily
local refused = {}
for j = 0, n - 1 do
  local b = 5 + j * 9
  local step, id, name, data, opts = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4]
  redis.call('HSET', WFS .. wid, step, id)
  redis.call('DEL', DEP .. id, DEPP .. id, DEPC .. id)
  local pol = nil
  local ok, o = pcall(cjson.decode, opts)
  if ok and type(o) == 'table' and POLICIES[o['on_failure']] then pol = o['on_failure'] end
  add_parents(id, parents[j], wid, step, pol)
--@if fence
  if #parents[j] > 0 and (opts == '' or string.sub(opts, -1) == '}') then
    opts = with_parents(opts, ARGV[b + 8])
  end
--@end
  local got, reason = add_job(id, name, data, opts, ARGV[b + 5], ARGV[b + 6], ARGV[b + 7], nil)
  if not got then
    -- Refused by another feature: nothing of the job was written; the step fails.
    redis.call('HSET', DEP .. id, 'st', 'ready')
    refused[#refused + 1] = { id, reason }
  end
end
for i = 1, #refused do
  step_failed(refused[i][1], 'refused: ' .. tostring(refused[i][2]))
end
wake()
return { 'ok', n }
