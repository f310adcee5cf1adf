"""What the dashboard reads, through the queue's public read API and the features'
managers: counts and throughput, pages of jobs, bounded searches, feature pages.

Every read is bounded: a page holds at most ``MAX_PAGE`` jobs; a search reads the
state's jobs ``SCAN_BATCH`` at a time (one short round trip each) and stops after
``SCAN_MAX`` per request, offering to go on from there, so a search never keeps Redis
busy for long however large the state is. Throughput comes from the durable event
stream: the ``job-completed`` and ``job-failed`` events of the last ``RATE_WINDOW_MS``,
read ``RATE_BATCH`` at a time and ``RATE_READ_MAX`` at most per queue and refresh.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..enums import JobStatus
from ..errors import PermissionDeniedError
from ..job import JobInfo
from ..limits import clip, reply_text
from ..presence import WorkerPresence, live_workers
from ..queries import QueueStats

__all__ = [
    "MAX_PAGE",
    "SCAN_MAX",
    "Filter",
    "QueueRow",
    "Rate",
    "Search",
    "enabled",
    "may_view",
    "outage_text",
    "overview_row",
    "overview_rows",
    "queue_row",
    "render_value",
    "schedule_page",
    "search",
]

#: Most jobs on one page.
MAX_PAGE = 200
#: Jobs read per round trip while searching.
SCAN_BATCH = 200
#: Jobs one search request reads at most (it offers to go on after them).
SCAN_MAX = 5000
#: The window throughput is measured over (ms).
RATE_WINDOW_MS = 10_000
#: Events read per round trip while measuring throughput.
RATE_BATCH = 1000
#: Most events read per queue and refresh to measure throughput (beyond them the rate is
#: taken over the time the events read cover).
RATE_READ_MAX = 5_000
#: The events that count a finished job, once each: a job that failed for good emits
#: ``job-failed`` (and ``job-dlq`` too when it is dead-lettered: not counted again).
_FINISHED = {b"job-completed": 0, b"job-failed": 1}
#: Most characters of a value shown (data, result, progress).
MAX_SHOWN = 64 * 1024
#: Longest search text accepted.
MAX_SEARCH = 200
#: Schedules on one page of the schedules page.
SCHEDULE_PAGE = 100
#: Seconds one queue's row of the overview (and ``/api/stats``) may take: a Redis that
#: holds its answers (frozen, paused, a network dropping packets) shows as an error row.
ROW_TIMEOUT_S = 5.0

#: The feature pages, and the option whose declaration shows the feature is enabled on
#: a queue (the option registry says who enabled what; a page is shown only then).
#: A page may instead give a predicate of the queue (``views.py`` pages: a feature
#: enabled without a job option of its own). Pages are listed in this order.
FEATURE_PAGES: dict[str, tuple[str, str] | Callable[[Any], bool]] = {
    "groups": ("message_group_id", "fifo-groups"),
    "workflows": ("workflow_id", "workflows"),
    "breakers": ("circuit_breaker_id", "circuit-breakers"),
    "webhooks": ("webhook_url", "webhooks"),
}


def enabled(queue: Any, page: str) -> bool:
    """Whether the feature behind ``page`` is enabled on ``queue`` in this process."""
    rule = FEATURE_PAGES[page]
    if callable(rule):
        return bool(rule(queue))
    option, feature = rule
    spec = queue.jobspec.get(option)
    return spec is not None and spec.feature == feature


def feature_pages(queue: Any) -> list[str]:
    """The feature pages ``queue`` has in this process, in ``FEATURE_PAGES`` order."""
    return [p for p in FEATURE_PAGES if enabled(queue, p)]


@dataclass(slots=True)
class Rate:
    """Jobs finished per second over the last ``RATE_WINDOW_MS`` (from the events)."""

    completed: float
    failed: float


@dataclass(slots=True)
class QueueRow:
    """One queue on the overview."""

    name: str
    stats: QueueStats | None
    rate: Rate | None
    workers: list[WorkerPresence] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``/api/stats``."""
        return {
            "name": self.name,
            "stats": None if self.stats is None else self.stats.to_dict(),
            "rate": None
            if self.rate is None
            else {"completed": self.rate.completed, "failed": self.rate.failed},
            "workers": len(self.workers),
            "error": self.error,
        }


def _stream_ms(entry_id: Any) -> int | None:
    ms = reply_text(entry_id).split("-")[0]
    return int(ms) if ms.isdigit() else None


def _before(entry_id: Any) -> str:
    """The stream id just before ``entry_id`` (an inclusive end for the next read)."""
    ms, _, seq = reply_text(entry_id).partition("-")
    if seq.isdigit() and int(seq) > 0:
        return f"{ms}-{int(seq) - 1}"
    return f"{max(0, int(ms) - 1)}-18446744073709551615" if ms.isdigit() else "0-0"


