--[[
  group_heal.lua — give back the turns of FIFO message groups held by jobs that already
  finished (kitium_queue.features.groups), one page of groups per call.

  A job of a group holds a turn from when it goes to wait as its group's next job until
  the release fragment sees it complete, fail for good or be removed. A process without
  the feature (FIFOQueueManager not created there) runs and finishes such a job without
  passing the release fragment, so its turn stays held; when every turn of a group is
  held that way, nothing of the group can be claimed and its line waits for good. The
  enqueue and admission fragments heal a group they meet; this walk heals the groups no
  new job comes to.

  KEYS: the shared layout (lib_base.lua).
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4]  the last group of the previous page ('' = from the first)
  ARGV[5]  groups per page, clamped to 1..1000
  ARGV[6]  turn holders checked per group, clamped to 1..1000
  ARGV[7]  turn holders checked per call, clamped to 1..100000 (absent: 100000): the
           page ends after the group that reached it, so one call stays short whatever
           the groups hold (the first group of a page is always walked)
  Returns { next cursor ('' = the walk is over), turns given back, jobs moved to wait,
  groups given turns }. A group with a key damaged by hand is skipped (group_stats says
  which key); KQ_BAD_STATE (nothing written) when a key all groups share is damaged.
]]
--@include lib_base
--@include lib_events
--@include lib_parking
@PRELUDE@

local after = ARGV[4] or ''
local page = arg_int(ARGV[5], 200, 1, 1000)
local per_group = arg_int(ARGV[6], 100, 1, 1000)
local per_call = arg_int(ARGV[7], 100000, 1, 100000)
-- The keys every group shares, checked before the first write (a key damaged by hand
-- fails the call whole, never half way).
local bad = damaged('*', OWNER, 'hash') or damaged('*', INDEX, 'zset')
if bad then return redis.error_reply(bad) end
local lo = '-'
if after ~= '' then lo = '(' .. after end
local names = redis.call('ZRANGEBYLEX', INDEX, lo, '+', 'LIMIT', 0, page)
local freed, moved, groups, checked = 0, 0, 0, 0
local last = 0
for i = 1, #names do
  if checked >= per_call then break end
  last = i
  local g = names[i]
  local run = RUN .. g
  -- A group's own keys are read with pcall: one damaged by hand skips that group only.
  local held = redis.pcall('SCARD', run)
  local s = redis.pcall('HMGET', GP .. g, 'paused', 'conc')
  if type(held) == 'number' and not s.err then
    if held > 0 then
      local ids
      if held <= per_group then
        ids = redis.call('SMEMBERS', run)
      else
        ids = redis.call('SRANDMEMBER', run, per_group)
      end
      checked = checked + #ids
      for j = 1, #ids do
        if turn_stale(g, ids[j]) then
          redis.call('SREM', run, ids[j])
          redis.call('HDEL', OWNER, ids[j])
          freed = freed + 1
          held = held - 1
        end
      end
    end
    -- A full group has no turn to hand out: its line is not looked at.
    local free = conc_of(s[2]) - held
    if s[1] ~= '1' and free > 0 and redis.call('EXISTS', LINE .. g) == 1 then
      local n = hand_turns(g, free)
      if n > 0 then moved, groups = moved + n, groups + 1 end
    end
  end
end
local nxt = ''
if last < #names or #names == page then nxt = names[last] end
return { nxt, freed, moved, groups }
