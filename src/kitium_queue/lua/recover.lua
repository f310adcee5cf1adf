--[[
  recover.lua — requeue jobs whose lease expired (active → waiting), or dead-letter those
  that stalled more than max_stalled_count times. claim.lua runs the same step; this
  script lets a worker whose slots are all busy keep recovery going.

  KEYS: the shared layout (lib_base.lua).
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4]  max_stalled_count, clamped to 0..MAX_MS (missing or not a number: 2)
  ARGV[5]  dlq enabled ('1' | '0')
  ARGV[6]  max jobs examined by this call, clamped to 0..1000 (BATCH_MAX; missing or not
           a number: 1000); recover_stalled(limit) calls again for more

  Returns { {recovered ids}, {dead-lettered ids} }: every examined job is in one of them.
  Events: job-stalled per recovered job; job-failed (+ job-dlq) per dead-lettered job.
  Damaged keys: KQ_DAMAGED_KEY when a key it writes holds another type (check_keys,
  lib_base.lua), before anything is written.
]]
--@include lib_recover

local dlq_key = 6
if ARGV[5] ~= '1' then dlq_key = 5 end
local damaged = keep_running_when_full() or check_keys(1, 2, dlq_key, 8, 9)
if damaged then return damaged end
local back, dead = recover(ARGV[6], ARGV[4], ARGV[5] == '1')
return { back, dead }
