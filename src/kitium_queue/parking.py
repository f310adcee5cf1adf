"""Parked jobs, read from Python: which jobs wait behind which blocker, and how many.

A job that cannot run now (its concurrency key is at its cap, its group's turn has not
come, its dependencies are unfinished, ...) is *parked*: it waits outside ``wait``, in
a sorted set per blocker, with status ``pending``, and goes back to ``wait`` in the same
atomic step that removes its blocker. Features park and unpark jobs from their Lua slot
fragments (``kitium_queue.slots``; the Lua side is ``lua/lib_parking.lua`` and
``lua/lib_park_timers.lua``); claim never looks at parked jobs, so any number of them
delays no eligible job.

Keys (``QueueKeys``): ``parked(blocker)`` (ZSET, score = the job's score in wait),
``parked_index`` (ZSET blocker -> count), ``park_timers`` / ``park_rules`` (time-based
blockers), the ``parked`` field of ``meta`` (the total), ``slot_errors``. A parked job's
hash has ``st`` = ``pending`` and ``pk`` = its blocker.

Every function takes the queue (or anything with its ``keys`` and an async
``client()``) and only reads.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any, Protocol

from redis.exceptions import ResponseError

from .damage import named_key
from .keys import QueueKeys

__all__ = [
    "ParkStats",
    "blocker_of",
    "park_stats",
    "parked_by_blocker",
    "parked_count",
    "parked_ids",
    "parked_in",
    "slot_errors",
]

#: Blockers a cross-blocker listing (``parked_ids``) merges at most.
MAX_BLOCKERS_LISTED = 10_000
# Offsets from which ``parked_ids`` counts the parked jobs before walking to the offset.
_COUNT_PAST = 10_000


class QueueLike(Protocol):
    """What these functions need of a queue: its key names and a Redis client."""

    @property
    def keys(self) -> QueueKeys: ...

    async def client(self) -> Any: ...


@dataclass(frozen=True, slots=True)
class ParkStats:
    """The parked jobs of a queue at a glance.

    Attributes:
        total: jobs parked (status ``pending``).
        blockers: distinct blockers holding jobs.
        top: the blockers holding the most jobs, largest first, with their counts.
        timers: time-based blockers waiting for their due time.
        next_timer_ms: when the earliest of them is due (ms since the epoch, Redis
            clock), or None.
        slot_errors: the last error of each Lua slot fragment that failed
            (``'<slot>:<name>'`` -> ``'<ms> <message>'``); empty when none did.
    """

    total: int
    blockers: int
    top: list[tuple[str, int]] = field(default_factory=list)
    timers: int = 0
    next_timer_ms: int | None = None
    slot_errors: dict[str, str] = field(default_factory=dict)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value


def _count(limit: int, what: str) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValueError(f"{what} must be an int >= 0, got {limit!r}")
    return limit


async def parked_count(queue: QueueLike) -> int:
    """How many jobs are parked in all (one read: the total kept with the sets)."""
    client = await queue.client()
    raw = await client.hget(queue.keys.meta, "parked")
    try:
        return max(0, int(raw or 0))
    except ValueError:
        return 0


async def parked_by_blocker(queue: QueueLike, limit: int = 100) -> dict[str, int]:
    """The blockers holding the most parked jobs, largest first: blocker -> count."""
    n = _count(limit, "limit")
    if n == 0:
        return {}
    client = await queue.client()
    index = queue.keys.parked_index
    rows = await named_key(
        client, index, "zset", client.zrevrange(index, 0, n - 1, withscores=True)
    )
    return {_text(b): int(c) for b, c in rows}


async def parked_in(queue: QueueLike, blocker: str, limit: int = 100, offset: int = 0) -> list[str]:
    """Ids of the jobs parked behind ``blocker``, in the order they return to wait."""
    n, skip = _count(limit, "limit"), _count(offset, "offset")
    if n == 0:
        return []
    client = await queue.client()
    key = queue.keys.parked(blocker)
    ids = await named_key(client, key, "zset", client.zrange(key, skip, skip + n - 1))
    return [_text(i) for i in ids]


async def parked_ids(queue: QueueLike, limit: int = 100, offset: int = 0) -> list[str]:
    """Ids of parked jobs (status ``pending``) across every blocker, in queue order
    (priority, then arrival: the order they would run in if nothing blocked them).

    This is what ``get_jobs_by_status(JobStatus.PENDING)`` lists. The blockers are
    merged lazily, a page of each at a time, so the work grows with ``offset + limit``
    and the number of blockers (at most ``MAX_BLOCKERS_LISTED`` are merged).
    """
    n, skip = _count(limit, "limit"), _count(offset, "offset")
    if n == 0:
        return []
    client = await queue.client()
    keys = queue.keys
    index = keys.parked_index
    blockers = await named_key(
        client, index, "zset", client.zrange(index, 0, MAX_BLOCKERS_LISTED - 1)
    )
    if not blockers:
        return []
    need = skip + n
    page = max(1, min(1000, need // len(blockers) + 1))
    base = keys.parked("").encode()
    set_keys = [base + b if isinstance(b, bytes) else base + b.encode() for b in blockers]
    if skip >= _COUNT_PAST:
        # A far offset (a forged cursor, or a page past the end): count first, so one
        # past the end costs a round trip rather than a walk over every parked job.
        pipe = client.pipeline(transaction=False)
        for k in set_keys:
            pipe.zcard(k)
        counts = await pipe.execute(raise_on_error=False)
        if skip >= sum(c for c in counts if isinstance(c, int)):
            return []

    async def fetch(which: list[int], starts: list[int]) -> list[list[tuple[bytes, float]]]:
        pipe = client.pipeline(transaction=False)
        for i, start in zip(which, starts, strict=True):
            pipe.zrange(set_keys[i], start, start + page - 1, withscores=True)
        # A blocker's set damaged outside kitium-queue (another type) lists nothing: the
        # scripts skip it too and report it in slot-errors (park_stats shows it).
        return [[] if isinstance(r, ResponseError) else r for r in await pipe.execute(False)]

    pages = await fetch(list(range(len(set_keys))), [0] * len(set_keys))
    fetched = [len(p) for p in pages]
    heap: list[tuple[float, bytes, int, int]] = []
    for i, rows in enumerate(pages):
        if rows:
            heap.append((rows[0][1], rows[0][0], i, 0))
    heapq.heapify(heap)
    out: list[str] = []
    seen = 0
    while heap and len(out) < n:
        _, member, i, pos = heapq.heappop(heap)
        if seen >= skip:
            out.append(_text(member))
        seen += 1
        rows = pages[i]
        if pos + 1 < len(rows):
            heapq.heappush(heap, (rows[pos + 1][1], rows[pos + 1][0], i, pos + 1))
        elif len(rows) == page:
            # This blocker's page is used up and it may hold more: fetch its next page.
            (more,) = await fetch([i], [fetched[i]])
            fetched[i] += len(more)
            pages[i] = more
            if more:
                heapq.heappush(heap, (more[0][1], more[0][0], i, 0))
    return out


async def blocker_of(queue: QueueLike, job_id: str) -> str | None:
    """What job ``job_id`` is parked behind, or None when it is not parked."""
    client = await queue.client()
    st, pk = await client.hmget(queue.keys.job(job_id), "st", "pk")
    if st != b"pending" or pk is None:
        return None
    return _text(pk)


async def slot_errors(queue: QueueLike) -> dict[str, str]:
    """The last error of each Lua slot fragment that failed: ``'<slot>:<name>'`` ->
    ``'<ms> <message>'`` (``kitium_queue.slots``: the transition went on)."""
    client = await queue.client()
    key = queue.keys.slot_errors
    raw = await named_key(client, key, "hash", client.hgetall(key))
    return {_text(k): _text(v) for k, v in raw.items()}


async def park_stats(queue: QueueLike, top: int = 10) -> ParkStats:
    """Totals, the largest blockers, timers and slot errors, in one round trip."""
    n = _count(top, "top")
    client = await queue.client()
    keys = queue.keys
    pipe = client.pipeline(transaction=False)
    pipe.hget(keys.meta, "parked")
    pipe.zcard(keys.parked_index)
    pipe.zrevrange(keys.parked_index, 0, n - 1, withscores=True)
    pipe.zcard(keys.park_timers)
    pipe.zrange(keys.park_timers, 0, 0, withscores=True)
    pipe.hgetall(keys.slot_errors)
    got = await pipe.execute(raise_on_error=False)
    # A key damaged outside kitium-queue (another type) reads as empty, and is named
    # among the slot errors (where the scripts report the parking keys they skip).
    damaged: dict[str, str] = {}
    # (reply indices, key, what it reads as when damaged)
    parts: tuple[tuple[tuple[int, ...], str, tuple[Any, ...] | None], ...] = (
        ((0,), keys.meta, None),
        ((1, 2), keys.parked_index, (0, [])),
        ((3, 4), keys.park_timers, (0, [])),
        ((5,), keys.slot_errors, ({},)),
    )
    for at, key, empty in parts:
        bad = next((got[i] for i in at if isinstance(got[i], ResponseError)), None)
        if bad is not None:
            damaged[f"damaged:{key}"] = f"read failed: {_text(str(bad))[:200]}"
            for i, value in zip(at, empty or (None,), strict=True):
                got[i] = value
    total, blockers, rows, timers, first, errors = got
    try:
        total_n = max(0, int(total or 0))
    except (TypeError, ValueError):
        total_n = 0
    return ParkStats(
        total=total_n,
        blockers=int(blockers),
        top=[(_text(b), int(c)) for b, c in rows] if n else [],
        timers=int(timers),
        next_timer_ms=int(first[0][1]) if first else None,
        slot_errors={**{_text(k): _text(v) for k, v in errors.items()}, **damaged},
    )
