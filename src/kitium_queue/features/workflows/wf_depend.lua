--[[
  wf_depend.lua — make a job that has not started wait for other jobs
  (JobChainManager.wait_for_dependencies; kitium_queue.features.workflows).

  KEYS: the shared layout (lib_base.lua).
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4] job id, ARGV[5] its parents' ids (JSON list), ARGV[6] on_failure ('' = default)
  Returns { 'ok', unfinished parents } | { 'missing' } | { 'started', state } |
  { 'tracked' } (it has dependencies already) | { 'refused', reason }.
]]
--@include lib_base
--@include lib_events
--@include lib_jobs
--@include lib_parking
--@include lib_park_timers
@PRELUDE@

local id = ARGV[4]
local ok, deps = pcall(cjson.decode, ARGV[5] or '')
if not ok or type(deps) ~= 'table' then return bad_arg('wf_depend', 'parents are not a JSON list') end
local jk = job_key(id)
if redis.call('EXISTS', jk) == 0 then return { 'missing' } end
local f = redis.call('HMGET', jk, 'st', 'p', 'q')
local st = f[1] or 'waiting'
if redis.call('EXISTS', DEP .. id) == 1 then return { 'tracked' } end
if st ~= 'waiting' and st ~= 'delayed' then return { 'started', st } end
local why = check_parents(deps, id)
if why then return { 'refused', why } end
local pol = ARGV[6]
if pol == '' then pol = nil end
local first = add_parents(id, deps, nil, nil, pol)
if not first then return { 'ok', 0 } end
redis.call('HSET', jk, 'wd', '1')
if st == 'waiting' and redis.call('ZREM', K_WAIT, id) == 1 then
  park(id, jk, int(wait_score(arg_int(f[2], 0, 0, 65535), num(f[3]))), 'wp:' .. first)
end
return { 'ok', int(num(redis.call('HGET', DEP .. id, 'np'))) }
