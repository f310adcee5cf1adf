--[[
  purge.lua — enforce a retention limit on one finished state (completed, failed, dlq):
  delete the jobs beyond a count and those older than an age
  (kitium_queue.features.retention, the retention service).

  KEYS: the shared layout (lib_base.lua).
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4]  state: 'completed' | 'failed' | 'dlq' (anything else: KQ_BAD_ARGUMENT)
  ARGV[5]  keep count: the newest N of the state are kept (-1 = no count limit)
  ARGV[6]  keep age ms: jobs that entered the state longer ago are deleted (-1 = none)
  ARGV[7]  mode: 'delete' (an ordinary deletion: hash and log, as remove_on_complete
           does) or 'erase' (also the job's copies elsewhere, through the `erase` slot:
           a stored exactly-once result, a workflow's copy of the result, its subject
           index entry, its chosen id's window; nothing of the job is left)
  ARGV[8]  most jobs deleted by this call (clamped to 1..BATCH_MAX)

  The score of a finished set is the time the job entered it (finished, dead-lettered),
  so the oldest go first. Returns { deleted, more } where more = 1 when the limit left
  jobs to delete (call again).
  A state set damaged by hand (another type): KQ_DAMAGED_KEY, nothing written.
  Events: none (a purge is housekeeping; the jobs' own events are trimmed with the
  stream).
]]
--@include lib_base
--@include lib_jobs
--@include slot_erase

local SETS = { completed = K_COMPLETED, failed = K_FAILED, dlq = K_DLQ }
local set_key = SETS[ARGV[4]]
if not set_key then
  return bad_arg('purge', 'state must be completed, failed or dlq, got ' .. tostring(ARGV[4]))
end
-- The state's set damaged by hand (another type): KQ_DAMAGED_KEY, nothing written.
local bad = check_keys(({ completed = 4, failed = 5, dlq = 6 })[ARGV[4]])
if bad then return bad end
local keep_count = arg_int(ARGV[5], -1, -1, MAX_MS)
local keep_age = arg_int(ARGV[6], -1, -1, MAX_MS)
local erase = ARGV[7] == 'erase'
if not erase and ARGV[7] ~= 'delete' then
  return bad_arg('purge', "mode must be 'delete' or 'erase', got " .. tostring(ARGV[7]))
end
local limit = arg_int(ARGV[8], BATCH_MAX, 1, BATCH_MAX)
-- Erasing also ends each job's chosen-id window (enqueue.lua's jids): nothing is left.
local K_JIDS = PREFIX .. 'jids'
if erase then
  bad = check_key(K_JIDS, 'zset')
  if bad then return bad end
end

local victims = {}
if keep_count >= 0 then
  local excess = redis.call('ZCARD', set_key) - keep_count
  if excess > 0 then
    if excess > limit then excess = limit end
    victims = redis.call('ZRANGE', set_key, 0, excess - 1)
  end
end
if keep_age >= 0 and #victims < limit then
  -- The oldest first: any count victims are a prefix of these, so skip them.
  local old = redis.call('ZRANGEBYSCORE', set_key, '-inf', int(NOW - keep_age), 'LIMIT',
    #victims, limit - #victims)
  for i = 1, #old do victims[#victims + 1] = old[i] end
end

for i = 1, #victims do
  local id = victims[i]
  local jk = job_key(id)
--@if erase
  if erase then
    local ik = ''
    if key_type(jk) == 'hash' then ik = redis.call('HGET', jk, 'ik') or '' end
    erase_slot(id, jk, ik)
  end
--@end
  if erase then redis.call('ZREM', K_JIDS, id) end
  delete_job(id)
  redis.call('ZREM', set_key, id)
end

local more = 0
if #victims >= limit then more = 1 end
return { #victims, more }
