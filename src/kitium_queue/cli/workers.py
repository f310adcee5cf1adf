"""``kitium-queue workers APP``: the live workers of a queue, as the dashboard's Workers
page shows them.

The data is what ``presence.live_workers`` returns (each worker's last heartbeat),
read after the queue's read guards (``get_stats``). A partitioned APP is read queue by
queue (the queue's name in every row). ``loop blocked`` is the worker's event-loop
watchdog at its last heartbeat (``loopwatch.py``): ``3 (longest 1.2 s)``, or ``-``.
``--json`` prints one list of objects: ``WorkerPresence.to_dict()`` with ``queue`` and
``features_known``. Ids, hosts and job names come from records any client may write, so
in text output every field is escaped (``text_field``); plain rows name the queue first,
rich prints a table per queue. A queue without live workers prints one line saying so
(exit 0).
"""

from __future__ import annotations

import time
from typing import Any

import click

from ..damage import named_key
from ..presence import WorkerPresence, live_workers
from ..queries import check_reads
from .base import json_option, members, redis_option, with_queue
from .output import output, span

__all__ = ["workers"]

#: Job names shown per worker in text output (``--json`` lists them all).
SHOWN_NAMES = 10

_COLUMNS = [
    "queue", "id", "host", "pid", "concurrency", "running", "processed", "processors",
    "started", "heartbeat", "state", "features", "loop blocked",
]  # fmt: skip


def _ago(now_ms: int, at_ms: int) -> str:
    """How long ago ``at_ms`` was ("-" for a record that does not say)."""
    return "-" if at_ms <= 0 else f"{span(now_ms - at_ms)} ago"


def _names(names: tuple[str, ...]) -> str:
    if not names:
        return "-"
    shown = ",".join(names[:SHOWN_NAMES])
    more = len(names) - SHOWN_NAMES
    return f"{shown},+{more} more" if more > 0 else shown


def _features(w: WorkerPresence) -> str:
    """Its release-step features; ``?`` for a release that does not announce them."""
    if not w.features_known:
        return "?"
    return ",".join(w.features) or "-"


def _row(queue: str, w: WorkerPresence, now_ms: int) -> list[object]:
    return [
        queue,
        w.id,
        w.host,
        w.pid,
        w.concurrency,
        w.running,
        w.processed,
        _names(w.processors),
        _ago(now_ms, w.started_at),
        _ago(now_ms, w.seen_at),
        "stopping" if w.stopping else "running",
        _features(w),
        w.loop_blocked_text(),
    ]


@click.command()
@click.argument("app")
@json_option
@redis_option
def workers(app: str, as_json: bool, redis: str | None) -> None:
    """List APP's live workers (each partition's for a partitioned queue): id, host,
    pid, concurrency, jobs running, jobs processed, the job names it has processors
    for, when it started and last sent its heartbeat, whether it is stopping, its
    features, and how often code it ran blocked its event loop (with the longest block).
    --json: a list of objects."""
    out = output(as_json)

    async def act(q: Any) -> tuple[str, list[tuple[str, WorkerPresence]]]:
        parts = members(q)
        await check_reads(parts, "get_stats", {})
        found = []
        for m in parts:
            listed = await named_key(await m.client(), m.keys.workers, "zset", live_workers(m))
            found += [(m.name, w) for w in sorted(listed, key=lambda w: w.id)]
        return str(q.name), found

    name, found = with_queue(app, redis, act)
    if as_json:
        out.json(
            [{"queue": n, **w.to_dict(), "features_known": w.features_known} for n, w in found]
        )
        return
    now_ms = int(time.time() * 1000)
    rows = [_row(n, w, now_ms) for n, w in found]
    if not rows:
        out.line(f"no live workers in queue '{name}'")
    elif not out.rich:
        out.table(_COLUMNS, rows, header=True)
    else:  # a table per queue, titled with its name
        for queue in dict.fromkeys(r[0] for r in rows):
            mine = [r[1:] for r in rows if r[0] == queue]
            out.table(_COLUMNS[1:], mine, title=f"live workers of queue {queue}")
