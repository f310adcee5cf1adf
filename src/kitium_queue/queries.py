"""The read API: what a dashboard or an operator asks of a queue.

Jobs by state (a page by offset, or by a cursor that stays put while jobs come and
go), one job's record and detail (the worker holding it, its lease deadline), its logs,
counts per state, health, and the durable event stream. Reads never change anything and
never raise because of one damaged record: it is returned with ``damaged`` set.

Read guards (``queue.queries.add_guard(fn)``): every read of job data and counts
(``get_job_status``, ``get_job_detail``, ``get_job_logs``, ``get_jobs_by_status``,
``list_jobs``, ``get_stats``, ``events``, and the schedule reads and ``explain`` of
``QueryAPI``) first calls each guard with a ``ReadCall`` (queue, query, arguments,
principal); a guard refuses the read by raising (``PermissionDeniedError`` by
convention), before anything is read. A feature's public reads opt in the same way:
each calls ``queue.queries.check(<its read's name>, args)`` first. ``health_check`` (a
PING) is not guarded. The library's own reads on behalf of the application (the DLQ
notification's ``job_status``) do not pass the guards.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, TypeVar

from redis.exceptions import RedisError, ResponseError

from .context import CONNECT_TIMEOUT_S
from .damage import health_damage, named
from .enums import JobStatus
from .errors import ConfigurationError
from .eventfeed import stream_events
from .events import StreamEvent
from .guards import GuardList, ReadCall, ReadGuard
from .identity import current_principal
from .job import JobInfo
from .jobpages import make_cursor, members_after, parse_cursor, zrange_pages
from .jobtexts import view_logs
from .limits import MAX_DELAY_MS
from .options import MAX_QUERY_LIMIT, lookup_id, shown, to_int
from .parking import parked_count, parked_ids
from .recordreads import NO_FIELDS, cut_off, read_records
from .records import LISTED_FIELDS, JobDetail, decode_id, hash_reply, job_values, stored_status
from .redact import redact_json_text
from .serverinfo import (
    MemoryReport,
    health_error,
    memory_report,
    ping_refusal,
    reply_text,
    write_probe,
    write_refused,
)

if TYPE_CHECKING:
    from .context import QueueContext
    from .explain import Explanation
    from .features.schedules import Schedule, ScheduleStore

__all__ = [
    "HealthStatus",
    "JobPage",
    "Queries",
    "QueryAPI",
    "QueueStats",
    "check_reads",
    "is_stream_id",
    "parse_status",
    "query_id",
    "query_limit",
    "zrange_pages",
]

#: The state set of each status (PAUSED: the waiting jobs of a paused queue).
_STATUS_SETS = {
    JobStatus.WAITING: "wait",
    JobStatus.PAUSED: "wait",
    JobStatus.ACTIVE: "active",
    JobStatus.DELAYED: "delayed",
    JobStatus.COMPLETED: "completed",
    JobStatus.FAILED: "failed",
    JobStatus.DLQ: "dlq",
}
#: Listed newest first (by finish time); the others in run order.
_NEWEST_FIRST = {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.DLQ}
#: The state sets a job can be found in, in the order ``_find_state`` looks.
_STATE_SETS = (
    (JobStatus.ACTIVE, "active"),
    (JobStatus.WAITING, "wait"),
    (JobStatus.DELAYED, "delayed"),
    (JobStatus.DLQ, "dlq"),
    (JobStatus.FAILED, "failed"),
    (JobStatus.COMPLETED, "completed"),
)
#: Largest |start| / |end| of ``get_job_logs`` (Redis list indexes are signed 64-bit).
_MAX_INDEX = 2**63 - 1
#: Largest ``offset`` of ``get_jobs_by_status`` (offset + limit stays a valid index).
MAX_QUERY_OFFSET = _MAX_INDEX - MAX_QUERY_LIMIT
_STREAM_ID = re.compile(r"[0-9]{1,20}(-[0-9]{1,20})?")

J = TypeVar("J", bound=JobInfo)


@dataclass(slots=True)
class QueueStats:
    """Counts per state. ``latency_ms``: how long the next job in line has waited;
    ``pending``: jobs parked behind a blocker (a concurrency cap, a group's turn, ...)."""

    waiting: int
    active: int
    delayed: int
    completed: int
    failed: int
    dlq: int
    paused: int
    is_paused: bool
    latency_ms: int
    pending: int = 0
    #: Job records found missing since the queue was last cleared: hashes evicted
    #: (``allow_eviction``) or deleted by hand while their job sat in a state set
    #: (waiting, delayed and running ones are in the DLQ with "job record missing").
    missing_records: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)


