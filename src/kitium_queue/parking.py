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

Every read takes the queue (or anything with its ``keys`` and an async ``client()``).
``rebuild_parked(queue)`` is the one command: it repairs the parked sets from the job
records after a blocker's set was overwritten with another type or deleted outside
kitium-queue (``lua/park_rebuild.lua``), through the admin choke point.

``blocker_sets`` (the state of each blocker's set) is read by the dashboard's Parked tab
and by ``kitium-queue parked list|show``.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from redis.exceptions import ResponseError

from .damage import named_key
from .errors import ConfigurationError, DamagedKeyError
from .keys import QueueKeys
from .records import job_id_pages

if TYPE_CHECKING:
    from .queue import JobQueue

__all__ = [
    "BlockerSet",
    "ParkRepair",
    "ParkStats",
    "blocker_of",
    "blocker_sets",
    "park_stats",
    "parked_by_blocker",
    "parked_count",
    "parked_ids",
    "parked_in",
    "rebuild_parked",
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

    def whole(key: str, member: Any, score: float) -> int | None:
        # A score written outside kitium-queue (inf, nan): named, never a crash.
        if math.isfinite(score):
            return int(score)
        damaged[f"damaged:{key}"] = (
            f"holds a score that is no whole number ({score}) for "
            f"{_text(member)[:100]!r}, written outside kitium-queue: delete it and rebuild "
            "the parked sets (rebuild_parked)"
        )
        return None

    largest: list[tuple[str, int]] = []
    for member, score in rows:
        count = whole(keys.parked_index, member, score)
        if count is not None:
            largest.append((_text(member), count))
    due = whole(keys.park_timers, first[0][0], first[0][1]) if first else None
    return ParkStats(
        total=total_n,
        blockers=int(blockers),
        top=largest if n else [],
        timers=int(timers),
        next_timer_ms=due,
        slot_errors={**{_text(k): _text(v) for k, v in errors.items()}, **damaged},
    )


# ------------------------------------------------------------------ views
@dataclass(frozen=True, slots=True)
class BlockerSet:
    """One blocker: the jobs the parked index counts behind it, and its set's state.

    Attributes:
        name: the blocker (``'cc:<key>'``, ``'g:<group>'``, ...).
        count: its count in the parked index (None when the index cannot be read).
        key: the key of its set.
        state: ``ok``; ``missing`` (the index counts jobs but the set is gone: they are
            stranded); ``damaged`` (the key holds another type); ``empty`` (no set, no
            count: nothing is parked behind it).
        found: the Redis type of ``key`` (``unknown`` when it could not be read).
        repair: what to do, for ``missing`` and ``damaged``; else None.
    """

    name: str
    count: int | None
    key: str
    state: str
    found: str
    repair: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The row as plain JSON-ready values."""
        return asdict(self)


def _whole(value: Any) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError, OverflowError):
        return None


async def blocker_sets(
    queue: QueueLike, blockers: Iterable[str | tuple[str, int]]
) -> list[BlockerSet]:
    """The state of each blocker's set, in one round trip. ``blockers`` are names (their
    count is read from the parked index) or ``(name, count)`` pairs (``ParkStats.top``)."""
    rows = [(b, None) if isinstance(b, str) else (b[0], b[1]) for b in blockers]
    if not rows:
        return []
    client = await queue.client()
    keys = queue.keys
    pipe = client.pipeline(transaction=False)
    for name, count in rows:
        pipe.type(keys.parked(name))
        if count is None:
            pipe.zscore(keys.parked_index, name)
    got = iter(await pipe.execute(raise_on_error=False))
    out = []
    for name, count in rows:
        kind = next(got)
        n = count
        if count is None:  # not in the index: 0; the index unreadable: None
            score = next(got)
            n = 0 if score is None else _whole(score)
        key = keys.parked(name)
        found = "unknown" if isinstance(kind, Exception) else _text(kind)
        repair = None
        if found == "zset":
            state = "ok"
        elif found == "none" and not n:
            state = "empty"
        elif found == "none":
            state = "missing"
            repair = (
                f"the set {key} is gone while the parked index counts {n} job(s) behind "
                "it: they are stranded until the parked sets are rebuilt with "
                "kitium_queue.parking.rebuild_parked(queue) (CLI: kitium-queue parked "
                "rebuild APP --blocker BLOCKER)"
            )
        else:
            state, repair = "damaged", str(DamagedKeyError("", key, found, "zset"))
        out.append(BlockerSet(name, n, key, state, found, repair))
    return out


# ------------------------------------------------------------------ the repair
#: Job records, or blockers, one call of the repair script examines (a few commands
#: each: a call takes a few milliseconds, so it never blocks Redis for long).
REBUILD_BATCH = 500
#: Blockers and keys a ``ParkRepair`` names at most (its counts cover all of them).
REBUILD_LISTED = 100
_SCRIPT = "park_rebuild"


@dataclass(frozen=True, slots=True)
class ParkRepair:
    """What ``rebuild_parked`` did, or with ``dry_run`` would do now.

    Attributes:
        dry_run: True when nothing was written.
        pending: parked jobs (records with status ``pending`` and a blocker) examined.
        restored: of those, the jobs their blocker's set did not list (the set was
            deleted, held another type, or lacked them): put back at their place.
        released: of the restored jobs, those sent on to ``wait`` (``release=True``),
            where claim's admission checks hold again the ones still blocked.
        skipped: pending jobs also listed in a state set: left alone (a job is never
            put in two places).
        sets_rebuilt: blockers whose set was given jobs back.
        damaged_replaced: keys holding another Redis type (a blocker's set, the parked
            index) deleted and rebuilt.
        index_fixed: blockers whose count in the parked index was wrong, set right
            (with ``dry_run``: wrong now, before any job is put back).
        total_before: the ``parked`` total of ``meta`` before the repair.
        total_after: the total recomputed from the index after it (with ``dry_run``:
            the index as it is now), or None when it was not recomputed (a damaged
            index in a dry run).
        blockers: the blockers given jobs back (the first ``REBUILD_LISTED``).
        damaged_keys: the keys replaced (the first ``REBUILD_LISTED``).
    """

    dry_run: bool
    pending: int = 0
    restored: int = 0
    released: int = 0
    skipped: int = 0
    sets_rebuilt: int = 0
    damaged_replaced: int = 0
    index_fixed: int = 0
    total_before: int = 0
    total_after: int | None = None
    blockers: tuple[str, ...] = ()
    damaged_keys: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The result as plain JSON-ready values."""
        out = asdict(self)
        out["blockers"] = list(self.blockers)
        out["damaged_keys"] = list(self.damaged_keys)
        return out