async def throughput(queue: Any) -> Rate | None:
    """Jobs completed and failed for good per second over the last ``RATE_WINDOW_MS``
    (None when the queue keeps no events): its ``job-completed`` and ``job-failed``
    events in that window, each finished job counted once. The window's events are
    read newest first, ``RATE_BATCH`` per round trip; after ``RATE_READ_MAX`` of them,
    or where the stream was trimmed (``events_max_len``) inside the window, the rate is
    taken over the time the events read cover."""
    if queue.events_max_len == 0:
        return None
    client = await queue.client()
    now_s, now_us = await client.time()
    now = int(now_s) * 1000 + int(now_us) // 1000
    key, start = queue.keys.events, str(now - RATE_WINDOW_MS)
    counts, read, end, oldest = [0, 0], 0, "+", None
    while read < RATE_READ_MAX:
        rows = await client.xrevrange(key, end, start, count=RATE_BATCH)
        for _, fields in rows:
            kind = _FINISHED.get(fields.get(b"e"))
            if kind is not None:
                counts[kind] += 1
        read += len(rows)
        if rows:
            oldest, end = rows[-1][0], _before(rows[-1][0])
        if len(rows) < RATE_BATCH:
            break
    span = RATE_WINDOW_MS
    cut = read >= RATE_READ_MAX  # more events in the window than read
    if not cut and oldest is not None and read >= queue.events_max_len:
        cut = read >= int(await client.xlen(key))  # all it holds: older ones trimmed
    if cut and oldest is not None and (ms := _stream_ms(oldest)) is not None:
        span = max(1, min(RATE_WINDOW_MS, now - ms))
    return Rate(round(counts[0] * 1000 / span, 2), round(counts[1] * 1000 / span, 2))


async def queue_row(queue: Any) -> QueueRow:
    """Counts, throughput and live workers of one queue; an unreachable queue is shown
    with its error instead of failing the page. A read a guard refuses raises
    (``PermissionDeniedError``): the page says so."""
    try:
        stats = await queue.get_stats()
        rate = await throughput(queue)
        workers = await live_workers(queue)
    except PermissionDeniedError:
        raise
    except Exception as exc:
        return QueueRow(queue.name, None, None, error=clip(queue.connection.redact(exc), 300))
    return QueueRow(queue.name, stats, rate, workers)


async def may_view(queue: Any, principal: str) -> bool:
    """Whether ``principal`` may read ``queue``'s counts: always, unless access control
    protects the queue in this process and no grant of the principal allows it. A
    question (``check_access``), not an attempt: nothing is audited, so a page that
    polls does not fill the audit log with refusals."""
    from ..features.access import AccessControlManager
    from ..features.access.model import read_permission

    prot = AccessControlManager.protection_of(queue)
    if prot is None:
        return True
    return await prot.manager.check_access(principal, queue.name, read_permission("get_stats"))


async def overview_row(queue: Any, principal: str) -> QueueRow:
    """``queue_row`` for the overview: a queue ``principal`` may not read is listed
    with the reason, and asked about first (``may_view``) so it is not refused on
    every refresh."""
    denied = f"{principal} may not view queue {queue.name}: none of its grants gives can_view_job"
    try:
        if not await may_view(queue, principal):
            return QueueRow(queue.name, None, None, error=denied)
        return await queue_row(queue)
    except PermissionDeniedError as exc:
        return QueueRow(queue.name, None, None, error=clip(str(exc), 300))


async def overview_rows(
    queues: Any, principal: str, read: Callable[[Any, str], Any] = overview_row
) -> list[QueueRow]:
    """``read`` (``overview_row``) of every queue, at the same time, each within
    ``ROW_TIMEOUT_S``: a page with many queues on a Redis that stopped answering is
    answered in about that time, not in that time (or the reply deadline) per queue."""

    async def bounded(queue: Any) -> QueueRow:
        try:
            row: QueueRow = await asyncio.wait_for(read(queue, principal), ROW_TIMEOUT_S)
            return row
        except (TimeoutError, asyncio.TimeoutError):  # one class from Python 3.11 on
            error = f"no answer from Redis within {ROW_TIMEOUT_S:g} s"
            return QueueRow(queue.name, None, None, error=error)

    return list(await asyncio.gather(*(bounded(q) for q in queues)))


def outage_text(exc: BaseException, queues: Any) -> str | None:
    """What a page says when a read failed because Redis could not be reached or did
    not answer (``connection.outage``: it is answered with 503 and this text, not a
    bare 500), with every queue's credentials redacted; None for any other error."""
    from ..connection import outage

    if not outage(exc):
        return None
    text = str(exc) or type(exc).__name__
    for queue in queues:
        text = queue.connection.redact(text)
    return f"Redis is unavailable: {clip(text, 500)}"


