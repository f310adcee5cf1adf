--[[
  recover.lua — requeue jobs whose lease expired (active → waiting), or dead-letter those
  that stalled more than max_stalled_count times. claim.lua runs the same step; this
  script lets a worker whose slots are all busy keep recovery going.

  KEYS: the shared layout (common.lua).
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4]  max_stalled_count
  ARGV[5]  dlq enabled ('1' | '0')
  ARGV[6]  max jobs examined (bounded work)

  Returns { {recovered ids}, {dead-lettered ids} }.
  Events: job-stalled per recovered job; job-failed (+ job-dlq) per dead-lettered job.
]]
--@include common

local back, dead = recover(tonumber(ARGV[6]), tonumber(ARGV[4]), ARGV[5] == '1')
return { back, dead }