@dataclass(slots=True)
class HealthStatus:
    """Result of ``health_check()``; truthy when healthy."""

    healthy: bool
    redis_latency_ms: float | None
    backend: str
    error: str | None = None
    worker_running: bool = False
    #: Memory in use against ``maxmemory``, the eviction policy and the persistence of
    #: the server (None for memory://, or a server that does not answer ``INFO``).
    memory: MemoryReport | None = None
    #: Job records found missing (``QueueStats.missing_records``); None when unknown.
    missing_records: int | None = None

    def __bool__(self) -> bool:
        return self.healthy


@dataclass(slots=True)
class JobPage:
    """One page of ``list_jobs``.

    Attributes:
        jobs: the jobs of the page, in the order of their state (see
            ``get_jobs_by_status``).
        next_cursor: pass it as ``cursor=`` for the next page; None when this page
            reached the end of the state.
    """

    jobs: list[JobInfo] = field(default_factory=list)
    next_cursor: str | None = None


# ---------------------------------------------------------------------------- argument checks
def parse_status(status: JobStatus | str) -> JobStatus:
    """``status`` as a ``JobStatus``, or ``ConfigurationError`` listing the valid ones."""
    try:
        return JobStatus(status)
    except ValueError:
        raise ConfigurationError(
            f"unknown status {shown(status)}; use one of {[s.value for s in JobStatus]}"
        ) from None


def query_limit(limit: Any, what: str = "limit") -> int:
    """The ``limit`` of a query: an int from 0 (nothing) to ``MAX_QUERY_LIMIT``."""
    return to_int(limit, what, minimum=0, maximum=MAX_QUERY_LIMIT)


def query_id(job_id: Any) -> str:
    """A job id given to a query, as text that can be sent to Redis.

    Ints are accepted (``get_job_status(3)``). Ids that were stored before names were
    checked may hold control characters, so only what cannot be encoded at all (a lone
    surrogate) or is not an id is refused.
    """
    if isinstance(job_id, int) and not isinstance(job_id, bool):
        return str(job_id)
    return lookup_id(job_id, "job_id")


def is_stream_id(value: Any) -> bool:
    """What ``events(last_id=...)`` accepts: "$", or a stream id "<ms>" / "<ms>-<seq>"
    with both parts unsigned 64-bit numbers (Redis refuses anything else)."""
    if value == "$":
        return True
    if not isinstance(value, str) or not _STREAM_ID.fullmatch(value):
        return False
    return all(int(part) < 2**64 for part in value.split("-"))


async def check_reads(queues: Iterable[Any], query: str, args: Mapping[str, Any]) -> None:
    """Run the read guards of each of ``queues`` for ``query``: what a feature's read
    that spans several queues (the partitions of a ``PartitionedQueue``) calls first,
    so that it reads nothing unless every queue it reads lets it."""
    for q in queues:
        await q.queries.check(query, args)