def render_value(value: Any, *, limit: int = MAX_SHOWN) -> str:
    """A job's data, result or progress as indented JSON text, cut at ``limit``
    characters (the template escapes it)."""
    try:
        text = orjson.dumps(
            value, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS, default=repr
        ).decode()
    except (TypeError, orjson.JSONEncodeError):
        text = repr(value)
    return clip(text, limit)


@dataclass(frozen=True, slots=True)
class Filter:
    """What a search matches: every given part must match.

    ``name``: a substring of the job name (case-insensitive); ``error``: a substring of
    the failure reason; ``field`` / ``value``: the data field at a dotted path (e.g.
    ``user.id``; list items by index) whose JSON scalar equals ``value`` as text.
    """

    name: str = ""
    error: str = ""
    field: str = ""
    value: str = ""

    @classmethod
    def of(cls, params: Any) -> Filter:
        """From query or form parameters (each cut to ``MAX_SEARCH`` characters)."""

        def get(k: str) -> str:
            v = params.get(k) or ""
            return str(v).strip()[:MAX_SEARCH]

        return cls(get("name"), get("error"), get("field"), get("value"))

    @property
    def empty(self) -> bool:
        return not (self.name or self.error or self.field)

    def matches(self, job: JobInfo) -> bool:
        """Whether ``job`` matches every part of the filter."""
        if self.name and self.name.lower() not in job.name.lower():
            return False
        if self.error and self.error.lower() not in (job.failed_reason or "").lower():
            return False
        if self.field:
            found, v = _at_path(job.data, self.field)
            if not found or isinstance(v, (dict, list)):
                return False
            shown = v if isinstance(v, str) else orjson.dumps(v).decode()
            if shown != self.value:
                return False
        return True

    def as_args(self) -> dict[str, str]:
        """The non-empty parts (for links and audit records)."""
        return {
            k: v
            for k, v in (
                ("name", self.name),
                ("error", self.error),
                ("field", self.field),
                ("value", self.value),
            )
            if v
        }


def _at_path(data: Any, path: str) -> tuple[bool, Any]:
    cur = data
    for part in path.split(".")[:20]:
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return False, None
    return True, cur


@dataclass(slots=True)
class Search:
    """One search request's answer: the matches, and where to go on (``next_offset``,
    None when the state was read to its end)."""

    jobs: list[JobInfo]
    scanned: int
    next_offset: int | None


async def search(
    queue: Any,
    state: JobStatus,
    flt: Filter,
    *,
    offset: int = 0,
    limit: int = 50,
    scan_max: int = SCAN_MAX,
) -> Search:
    """Jobs of ``state`` matching ``flt``, reading from position ``offset`` on, at most
    ``scan_max`` jobs in batches of ``SCAN_BATCH``; stops at ``limit`` matches. The
    jobs' data is read only when the filter looks into it (``field``): the results
    list no payload."""
    found: list[JobInfo] = []
    pos = offset
    read = 0
    started = time.monotonic()
    while read < scan_max and len(found) < limit:
        batch = await queue.get_jobs_by_status(state, SCAN_BATCH, pos, include_data=bool(flt.field))
        for i, job in enumerate(batch):
            if flt.matches(job):
                found.append(job)
                if len(found) >= limit:
                    return Search(found, read + i + 1, pos + i + 1)
        pos += len(batch)
        read += len(batch)
        if len(batch) < SCAN_BATCH:
            return Search(found, read, None)
        if time.monotonic() - started > 2.0:
            break  # a slow server: answer with what was found, offer to go on
    return Search(found, read, pos)


async def schedule_page(queue: Any, offset: int) -> tuple[list[Any], int]:
    """The schedules of ``queue`` from position ``offset`` of its index (oldest first),
    ``SCHEDULE_PAGE`` at most, and how many there are: one ``ZRANGE`` of the page's ids
    and one pipeline of their records, however many schedules the queue has (reading
    them all, as ``get_schedules()`` does, took a round trip per 1,000 and the memory
    of every one for each view). Read as ``get_schedules`` (its read guards first); a
    damaged record is shown with its problems, as there."""
    from ..damage import named_key
    from ..features.schedule_records import schedule_hash, schedule_values, stored_id
    from ..features.schedules import Schedule

    await queue.queries.check("get_schedules", {})
    client = await queue.client()
    key = queue.keys.schedules
    ids = await named_key(
        client, key, "zset", client.zrange(key, offset, offset + SCHEDULE_PAGE - 1)
    )
    total = int(await client.zcard(key))
    if not ids:
        return [], total
    pipe = client.pipeline(transaction=False)
    for i in ids:  # as stored: an id that is not UTF-8 is still read
        pipe.hgetall(queue.keys.schedule("").encode() + i)
    out = []
    for i, reply in zip(ids, await pipe.execute(raise_on_error=False), strict=True):
        problems: list[str] = []
        raw = schedule_hash(reply, problems)
        if raw or problems:
            sid = stored_id(i, problems)
            out.append(Schedule(**schedule_values(sid, raw, queue.serializer, problems)))
    return out, total
