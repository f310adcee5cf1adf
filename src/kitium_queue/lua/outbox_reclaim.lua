--[[
  outbox_reclaim.lua — one XAUTOCLAIM step of a consumer: take over entries that have been
  pending on any consumer of the group for at least min idle ms (their consumer died, hung
  or was cut off), and dead-letter those already delivered max deliveries times.

  KEYS[1] outbox STREAM, KEYS[2] dead STREAM.
  ARGV[1] queue key prefix, ARGV[2] group, ARGV[3] consumer taking over,
  ARGV[4] min idle ms, ARGV[5] cursor ('0-0' to start a pass), ARGV[6] count,
  ARGV[7] max deliveries.

  Returns { next cursor ('0-0': the pass is complete),
            { {id, {field, value, ...}, deliveries including this one}, ... },
            number of entries moved to the dead stream }.
  KQ_DAMAGED_KEY when the dead stream holds another type: nothing was written.
]]
--@include outbox_bury

-- Arguments are checked before the first write (XAUTOCLAIM moves entries).
local group, maxd = ARGV[2], math.max(tonumber(ARGV[7]) or 10, 1)
local damaged = dead_damaged()
if damaged then return damaged end
local r = redis.call('XAUTOCLAIM', KEYS[1], group, ARGV[3], ARGV[4], ARGV[5], 'COUNT', ARGV[6])
local out, buried = {}, 0
for _, e in ipairs(r[2]) do
  if e and e[1] then  -- Redis 6.2 reports deleted entries as nil here
    local n = deliveries(group, e[1])  -- XAUTOCLAIM counted this delivery already
    if n > maxd then
      local reason = 'not acknowledged after ' .. (n - 1) .. ' deliveries (max_deliveries '
        .. ARGV[7] .. ')'
      if bury(group, e[1], n - 1, reason) then buried = buried + 1 end
    else
      out[#out + 1] = { e[1], e[2], n }
    end
  end
end
return { r[1], out, buried }