# ---------------------------------------------------------------------------- component
class Queries:
    """The read API of one queue (``queue.queries``); ``JobQueue``'s query methods
    delegate here and document the behaviour."""

    def __init__(self, ctx: QueueContext) -> None:
        self.ctx = ctx
        self._guards: GuardList[ReadCall] = GuardList("read guard")

    # ------------------------------------------------------------------ read guards
    def add_guard(self, guard: ReadGuard) -> None:
        """Run ``guard(call: ReadCall)`` (sync or async) before every guarded read,
        after the guards added before it; it refuses the read by raising. Adding the
        same guard twice is a no-op."""
        self._guards.add(guard)

    def remove_guard(self, guard: ReadGuard) -> None:
        """Remove a guard added with ``add_guard`` (no-op if absent)."""
        self._guards.remove(guard)

    @property
    def guards(self) -> tuple[ReadGuard, ...]:
        """The read guards, in the order they run."""
        return self._guards.items

    async def check(self, query: str, args: Mapping[str, Any]) -> None:
        """Run the read guards for ``query`` (a no-op without guards). Reads of this
        class call it themselves; a component that reads job data or feature state on
        a caller's behalf elsewhere (the schedule reads, ``explain``, every feature's
        public reads) calls it first, with a name of its own for the read (access
        control maps each name to a permission)."""
        if self._guards:
            principal = current_principal(self.ctx.principal)
            await self._guards.run(ReadCall(self.ctx.name, query, dict(args), principal))

    # ------------------------------------------------------------------ reads
    async def get_job_status(self, job_id: str) -> JobInfo | None:
        """``JobQueue.get_job_status``."""
        if self._guards:
            await self.check("get_job_status", {"job_id": job_id})
        return await self.job_status(job_id)

    async def job_status(self, job_id: str) -> JobInfo | None:
        """``get_job_status`` without the read guards: for the library's own reads on
        behalf of the application (the DLQ notification), never for a caller's."""
        loaded = await self._load(job_id, detail=False)
        return None if loaded is None else self._view(JobInfo(**loaded[0]))

    async def get_job_detail(self, job_id: str) -> JobDetail | None:
        """``JobQueue.get_job_detail``."""
        if self._guards:
            await self.check("get_job_detail", {"job_id": job_id})
        loaded = await self._load(job_id, detail=True)
        if loaded is None:
            return None
        values, (worker, deadline, log_lines) = loaded
        return self._view(
            JobDetail(
                **values,
                worker=worker.decode("utf-8", "backslashreplace") if worker else None,
                lease_deadline=None if deadline is None or math.isinf(deadline) else int(deadline),
                log_lines=int(log_lines or 0),
            )
        )

    def _view(self, info: J) -> J:
        """``info`` through the context's ``info_views`` (features' payload views)."""
        ctx = self.ctx
        redacting = ctx.redacting
        for view in ctx.info_views:
            view(info, redacting)
        if ctx.redactors and (redacting or ctx.redact_everywhere):
            info.data = ctx.redact_value(info.data)
            info.result = ctx.redact_value(info.result)
            info.progress = ctx.redact_value(info.progress)
        return info

    async def _load(self, job_id: str, *, detail: bool) -> tuple[dict[str, Any], list[Any]] | None:
        """The ``JobInfo`` fields of one job, and with ``detail`` its worker field, its
        score in ``active`` and its log length; None if the job does not exist."""
        jid = query_id(job_id)
        ctx = self.ctx
        client = await ctx.client()
        pipe = client.pipeline(transaction=False)
        pipe.hgetall(ctx.keys.job(jid))
        pipe.hget(ctx.keys.meta, "paused")
        if detail:
            pipe.zscore(ctx.keys.active, jid)
            pipe.llen(ctx.keys.logs(jid))
        try:
            reply, paused, *extra = await pipe.execute(raise_on_error=False)
        except RedisError as exc:  # a record larger than the server sends: say so
            raise await cut_off(ctx, client, exc, f"the read of job {jid!r}") from None
        problems: list[str] = []
        raw = hash_reply(reply, problems)  # a key of another type: a damaged record
        extra = [None if isinstance(v, Exception) else v for v in extra]
        if not raw and not problems:
            return None
        found_in = None
        if problems or stored_status(raw) is None:
            # No state on the record: say where the job actually is, if anywhere.
            found_in = await self._find_state(jid)
        values = job_values(
            jid,
            raw,
            paused=paused == b"1",
            problems=problems,
            serializer=ctx.serializer,
            base=ctx.policy,
            found_in=found_in,
        )
        return values, [raw.get(b"w"), *extra] if detail else extra

    async def _find_state(self, job_id: str) -> JobStatus | None:
        ctx = self.ctx
        client = await ctx.client()
        pipe = client.pipeline(transaction=False)
        for _, attr in _STATE_SETS:
            pipe.zscore(getattr(ctx.keys, attr), job_id)
        scores = await pipe.execute()
        for (status, _), score in zip(_STATE_SETS, scores, strict=True):
            if score is not None:
                return status
        return None

    async def get_job_logs(self, job_id: str, start: int = 0, end: int = -1) -> list[str]:
        """``JobQueue.get_job_logs``."""
        if self._guards:
            await self.check("get_job_logs", {"job_id": job_id, "start": start, "end": end})
        jid = query_id(job_id)
        first = to_int(start, "start", minimum=-_MAX_INDEX, maximum=_MAX_INDEX)
        last = to_int(end, "end", minimum=-_MAX_INDEX, maximum=_MAX_INDEX)
        client = await self.ctx.client()
        try:
            lines = await client.lrange(self.ctx.keys.logs(jid), first, last)
        except ResponseError as exc:  # the log key holds another type: no line to read
            if "WRONGTYPE" not in str(exc):
                raise
            lines = []
        except RedisError as exc:  # more lines than the server sends at once: say so
            raise await cut_off(self.ctx, client, exc, f"the read of job {jid!r}'s log") from None
        # Lines are written as UTF-8; anything else (a damaged list) is shown escaped.
        text = [b.decode("utf-8", "backslashreplace") for b in lines]
        ctx = self.ctx
        if ctx.job_texts.log_views and text:  # features' log views (jobtexts.py)
            await view_logs(ctx, client, jid, text)
        if ctx.redactors and (ctx.redacting or ctx.redact_everywhere):
            text = [_redacted_json(ctx, line) for line in text]
        return text

    async def get_jobs_by_status(
        self,
        status: JobStatus | str,
        limit: int = 100,
        offset: int = 0,
        *,
        include_data: bool = True,
    ) -> list[JobInfo]:
        """``JobQueue.get_jobs_by_status``."""
        if self._guards:
            await self.check(
                "get_jobs_by_status", {"status": status, "limit": limit, "offset": offset}
            )
        st = parse_status(status)
        n = query_limit(limit)
        first = to_int(offset, "offset", minimum=0, maximum=MAX_QUERY_OFFSET)
        if n == 0:
            return []
        if st is JobStatus.PENDING:
            return await self.infos(await parked_ids(self.ctx, n, first), st, include_data)
        client = await self.ctx.client()
        key = getattr(self.ctx.keys, _STATUS_SETS[st])
        if st is JobStatus.PAUSED and not await client.hget(self.ctx.keys.meta, "paused"):
            return []
        rows = await zrange_pages(client, key, first, n, rev=st in _NEWEST_FIRST)
        ids = [m for m, _ in rows]
        found_in = JobStatus.WAITING if st is JobStatus.PAUSED else st
        return await self.infos(ids, found_in, include_data)

    async def list_jobs(
        self,
        status: JobStatus | str,
        *,
        limit: int = 100,
        cursor: str | None = None,
        include_data: bool = True,
    ) -> JobPage:
        """``JobQueue.list_jobs``."""
        if self._guards:
            await self.check("list_jobs", {"status": status, "limit": limit, "cursor": cursor})
        st = parse_status(status)
        n = to_int(limit, "limit", minimum=1, maximum=MAX_QUERY_LIMIT)
        after = None if cursor is None else parse_cursor(cursor, st)
        if st is JobStatus.PENDING:
            # Parked jobs are spread over one set per blocker (parking.py): their pages
            # go by position in the merged order.
            first = 0 if after is None else int(after[0])
            ids = await parked_ids(self.ctx, n, first)
            more = make_cursor(st, b"", float(first + len(ids))) if len(ids) == n else None
            return JobPage(await self.infos(ids, st, include_data), more)
        client = await self.ctx.client()
        key = getattr(self.ctx.keys, _STATUS_SETS[st])
        if st is JobStatus.PAUSED and not await client.hget(self.ctx.keys.meta, "paused"):
            return JobPage()
        newest_first = st in _NEWEST_FIRST
        if after is None:
            page = await zrange_pages(client, key, 0, n, rev=newest_first)
        else:
            page = await members_after(client, key, after, n, newest_first)
        found_in = JobStatus.WAITING if st is JobStatus.PAUSED else st
        jobs = await self.infos([m for m, _ in page], found_in, include_data)
        nxt = make_cursor(st, *page[-1]) if len(page) == n else None
        return JobPage(jobs, nxt)

    async def infos(
        self,
        ids: Sequence[str | bytes],
        found_in: JobStatus | None = None,
        include_data: bool = True,
    ) -> list[JobInfo]:
        """The records of ``ids`` (as read from a state set: bytes are used as they are,
        so a member that is not UTF-8 is still looked up and shown escaped); ids whose
        record is gone are left out. Without ``include_data`` only ``LISTED_FIELDS``
        are read: data, result, progress and stacktrace stay None."""
        if not ids:
            return []
        ctx = self.ctx
        client = await ctx.client()
        base = ctx.keys.job("")
        base_b = base.encode()
        keys = [base_b + i if isinstance(i, bytes) else base + i for i in ids]
        # In round trips of a few records (the server's output buffer limit); one key
        # of another type (WRONGTYPE) is that job's damage, not the listing's.
        fields = None if include_data else LISTED_FIELDS
        raws, paused = await read_records(ctx, client, keys, ctx.keys.meta, fields)
        is_paused = paused == b"1"
        gone = [i for i, r in zip(ids, raws, strict=True) if not r]
        if gone and found_in in _STATUS_SETS:
            await self._missing(gone, found_in)
        out: list[JobInfo] = []
        for i, reply in zip(ids, raws, strict=True):
            problems: list[str] = []
            if reply is NO_FIELDS:
                problems.append("job record holds none of the fields a listing shows")
                reply = {}
            r = hash_reply(reply, problems)
            if not r and not problems:
                continue
            jid = decode_id(i, problems)
            out.append(
                self._view(
                    JobInfo(
                        **job_values(
                            jid,
                            r,
                            paused=is_paused,
                            serializer=ctx.serializer,
                            base=ctx.policy,
                            found_in=found_in,
                            problems=problems,
                        )
                    )
                )
            )
        return out

    async def _missing(self, gone: Sequence[str | bytes], found_in: JobStatus) -> None:
        """Ids read from a state set whose record was gone when read: the ones still in
        the set lost their record (evicted, deleted); the others left the set meanwhile
        (retention, a transition). Reported through ``ctx.missing``, never raised."""
        if not self.ctx.missing.due():
            return
        client = await self.ctx.client()
        key = getattr(self.ctx.keys, _STATUS_SETS[found_in])
        pipe = client.pipeline(transaction=False)
        for i in gone:
            pipe.zscore(key, i)
        still = sum(1 for s in await pipe.execute() if s is not None)
        self.ctx.missing.seen(still, f"listed as {found_in.value}")

    async def get_stats(self) -> QueueStats:
        """``JobQueue.get_stats``."""
        if self._guards:
            await self.check("get_stats", {})
        r = await self.ctx.run("stats")
        waiting, active, delayed, completed, failed, dlq = (int(x) for x in r[:6])
        is_paused = r[6] == b"1"
        oldest, now = int(r[7]), int(r[8])
        missing = _count(r[9])
        self.ctx.missing.counted(missing)
        return QueueStats(
            waiting=waiting,
            active=active,
            delayed=delayed,
            completed=completed,
            failed=failed,
            dlq=dlq,
            paused=waiting if is_paused else 0,
            is_paused=is_paused,
            latency_ms=max(0, now - oldest) if oldest >= 0 else 0,
            pending=await parked_count(self.ctx),
            missing_records=missing,
        )

    async def health_check(
        self, worker_running: Callable[[], bool], *, server_config: bool = False
    ) -> HealthStatus:
        """``JobQueue.health_check``; ``worker_running()``: whether this process runs a worker
        of the queue; ``server_config``: also read persistence settings with CONFIG GET."""
        ctx = self.ctx
        try:
            client = await ctx.client()
            t0 = time.perf_counter()  # uvloop's loop.time() has ms resolution
            refused = await ping_refusal(client, CONNECT_TIMEOUT_S)  # MISCONF: answers
            latency = (time.perf_counter() - t0) * 1000
            # Bounded as the PING is: a server that holds writes is reported, not waited for.
            probe = ctx.keys.extra("write-probe")
            refused = refused or await write_probe(client, probe, CONNECT_TIMEOUT_S)
            refused = refused or await _slot_probe(client, (ctx.keys.meta, probe))
            # The reads that follow get the same bound (a pause that began meanwhile).
            memory, missing, damaged = await asyncio.wait_for(
                self._server_state(client, server_config), CONNECT_TIMEOUT_S
            )
        except Exception as exc:
            # Worded as the CLI words it (a bare asyncio timeout has no text); redacted as
            # ``backend`` is: a redis-py message may quote the connection.
            # ``error`` redacts what it quotes; redacting its text again would mask the
            # example URL it may give (``redis://USERNAME:PASSWORD@host...``) up to the host.
            said = ctx.connection.error(exc, ctx.name, timeout_s=CONNECT_TIMEOUT_S)
            text = str(said) if said is not None else ctx.connection.redact(exc)
            error = f"{type(said or exc).__name__}: {text}"
            return HealthStatus(False, None, ctx.connection.describe(), error, worker_running())
        return HealthStatus(
            (problem := refused or damaged) is None,
            round(latency, 3),
            ctx.connection.describe(),
            problem,
            worker_running(),
            memory,
            missing,
        )

    async def _server_state(
        self, client: Any, server_config: bool
    ) -> tuple[MemoryReport | None, int | None, str | None]:
        """What ``health_check`` reads once Redis answered: memory, job records found
        missing, and a damaged key of the layout (``health_damage``)."""
        ctx = self.ctx
        memory = None  # on a Cluster, of the primary that holds the queue's slot (meta)
        if not ctx.connection.is_memory:
            memory = await memory_report(client, config=server_config, key=ctx.keys.meta)
        try:
            missing: int | None = _count(await client.hget(ctx.keys.meta, "missing"))
        except RedisError:
            missing = None
        else:
            ctx.missing.counted(missing or 0)
        damaged = await health_damage(client, ctx.keys.all)  # a key of the layout, by hand
        return memory, missing, damaged

    async def events(
        self, *, last_id: str = "$", block_ms: int = 5000, follow: bool = True
    ) -> AsyncIterator[StreamEvent]:
        """``JobQueue.events``."""
        if self._guards:
            await self.check("events", {"last_id": last_id, "follow": follow})
        if not is_stream_id(last_id):
            raise ConfigurationError(
                f"last_id must be '$' (new events only), '0' (from the start) or a stream "
                f"id such as '1700000000000-0', got {shown(last_id)}"
            )
        block = to_int(block_ms, "block_ms", minimum=0 if follow else 1, maximum=MAX_DELAY_MS)
        # Reading, and following through a lost connection: eventfeed.py.
        feed = stream_events(self.ctx, last_id=last_id, block_ms=block, follow=follow)
        async with contextlib.aclosing(feed):
            async for ev in feed:
                yield ev


