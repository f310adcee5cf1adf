--[[
  clear.lua — delete every job and every key of the queue, in bounded batches.

  KEYS: the shared layout (common.lua).
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4]  force ('1' | '0'): without force, a queue with active jobs is refused
           (KQ_QUEUE_ACTIVE) so running work is not pulled from under its workers.
  ARGV[5]  max jobs deleted per call

  Returns 1 when more remains (call again), 0 when the queue is gone.
]]
--@include common
--@include errors

if ARGV[4] ~= '1' then
  local n = redis.call('ZCARD', K_ACTIVE)
  if n > 0 then
    return fail(ERR_QUEUE_ACTIVE, n .. ' jobs are active; wait for them, or pass force=True')
  end
end
local budget = tonumber(ARGV[5])
local sets = { K_WAIT, K_ACTIVE, K_DELAYED, K_COMPLETED, K_FAILED, K_DLQ }
for s = 1, #sets do
  if budget <= 0 then return 1 end
  local ids = redis.call('ZRANGE', sets[s], 0, budget - 1)
  for i = 1, #ids do delete_job(ids[i]) end
  if #ids > 0 then redis.call('ZREM', sets[s], unpack(ids)) end
  budget = budget - #ids
end
for s = 1, #sets do
  if redis.call('ZCARD', sets[s]) > 0 then return 1 end
end
redis.call('DEL', K_META, K_EVENTS, K_MARKER, K_ID, K_LIMITER, K_LEASE)
return 0
