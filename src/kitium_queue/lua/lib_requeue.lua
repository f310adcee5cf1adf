--[[
  lib_requeue.lua — fragment: requeue(id, set_key), used by retry.lua and replay.lua.

  Put a finished job back to wait as a fresh job: attempts and stalls reset, last error
  kept in 'le' for the record. FINISHED_SETS maps a finished state to its set.
  Slot: every requeued job passes the `requeue` slot (kitium_queue.slots) once it is back
  in wait, with the state it left.
]]
--@include lib_base
--@include lib_events
--@include lib_jobs
--@include slot_requeue

local FINISHED_SETS = { failed = K_FAILED, dlq = K_DLQ, completed = K_COMPLETED }

local function requeue(id, set_key)
  local jk = job_key(id)
--@if requeue
  local from = redis.call('HGET', jk, 'st')
--@end
  redis.call('ZREM', set_key, id)
  local err = redis.call('HGET', jk, 'e')
  if err then redis.call('HSET', jk, 'le', err) end
  redis.call('HSET', jk, 'a', 0, 's', 0)
  redis.call('HDEL', jk, 'e', 'tb', 'f', 'r', 'lt', 'due', 'cx', 'pg')
  push_wait(jk, id)
  emit('job-waiting', id, 'from', 'retry')
--@if requeue
  requeue_slot(id, jk, from or '')
--@end
end