async def _slot_probe(client: Any, keys: tuple[str, str]) -> str | None:
    """Whether the server takes calls on several of the queue's keys, as its transitions
    are: ``EXISTS`` of two of them (one never written), a read. While a Cluster moves
    the queue's slot (``CLUSTER SETSLOT ... MIGRATING / IMPORTING``) it is refused with
    ``TRYAGAIN``, as every add, claim and outcome is, although the single-key write
    probe is redirected and answered. The ``HealthStatus.error`` of a refusal, else
    None (other errors, and no answer in time, leave it to the other probes)."""
    try:
        await asyncio.wait_for(client.execute_command("EXISTS", *keys), CONNECT_TIMEOUT_S)
    except (RedisError, asyncio.TimeoutError) as exc:
        text = reply_text(exc)
        if isinstance(exc, RedisError) and write_refused(text) is not None:
            return health_error(text)
    return None


def _count(raw: Any) -> int:
    """A counter read from Redis (0 when absent or damaged)."""
    try:
        return max(0, int(raw or 0))
    except (TypeError, ValueError):
        return 0


def _redacted_json(ctx: QueueContext, text: str) -> str:
    """A JSON object or array in ``text`` (a log line, a progress value) through the
    context's redactors, as JSON again; other text unchanged (fails closed:
    ``redact.redact_json_text``)."""
    return redact_json_text(text, ctx.redact_value)


