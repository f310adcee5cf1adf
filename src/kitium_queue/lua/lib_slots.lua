--[[
  lib_slots.lua — fragment: what the composed slots (ScriptRegistry.add_slot) run with.
  Included only by a slot that a feature filled; an unfilled slot compiles to nothing.

  slot_failed(slot, name, err)
      A slot fragment raised an error. The host transition goes on (every fragment runs
      under pcall), and the error is recorded for operators in <prefix>slot-errors
      (HASH: '<slot>:<fragment name>' -> '<ms> <message>'; kitium_queue.parking
      .slot_errors; a damaged parking key has its own field 'damaged:<key>', see
      lib_parking.lua). A slot-errors key of another type records nothing and fails
      nothing. Writes the fragment made before it failed stay: fragments must do
      their checks first (see kitium_queue.slots).
  The composed `event` slot is included here, so every script that runs a feature's
  fragments passes the events they raise (feature_event) to it.

  requeued(id, jk, from)
      A feature put job `id` back in wait (or parked it) from its own fragment or
      script, as a finished job comes back: a workflow's step revived by a replay
      (`from`: 'cancelled'). Runs the composed `requeue` slot for it, as retry_job and
      replay_dlq do (lib_requeue.lua), so the features that follow jobs coming back
      (regions' replication, idempotency windows) see it. Nothing when that slot is
      unfilled. The composed `requeue` slot is included here for that.
  Slot fragments may also use lib_parking.lua (park, unpark, remove_unstarted),
  lib_park_timers.lua (park_timer), lib_events.lua (emit, feature_event, wake),
  lib_base.lua (PREFIX, NOW, job_key, ...) and outbox.lua (outbox_add: follow-up work
  written in the same atomic step).
]]
--@include lib_base
--@include lib_events
--@include lib_jobs
--@include lib_parking
--@include lib_park_timers
--@include outbox

local K_SLOT_ERRORS = PREFIX .. 'slot-errors'
-- What one feature's fragments share within a script call, under the feature's own
-- name: e.g. an `accept` fragment's reading of a job's options, reused by the same
-- feature's `enqueue` fragment for that job (checking the id) instead of decoding them
-- again. Gone when the call ends; a fragment must work without it (schedule_fire
-- runs `enqueue` without `accept`). One entry is shared by every feature: `copy`
-- ({ id = <job id>, state = <its state where it was accepted> }), set by a feature that
-- applies copies of jobs another copy of the queue accepted (a secondary region), for the
-- fragments that record such a job as it is there rather than as a new one.
local SLOT_SCRATCH = {}
local SLOT_ERROR_BYTES = 500

local function slot_failed(slot, name, err)
  if type(err) == 'table' then err = err.err or err.ok end
  local text = tostring(err)
  if #text > SLOT_ERROR_BYTES then text = string.sub(text, 1, SLOT_ERROR_BYTES) .. '...' end
  -- pcall: slot-errors holding another type must not
  -- fail the transition after its writes (health_check names that key).
  redis.pcall('HSET', K_SLOT_ERRORS, slot .. ':' .. name, NOW_S .. ' ' .. text)
end

-- The features that forward raised events (feature_event in lib_events.lua).
--@include slot_event

-- Set by the composed `requeue` slot (slots.py): the features that follow a job put
-- back in wait.
local requeue_hook = nil
local function requeued(id, jk, from)
  if requeue_hook then requeue_hook(id, jk, from) end
end
--@include slot_requeue