async def rebuild_parked(
    queue: JobQueue,
    blocker: str | None = None,
    *,
    dry_run: bool = False,
    release: bool = True,
) -> ParkRepair:
    """Rebuild the parked sets from the job records, after a blocker's set was
    overwritten with another type or deleted outside kitium-queue (its jobs stay
    ``pending`` with nothing to release them; ``slot_errors`` names such a set).

    Walks the job records with ``SCAN`` (``REBUILD_BATCH`` per script call, each atomic
    and short, so workers keep running meanwhile); each parked job its blocker's set does
    not list is put back in it at its place (its wait score, from its priority and
    enqueue order), a set holding another type being deleted first (only then). Then
    each blocker's count in the parked index is set to its set's size, and the
    ``parked`` total of ``meta`` to the sum of the index.

    With ``release`` (the default) the jobs put back go on to ``wait`` in the same call,
    as a blocker's release moves them (``unpark``): claim's admission checks judge each
    one again, so a job whose blocker still holds (a concurrency key at its cap, a busy
    group, unfinished parents, an open breaker, a tenant's full lane) is parked behind it
    again, and one whose blocker is gone (the release already happened while the set was
    damaged) runs. Without it they stay in their rebuilt set until the blocker's next
    release, which never comes for a blocker that is gone: use it only when every
    blocker concerned is known to be live.

    Args:
        queue: the queue (a ``PartitionedQueue``: call it for each of ``queue.queues``).
        blocker: only the jobs parked behind this blocker (``'cc:<key>'``, ``'g:<group>'``,
            ...: ``ParkStats.slot_errors`` and ``blocker_of`` name it), and its count.
        dry_run: write nothing; report what a run would do now.
        release: send the jobs put back on to wait (see above).

    Returns a ``ParkRepair``. Runs as the admin command ``rebuild_parked`` (guards,
    audit). Needs ``SCAN``, ``ZSCAN`` and, in the script, ``ZCOUNT`` besides the engine's
    commands. Raises ``DamagedKeyError`` when ``meta`` (or, releasing, ``wait`` or the
    marker) holds another type: repair it first.
    """
    if blocker is not None and (not isinstance(blocker, str) or not blocker):
        raise ConfigurationError(f"blocker must be a non-empty str or None, got {blocker!r:.100}")
    for flag, what in ((dry_run, "dry_run"), (release, "release")):
        if not isinstance(flag, bool):
            raise ConfigurationError(f"{what} must be True or False, got {flag!r:.100}")

    async def action() -> ParkRepair:
        return await _Rebuild(queue, blocker, dry_run, release).run()

    args = {"blocker": blocker, "dry_run": dry_run, "release": release}
    return await queue.admin.execute("rebuild_parked", args, action)