class QueryAPI:
    """The query methods of ``JobQueue`` (delegating to ``queue.queries``)."""

    queries: Queries

    if TYPE_CHECKING:

        @property
        def schedules(self) -> ScheduleStore: ...

        @property
        def worker(self) -> Any: ...

    async def get_job_status(self, job_id: str) -> JobInfo | None:
        """The stored record of a job, or None if it does not exist (or was removed).

        A damaged record (options that are not JSON, an unknown state, counters that are
        not numbers, text that is not UTF-8) is returned as a ``JobInfo`` whose
        ``damaged`` says what is wrong, never as an exception.

        Raises ``ConfigurationError`` for an id that cannot name a job (not a string or
        int, or holding a lone surrogate).
        """
        return await self.queries.get_job_status(job_id)

    async def get_job_detail(self, job_id: str) -> JobDetail | None:
        """``get_job_status`` plus what an operator asks about a running job: the worker
        that holds it (``worker``), when its lease expires (``lease_deadline``, while
        active) and how many log lines it has. None if the job does not exist."""
        return await self.queries.get_job_detail(job_id)

    async def get_job_logs(self, job_id: str, start: int = 0, end: int = -1) -> list[str]:
        """Log lines a processor wrote with ``job.log`` (``start``/``end`` as in
        ``LRANGE``: 0-based, negative counts from the end, ``end`` inclusive), through
        the features' log views (``queue.job_texts``: a feature that seals lines opens
        them there); a log key overwritten with another type reads as no lines."""
        return await self.queries.get_job_logs(job_id, start, end)

    async def get_jobs_by_status(
        self,
        status: JobStatus | str,
        limit: int = 100,
        offset: int = 0,
        *,
        include_data: bool = True,
    ) -> list[JobInfo]:
        """Jobs in a state: waiting/delayed/active in run order, finished ones newest first,
        pending (parked) ones in the order they would run if nothing blocked them.

        ``limit``: an int from 0 (returns nothing) to ``MAX_QUERY_LIMIT`` (100,000);
        ``offset``: how many to skip first (an int >= 0); anything else raises
        ``ConfigurationError``. A damaged record is returned as a ``JobInfo`` with
        ``damaged`` set (see ``get_job_status``) and the others as usual. Offsets shift
        while jobs come and go; to page through a busy state use ``list_jobs``.

        ``include_data=False`` reads only what a listing row shows: each job comes with
        ``data``, ``result``, ``progress`` and ``stacktrace`` None (not read), so a page
        moves and holds the same few bytes per job whatever the jobs carry; read one
        job's payload with ``get_job_status``.
        """
        call = self.queries.get_jobs_by_status(status, limit, offset, include_data=include_data)
        return await named(self.queries, call)

    async def list_jobs(
        self,
        status: JobStatus | str,
        *,
        limit: int = 100,
        cursor: str | None = None,
        include_data: bool = True,
    ) -> JobPage:
        """A page of jobs in a state, in the order of ``get_jobs_by_status``, and the
        cursor of the next page.

        The cursor marks a place in the state's order (not a position), so jobs that
        arrive or leave meanwhile neither repeat nor skip the jobs after it (pending
        jobs, kept in one set per blocker, are paged by position). ``limit``: an int
        from 1 to ``MAX_QUERY_LIMIT``; ``include_data``: as in ``get_jobs_by_status``.
        Example::

            page = await queue.list_jobs("completed", limit=50)
            while page.next_cursor:
                page = await queue.list_jobs("completed", limit=50, cursor=page.next_cursor)
        """
        call = self.queries.list_jobs(status, limit=limit, cursor=cursor, include_data=include_data)
        return await named(self.queries, call)

    async def get_stats(self) -> QueueStats:
        """Counts per state, whether the queue is paused, and ``latency_ms``."""
        return await self.queries.get_stats()

    async def health_check(self) -> HealthStatus:
        """Ping Redis; healthy when it answers. Never raises."""
        return await self.queries.health_check(
            lambda: self.worker is not None and bool(self.worker.running)
        )

    async def get_dlq_jobs(self, limit: int = 100, *, include_data: bool = True) -> list[JobInfo]:
        """Dead-lettered jobs, newest first, with ``failed_reason`` and ``stacktrace``.

        ``limit``: 0 to ``MAX_QUERY_LIMIT`` (100,000), and ``include_data`` (False: no
        data, result, progress or stacktrace read), as in ``get_jobs_by_status``.
        """
        call = self.queries.get_jobs_by_status(JobStatus.DLQ, limit, include_data=include_data)
        return await named(self.queries, call)

    def events(
        self, *, last_id: str = "$", block_ms: int = 5000, follow: bool = True
    ) -> AsyncIterator[StreamEvent]:
        """Iterate the durable event stream (events of every process, written atomically
        with each transition). ``last_id="0"`` replays what the stream still holds;
        ``"$"`` (the default) starts with the next new event.

        By default (``follow=True``) the iteration never ends: after the events the
        stream holds it waits for new ones, like ``tail -f`` — also with
        ``last_id="0"``. Break out of the loop, or pass ``follow=False`` to stop once no
        event arrives within ``block_ms`` (1 ms to 10 years; with ``follow=True`` 0 is
        allowed too and waits without a deadline)::

            async for ev in queue.events(last_id="0", follow=False, block_ms=100):
                print(ev.event, ev.job_id)   # what the stream holds, then stops

        A ``job-progress`` event whose value was too large for the stream (it carries
        ``progress_bytes``) gets ``progress`` from the job record, see ``StreamEvent``.
        """
        return self.queries.events(last_id=last_id, block_ms=block_ms, follow=follow)

    async def explain(self, job_id: str) -> Explanation:
        """Why job ``job_id`` is not running, with the concrete reasons: its delay, a
        paused queue, a ``RateLimited`` hold or full limiter window, the jobs ahead of
        it, no live worker with a processor for its name, the worker holding its lease
        and until when, and whatever the enabled features report (a group's turn and
        the job holding it, unfinished dependencies, an open breaker, a full rate window
        or concurrency cap, ...). ``status`` is None when there is no such job.

        Example::

            why = await queue.explain(job_id)
            for reason in why.reasons:
                print(reason.code, reason.message)
        """
        from .explain import explain_job

        await self.queries.check("explain", {"job_id": job_id})
        return await explain_job(self.queries.ctx, job_id)

    async def get_schedules(self) -> list[Schedule]:
        """Every schedule of this queue, oldest first."""
        await self.queries.check("get_schedules", {})
        return await self.schedules.list()

    async def get_schedule(self, schedule_id: str) -> Schedule | None:
        """One schedule (definition and state), or None."""
        await self.queries.check("get_schedule", {"schedule_id": schedule_id})
        return await self.schedules.get(schedule_id)
