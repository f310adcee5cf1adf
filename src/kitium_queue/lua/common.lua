--[[
  common.lua — the whole fragment library in one include, for scripts and features that
  want all of it (`--@include common`). The engine's own scripts include only the
  fragments they use:

    lib_base.lua       KEYS layout, ARGV prefix, the clock, argument checks, job_key
    lib_events.lua     emit (event stream), wake (marker), stream_reason
    lib_sets.lua       bounded batch updates of sorted sets (zrem_all, zadd_all, ...)
    lib_jobs.lua       wait_score, push_wait, push_delayed, delete_job
    lib_add.lua        add_job (the `enqueue` slot runs in it)
    lib_retention.lua  dead_letter, trim_finished
    lib_promote.lua    promote (delayed -> wait)
    lib_recover.lua    recover (expired leases; the `release` slot runs in it)
    lib_requeue.lua    requeue (finished -> wait: retry, replay)
    lib_parking.lua    parked jobs: park, unpark, forget_parked, drop_parked
    lib_park_timers.lua time-based blockers: park_timer, fire_timers, next_timer
    lib_slots.lua      what filled slots run with (slot_failed)

  Includes are expanded once per script (the first occurrence wins), so a script may
  include common and any fragment besides.
]]
--@include lib_base
--@include lib_events
--@include lib_sets
--@include lib_jobs
--@include lib_add
--@include lib_retention
--@include lib_promote
--@include lib_recover
--@include lib_requeue
--@include lib_parking
--@include lib_park_timers
