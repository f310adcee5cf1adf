--[[
  lib_events.lua — fragment: the event stream and the wake-up marker.

  emit(event, id, field1, value1, ...)  append to the event stream (KEYS[8]), trimmed to
                                        about EVENTS_MAXLEN entries
  feature_event(event, subject, field1, value1, ...)
                                        an event a feature raises: to the event stream
                                        (its id field is `subject`) and, in the same
                                        step, to the features that forward events (the
                                        `event` slot, kitium_queue.slots)
  wake()                                wake idle workers (ZADD marker "0")
  stream_reason(reason)                 a reason cut to STREAM_REASON_BYTES for the stream
]]
--@include lib_base

local function emit(event, id, ...)
  redis.call('XADD', K_EVENTS, 'MAXLEN', '~', EVENTS_MAXLEN_S, '*', 'e', event, 'id', id, ...)
end

-- The composed `event` slot (slots.py assigns it when a feature filled the slot and the
-- script includes the composed slots): nil otherwise.
local event_hook = nil

local function feature_event(event, subject, ...)
  emit(event, subject, ...)
  if event_hook then event_hook(event, subject, { ... }) end
end

local function wake()
  redis.call('ZADD', K_MARKER, 0, '0')
end

-- Reasons copied into the event stream are cut to this many bytes: the job record keeps
-- the whole text, and the stream (10,000 entries by default) stays small in bytes too.
local STREAM_REASON_BYTES = 512
local function stream_reason(reason)
  if #reason <= STREAM_REASON_BYTES then return reason end
  return string.sub(reason, 1, STREAM_REASON_BYTES) .. '...'
end
