--[[
  wf_cancel.lua — cancel a workflow (kitium_queue.features.workflows).

  KEYS: the shared layout (lib_base.lua).
  ARGV[1..3]: shared prefix, now, events maxlen.  ARGV[4] workflow id.
  Every step that has not started is removed and closed as cancelled (for good: a
  replay does not bring it back); running steps finish, and release nothing new. Each
  removal says so to the release fragments (payload CANCELLED, prelude.lua): a copy of
  the queue elsewhere cancels its copy of the workflow rather than failing it.
  Returns { state, steps cancelled, ids of running steps } | { 'missing' }; KQ_BAD_STATE
  (nothing written) when the workflow's record or step index holds another type. A step
  whose own records are damaged is skipped.
  Events: workflow-cancelled (also on wf-log).
]]
--@include lib_base
--@include lib_events
--@include lib_jobs
--@include lib_parking
--@include lib_park_timers
--@include slot_release
@PRELUDE@

local wid = ARGV[4]
if wid == nil or wid == '' then return bad_arg('wf_cancel', 'empty workflow id') end
local wk = WF .. wid
-- Its records damaged by hand (another type): refused before anything is written.
local bad = damaged(wk, 'hash') or damaged(WFS .. wid, 'hash')
if bad then return redis.error_reply(bad) end
local st = redis.call('HGET', wk, 'st')
if not st then return { 'missing' } end
if st == 'completed' or st == 'cancelled' then return { st, 0, {} } end
redis.call('HSET', wk, 'st', 'cancelled')
log_event('workflow-cancelled', wid)
local before = num(redis.call('HGET', wk, 'left'))
cancel_rest(wid, 'workflow ' .. wid .. ' was cancelled', false, CANCELLED)
local ids = redis.call('HVALS', WFS .. wid)
local running = {}
for i = 1, #ids do
  if field(DEP .. ids[i], 'st') == 'ready' and field(job_key(ids[i]), 'st') == 'active' then
    running[#running + 1] = ids[i]
  end
end
local after = num(redis.call('HGET', wk, 'left'))
wf_left(wid, 0)
return { 'cancelled', int(before - after), running }
