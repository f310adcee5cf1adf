--[[
  wf_depend.lua — make a job that has not started wait for other jobs
  (JobChainManager.wait_for_dependencies; kitium_queue.features.workflows).

  KEYS: the shared layout (lib_base.lua).
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4] job id, ARGV[5] its parents' ids (JSON list), ARGV[6] on_failure ('' = default)
  Returns { 'ok', unfinished parents } | { 'missing' } | { 'started', state } |
  { 'tracked' } (it has dependencies already) | { 'depended' } (other jobs depend on it,
  or did: given parents now, it could close a cycle) | { 'refused', reason }.
  On a queue with a fence (one copy among several: a multi-region queue) the job's
  stored options also list its parents (depends_on, and on_failure when given, as
  wf_create.lua writes a step's), and the job passes the `requeue` slot (requeued,
  lib_slots.lua), so the features that copy jobs elsewhere copy it again as it is now:
  a copy made before records the parents there (the workflows' requeue fragment), one
  made after finds them in its options.
]]
--@include lib_base
--@include lib_events
--@include lib_jobs
--@include lib_parking
--@include lib_park_timers
--@include lib_slots
@PRELUDE@

local id = ARGV[4]
local ok, deps = pcall(cjson.decode, ARGV[5] or '')
if not ok or type(deps) ~= 'table' then return bad_arg('wf_depend', 'parents are not a JSON list') end
local jk = job_key(id)
if redis.call('EXISTS', jk) == 0 then return { 'missing' } end
local f = redis.call('HMGET', jk, 'st', 'p', 'q')
local st = f[1] or 'waiting'
if redis.call('EXISTS', DEP .. id) == 1 then
  -- 'np' is written with a job's parents; a record without it is that of a parent.
  if redis.pcall('HEXISTS', DEP .. id, 'np') == 0 then return { 'depended' } end
  return { 'tracked' }
end
if st ~= 'waiting' and st ~= 'delayed' then return { 'started', st } end
local why = check_parents(deps, id)
if why then return { 'refused', why } end
local pol = ARGV[6]
if pol == '' then pol = nil end
local first = add_parents(id, deps, nil, nil, pol)
--@if fence
local o = redis.call('HGET', jk, 'o') or ''
if o == '' or string.sub(o, -1) == '}' then
  local extra = ',"depends_on":' .. ARGV[5]
  if pol and POLICIES[pol] then extra = extra .. ',"on_failure":"' .. pol .. '"' end
  if o == '' or string.match(o, '^{%s*}$') then o = '{' .. string.sub(extra, 2) .. '}'
  else o = string.sub(o, 1, -2) .. extra .. '}' end
  redis.call('HSET', jk, 'o', o)
end
--@end
if first then
  redis.call('HSET', jk, 'wd', '1')
  if st == 'waiting' and redis.call('ZREM', K_WAIT, id) == 1 then
    park(id, jk, int(wait_score(arg_int(f[2], 0, 0, 65535), num(f[3]))), 'wp:' .. first)
  end
end
--@if fence
requeued(id, jk, st)
--@end
if not first then return { 'ok', 0 } end
return { 'ok', int(num(redis.call('HGET', DEP .. id, 'np'))) }
