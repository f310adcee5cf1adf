"""``update_schedule``: change some fields of a stored schedule, atomically.

The new definition is computed in Python from the stored one (the same validation as a
declaration: cron patterns, time zones, job options, enqueue middleware), then written
by ``schedule_update``: ``lua/schedule_put.lua`` run only while the schedule's version
(its ``v`` field, bumped by every write of ``schedule_put`` and ``schedule_pause``) is
still the one read. Another write in between (a concurrent update of another field, a
pause) makes the call start over from the new record, so two updates of different
fields both take effect: neither writes back a definition read before the other's.
Enqueue middleware therefore sees the template once per attempt.

``update_schedule`` cannot change a schedule's id (``id_fixed``): remove the schedule
and declare it again under the new id.
"""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError, KitiumQueueError, ScheduleNotFoundError
from ..limits import printable
from ..queueconfig import id_fixed
from .schedule_records import check_intact, schedule_hash

if TYPE_CHECKING:
    from .schedules import Schedule, ScheduleStore

__all__ = ["UPDATE_SCRIPT", "ScheduleMoved", "id_fixed", "install", "update"]

#: The script that writes an update (a fragment of the queue's script registry).
UPDATE_SCRIPT = "schedule_update"
#: What it answers when the schedule was written (or removed) since it was read.
MOVED = b"moved"
#: Attempts before ``update`` gives up (each one re-reads the schedule).
MAX_ATTEMPTS = 50

# ARGV[4..14]: schedule_put's; ARGV[15]: the version the caller read ('' = none).
_SOURCE = """--@include lib_events
--@include schedule_keys
--[[
  schedule_update — schedule_put (included below, same KEYS and ARGV[1..14]) only while
  the schedule exists and its version is still ARGV[15] (the one the new definition was
  computed from; '' when the record had none). Otherwise { 'moved', '' }: nothing is
  written and the caller reads the schedule again.
]]
do
  local sk = schedule_key(ARGV[4])
  local damaged = schedule_damaged(sk)
  if damaged then return damaged end
  if redis.call('EXISTS', sk) == 0 or (redis.call('HGET', sk, 'v') or '') ~= ARGV[15] then
    return { 'moved', '' }
  end
end
--@include schedule_put
"""


class ScheduleMoved(Exception):
    """Internal: the schedule was written since it was read (``update`` tries again)."""


def install(scripts: Any) -> None:
    """Register ``schedule_update`` with a queue's ``ScriptRegistry``."""
    scripts.add_fragment(UPDATE_SCRIPT, _SOURCE)


async def _read(store: ScheduleStore, schedule_id: str) -> tuple[Schedule | None, bytes]:
    """The schedule and the version it was read at (``b""``: none stored)."""
    pipe = (await store.queue.client()).pipeline(transaction=False)
    (reply,) = await pipe.hgetall(store.queue.keys.schedule(schedule_id)).execute(
        raise_on_error=False
    )
    problems: list[str] = []
    raw = schedule_hash(reply, problems)
    if not raw and not problems:
        return None, b""
    return store._record(schedule_id, raw, problems), raw.get(b"v", b"")


async def update(store: ScheduleStore, schedule_id: str, changes: dict[str, Any]) -> Schedule:
    """``ScheduleStore.update``'s action: read, merge ``changes``, write if nothing was
    written meanwhile, else start over (up to ``MAX_ATTEMPTS`` times)."""
    for attempt in range(MAX_ATTEMPTS):
        cur, version = await _read(store, schedule_id)
        if cur is None:
            raise ScheduleNotFoundError(
                f"schedule {schedule_id!r} does not exist in queue {store.queue.name!r}"
            )
        try:
            return await _merged(store, cur, version, dict(changes))
        except ScheduleMoved:
            # Concurrent writers retry at spread-out times, not in lockstep.
            await asyncio.sleep(random.uniform(0, 0.001 * min(attempt + 1, 20)))
    raise KitiumQueueError(
        f"update_schedule: schedule {printable(schedule_id)!r} was changed by another "
        f"client {MAX_ATTEMPTS} times while this update was computed; try again"
    )


async def _merged(
    store: ScheduleStore, cur: Schedule, version: bytes, changes: dict[str, Any]
) -> Schedule:
    from .schedules import SCHEDULE_OPTIONS

    check_intact(cur)
    args: dict[str, Any] = {
        "tz": cur.tz,
        "start_date": cur.start_date,
        "end_date": cur.end_date,
        "limit": cur.limit,
        "jitter": cur.jitter_ms,
        "misfire": (cur.misfire if cur.misfire != "catch_up" else ("catch_up", cur.catch_up_limit)),
        "misfire_grace": cur.misfire_grace_ms,
        "overlap": cur.overlap,
    }
    if "cron_pattern" in changes and "interval_ms" in changes:
        raise ConfigurationError("update_schedule: give cron_pattern or interval_ms, not both")
    # The names of update_schedule, suggested for a misspelt one ('cron', 'every').
    changes_ok = (*SCHEDULE_OPTIONS[1:], "data", "cron_pattern", "interval_ms")
    store.queue.jobspec.check_names(changes, "update_schedule", also=changes_ok)
    cron, every = cur.cron, cur.every_ms
    data = changes.pop("data", cur.data)
    if "cron_pattern" in changes:
        cron, every = changes.pop("cron_pattern"), None
    if "interval_ms" in changes:
        cron, every = None, changes.pop("interval_ms")
    for k in list(changes):
        if k in args:
            args[k] = changes.pop(k)
    # A job_id_window stored before schedules refused it never applied to a tick.
    kept = {k: v for k, v in cur.options.items() if k != "job_id_window"}
    opts = {**kept, **changes}
    opts = {k: v for k, v in opts.items() if v is not None}
    return await store._declare(
        cur.job_name,
        data,
        cron=cron,
        every=every,
        schedule_id=cur.id,
        options=opts,
        expect=version,
        **args,
    )