class _Rebuild:
    """One run of ``rebuild_parked``: its phases (``lua/park_rebuild.lua``) and tallies."""

    def __init__(self, queue: JobQueue, blocker: str | None, dry: bool, release: bool) -> None:
        self.ctx = queue.ctx
        self.only = blocker
        self.dry = dry
        self.head = ["1" if dry else "0", "1" if release else "0", blocker or ""]
        self.tally = dict.fromkeys(("pending", "restored", "released", "skipped"), 0)
        self.seen: set[bytes] = set()
        self.rebuilt: dict[str, None] = {}  # insertion-ordered
        self.damaged: dict[str, None] = {}  # insertion-ordered; a dry run meets a key twice
        self.fixed = 0

    async def _call(self, phase: str, items: list[bytes] | None = None) -> Any:
        return await self.ctx.run(_SCRIPT, [phase, *self.head, *(items or [])])

    async def run(self) -> ParkRepair:
        ctx = self.ctx
        keys = ctx.keys
        client = await ctx.client()
        (index_bad,) = await self._call("index")
        if index_bad:
            self.damaged[keys.parked_index] = None
        async for page in job_id_pages(ctx, REBUILD_BATCH):
            await self._jobs(page)
        if self.only is not None:
            blockers = [self.only.encode()]
        else:
            blockers = sorted(self.seen)
            if not (index_bad and self.dry):  # a damaged index lists nothing to recount
                async for member, _ in client.zscan_iter(keys.parked_index, count=1000):
                    if bytes(member) not in self.seen:
                        blockers.append(bytes(member))
        for i in range(0, len(blockers), REBUILD_BATCH):
            fixed, damaged = await self._call("count", blockers[i : i + REBUILD_BATCH])
            self.fixed += int(fixed)
            self.damaged.update((_text(k), None) for k in damaged)
        before, after = (None, None) if index_bad and self.dry else await self._call("total")
        t = self.tally
        return ParkRepair(
            dry_run=self.dry,
            pending=t["pending"],
            restored=t["restored"],
            released=t["released"],
            skipped=t["skipped"],
            sets_rebuilt=len(self.rebuilt),
            damaged_replaced=len(self.damaged),
            index_fixed=self.fixed,
            total_before=await parked_count(ctx) if before is None else int(before),
            total_after=None if after is None or int(after) < 0 else int(after),
            blockers=tuple(list(self.rebuilt)[:REBUILD_LISTED]),
            damaged_keys=tuple(list(self.damaged)[:REBUILD_LISTED]),
        )

    async def _jobs(self, ids: list[bytes]) -> None:
        pending, restored, released, skipped, damaged, seen, given = await self._call("jobs", ids)
        for name, n in zip(self.tally, (pending, restored, released, skipped), strict=True):
            self.tally[name] += int(n)
        self.damaged.update((_text(k), None) for k in damaged)
        self.seen.update(bytes(b) for b in seen)
        # A blocker given jobs in two pages is one set rebuilt.
        self.rebuilt.update((_text(b), None) for b in given)
