"""``PartitionedQueue``: one logical queue spread over N physical queues, each with its
own hash tag, so the shards of a Redis Cluster share one busy queue."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import re
import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

from redis.crc import key_slot

from .connection import ConnectionFactory
from .enums import JobStatus
from .errors import ConfigurationError, JobNotFoundError, PartialEnqueueError
from .events import EventData, Handler, StreamEvent
from .job import Job, JobInfo
from .keys import check_key_part
from .options import JobOptions
from .queue import HealthStatus, JobQueue, QueueStats
from .worker import SharedSlots, Worker, serve_until_stopped

__all__ = ["PartitionedQueue"]

_SLOTS = 16384
_MAX_PARTITIONS = 1024
_FINISHED = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.DLQ)
# A full id: the partition as a canonical decimal (ASCII digits, no sign, no leading
# zero, at most 4 digits since partitions <= 1024), the FIRST ':', then the job's id in
# that partition, taken verbatim (it may hold ':' itself).
_FULL_ID = re.compile(r"(0|[1-9][0-9]{0,3}):(.+)", re.DOTALL)
# A chosen job_id that begins like a full id ("1:inv-4"): refused, so that a string that
# parses as a full id can only ever mean one job.
_LOOKS_FULL = re.compile(r"[0-9]+:")


def partition_names(name: str, partitions: int) -> list[str]:
    """Physical queue names of ``name`` split ``partitions`` ways.

    Partition ``i`` is ``"<name>#<i>"``, or ``"<name>#<i>.<k>"`` with the smallest ``k``
    that puts its hash tag in the i-th of ``partitions`` equal ranges of the 16384
    cluster slots. So the partitions cover the slot space evenly, and with the usual
    even slot layout (``redis-cli --cluster create``, managed services) a partition count
    that is a multiple of the number of masters spreads the queue evenly over them.
    Deterministic: every producer and worker derives the same names.
    """
    out = []
    for i in range(partitions):
        lo, hi = i * _SLOTS // partitions, (i + 1) * _SLOTS // partitions
        k = 0
        while True:
            cand = f"{name}#{i}" if k == 0 else f"{name}#{i}.{k}"
            if lo <= key_slot(cand.encode()) < hi:
                out.append(cand)
                break
            k += 1
    return out


class PartitionedQueue:
    """A logical queue made of ``partitions`` ``JobQueue``\\ s (``orders#0``, ...).

    Producers spread jobs over the partitions: round-robin, or by a stable key so that
    related jobs share a partition: ``partition_key=...`` if given, else the job's
    ``message_group_id``, ``idempotency_key`` or ``job_id`` (``crc32(key) % partitions``).
    Duplicates are therefore caught (an idempotency key always lands on the same
    partition) and a FIFO group keeps its order.

    A worker (``start()`` / ``run_worker()``) consumes every partition with one
    concurrency budget: one pump per partition, all drawing from a shared pool of
    ``concurrency`` slots, and a partition waiting for a slot gets the next one freed
    (in arrival order), so a busy partition cannot starve the others.

    Job ids carry the partition: ``"<partition>:<id>"`` (``"2:15"``, ``"0:inv-4"``), the
    partition written in plain decimal and split off at the first ``:``. Queries and
    management calls take only those full ids, as ``add_job`` returns them: an id that
    is not one (a bare ``job_id``, a partition out of range, ``"01:5"``) finds nothing
    (``get_job_status`` gives None) or raises ``JobNotFoundError``, never acts on
    another job. For that, a ``job_id`` you choose must not begin with digits and ``:``
    (``"1:inv-4"`` is refused). The full id of a chosen ``job_id`` is
    ``f"{queue.partition_of(key)}:{job_id}"``, ``key`` being what placed it (see below).
    Inside a processor ``job.id`` is the id within the partition;
    ``queue.public_id(job)`` gives the full one.

    Ordering: FIFO (within a priority) and FIFO groups hold **within a partition** only;
    jobs of different partitions run in no particular order relative to each other.
    A key maps to the same partition as long as ``partitions`` is unchanged: changing
    the count re-maps keys, so drain the queue (or keep the old count running until it
    is empty) before changing it. Stats and lists aggregate over all partitions; pause,
    resume and drain apply to each partition in turn (not atomically).

    Example::

        orders = PartitionedQueue("orders", partitions=6, redis="redis+cluster://h:7000")

        @orders.process("charge")
        async def charge(job):
            ...

        await orders.add_job("charge", {"order": 42}, partition_key="customer-7")
        await orders.run_worker(concurrency=50)

    Args:
        name: logical queue name.
        partitions: number of physical queues (1..1024).
        redis: as for ``JobQueue``; one client is shared by all partitions.
        **options: any other ``JobQueue`` argument, applied to every partition.
    """

    def __init__(
        self, name: str, *, partitions: int, redis: Any = "memory://", **options: Any
    ) -> None:
        if not isinstance(partitions, int) or isinstance(partitions, bool) or not (
            1 <= partitions <= _MAX_PARTITIONS
        ):
            raise ConfigurationError(
                f"partitions must be an int from 1 to {_MAX_PARTITIONS}, got {partitions!r}"
            )
        if "name" in options:
            raise ConfigurationError("pass the queue name as the first argument")
        # Before partition_names, which encodes it: refused names fail here, clearly.
        check_key_part(name, "queue name")
        self.name = name
        self.partitions = partitions
        self.connection = ConnectionFactory(redis)
        # One client for every partition (a cluster client discovers the topology once).
        self._shared: Any = None if self.connection.is_memory else self.connection.client()
        backend = redis if self._shared is None else self._shared
        self.queues = [
            JobQueue(n, redis=backend, **options) for n in partition_names(name, partitions)
        ]
        self._index = {q.name: i for i, q in enumerate(self.queues)}
        self._rr = random.randrange(partitions)
        self._workers: list[Worker] = []
        self._handlers: dict[tuple[str, int], list[Handler]] = {}
        self._stopped = asyncio.Event()

    # ------------------------------------------------------------------ ids and keys
    def partition_of(self, key: str) -> int:
        """The partition a key maps to (``crc32(key) % partitions``)."""
        return zlib.crc32(key.encode("utf-8")) % self.partitions

    def _next(self) -> int:
        self._rr = (self._rr + 1) % self.partitions
        return self._rr

    def _choose(self, opts: dict[str, Any], partition_key: str | None) -> int:
        job_id = opts.get("job_id")
        if isinstance(job_id, str) and _LOOKS_FULL.match(job_id):
            raise ConfigurationError(
                f"job_id {job_id[:100]!r} begins like a full id of partitioned queue "
                f"{self.name!r} ('<partition>:<id>'): choose an id that does not begin with "
                "digits and ':', so that it cannot be mistaken for another job's full id"
            )
        key = partition_key
        if key is None:
            for name in ("message_group_id", "idempotency_key", "job_id"):
                if opts.get(name):
                    key = str(opts[name])
                    break
        if key is None:
            return self._next()
        if not isinstance(key, str) or not key:
            raise ConfigurationError(f"partition_key must be a non-empty string, got {key!r}")
        return self.partition_of(key)

    def parse_id(self, job_id: str) -> tuple[int, str] | None:
        """``(partition, id within it)`` of a full id, or None when ``job_id`` is not a
        full id of this queue (see the class docstring for the format).

        Only the canonical form is read: ``"1:5"``, not ``"01:5"``, ``"+1:5"`` or
        ``"١:5"``; the partition must exist. No other reading is tried (a bare id is
        not hashed to a partition): an id chosen with a ``partition_key``, group or
        idempotency key lives elsewhere, and the guess could hit another job there.
        """
        match = _FULL_ID.fullmatch(job_id) if isinstance(job_id, str) else None
        if match is None or int(match.group(1)) >= self.partitions:
            return None
        return int(match.group(1)), match.group(2)

    def _locate(self, job_id: str) -> tuple[int, str]:
        """The partition and inner id of a full id, for calls that act on a job."""
        found = self.parse_id(job_id)
        if found is None:
            shown = repr(job_id[:100]) if isinstance(job_id, str) else type(job_id).__name__
            raise JobNotFoundError(
                f"{shown} is not a job id of partitioned queue {self.name!r}: use the full "
                f"id add_job returned, '<partition>:<id>' with a partition from 0 to "
                f"{self.partitions - 1}"
            )
        return found

    def _public(self, p: int, inner: str) -> str:
        return f"{p}:{inner}"

    def public_id(self, job: Job | JobInfo | EventData) -> str:
        """The full id (``"<partition>:<id>"``) of a job a processor or handler got."""
        if isinstance(job, EventData):
            inner, queue_name = job.job_id or "", job.queue
        elif isinstance(job, Job):
            inner, queue_name = job.id, job.queue_name
        else:
            return job.id
        p = self._index.get(queue_name)
        if p is None:
            raise ConfigurationError(f"queue {queue_name!r} is not a partition of {self.name!r}")
        return self._public(p, inner)

    def _info(self, p: int, info: JobInfo | None) -> JobInfo | None:
        return None if info is None else dataclasses.replace(info, id=self._public(p, info.id))

    # ------------------------------------------------------------------ registration
    def process(self, job_name: str, fn: Callable[..., Any] | None = None, **kwargs: Any) -> Any:
        """Register a processor on every partition (see ``JobQueue.process``)."""

        def register(f: Callable[..., Any]) -> Callable[..., Any]:
            for q in self.queues:
                q.process(job_name, f, **kwargs)
            return f

        return register(fn) if fn is not None else register

    def on(self, event: str, handler: Handler) -> None:
        """Call ``handler`` on ``event`` of any partition; ``job_id`` is the full id."""
        for p, q in enumerate(self.queues):

            def relay(data: EventData, p: int = p) -> Any:
                if data.job_id is not None:
                    data = dataclasses.replace(data, job_id=self._public(p, data.job_id))
                return handler(data)

            self._handlers.setdefault((str(event), id(handler)), []).append(relay)
            q.on(event, relay)

    def off(self, event: str, handler: Handler) -> None:
        relays = self._handlers.pop((str(event), id(handler)), [])
        for q, relay in zip(self.queues, relays, strict=False):
            q.off(event, relay)

    def use_enqueue(self, middleware: Any) -> None:
        for q in self.queues:
            q.use_enqueue(middleware)

    def use_process(self, middleware: Any) -> None:
        for q in self.queues:
            q.use_process(middleware)

    def register_backoff(self, name: str, fn: Callable[..., Any]) -> None:
        for q in self.queues:
            q.register_backoff(name, fn)

    # ------------------------------------------------------------------ producing
    async def add_job(
        self,
        job_name: str,
        data: Any = None,
        options: JobOptions | Mapping[str, Any] | None = None,
        *,
        partition_key: str | None = None,
        **kwargs: Any,
    ) -> str:
        """Add a job to one partition; returns ``"<partition>:<id>"``.

        ``partition_key`` pins related jobs to one partition (default: the job's
        ``message_group_id``, ``idempotency_key`` or ``job_id``; else round-robin).
        """
        opts = {**_as_dict(options), **kwargs}
        partition_key = opts.pop("partition_key", partition_key)
        p = self._choose(opts, partition_key)
        return self._public(p, await self.queues[p].add_job(job_name, data, opts))

    async def add_jobs(self, jobs: Iterable[Any]) -> list[str]:
        """Add many jobs: one batch per partition, all partitions in parallel.

        Items as for ``JobQueue.add_jobs``; an item's options may hold ``partition_key``.
        Returns the ids in input order.

        Raises:
            PartialEnqueueError: a partition's batch failed. ``written_ids`` are the full
                ids of the longest run of input jobs, from the first, known to be
                written; ``failed_from`` the input position of the first job not known to
                be written. Later jobs of *other* partitions may have been written too, so
                retry ``jobs[failed_from:]`` with ``job_id``s or idempotency keys (such a
                retry adds nothing twice).
        """
        groups: dict[int, list[tuple[int, tuple[str, Any, dict[str, Any]]]]] = {}
        n = 0
        for n, item in enumerate(jobs):
            name, data, opts = _item(n, item)
            p = self._choose(opts, opts.pop("partition_key", None))
            groups.setdefault(p, []).append((n, (name, data, opts)))
        out: list[str] = [""] * (n + 1 if groups else 0)

        async def one(p: int, items: list[tuple[int, tuple[str, Any, dict[str, Any]]]]) -> None:
            try:
                ids = await self.queues[p].add_jobs([job for _, job in items])
            except PartialEnqueueError as exc:
                # Positions and ids local to the partition: record what is known written.
                for (pos, _), inner in zip(items, exc.written_ids, strict=False):
                    out[pos] = self._public(p, inner)
                raise
            for (pos, _), inner in zip(items, ids, strict=True):
                out[pos] = self._public(p, inner)

        results = await asyncio.gather(
            *(one(p, items) for p, items in groups.items()), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            first = next((i for i, v in enumerate(out) if not v), len(out))
            cause = errors[0]
            if not isinstance(cause, Exception):
                raise cause  # cancellation and the like, as they are
            if first == 0 and not any(out):
                raise cause  # nothing is known written: the error as it is
            failure = PartialEnqueueError(
                f"add_jobs on {self.name!r}: jobs from position {first} are not known to be "
                f"written ({type(cause).__name__}: {cause}); retry them with job ids or "
                "idempotency keys",
                out[:first],
                first,
            )
            raise failure from cause
        return out

    # ------------------------------------------------------------------ queries
    async def get_job_status(self, job_id: str) -> JobInfo | None:
        """The job with full id ``job_id``; None if there is none (or it is not a full
        id: no other reading of it is tried)."""
        found = self.parse_id(job_id)
        if found is None:
            return None
        p, inner = found
        return self._info(p, await self.queues[p].get_job_status(inner))

    async def get_job_logs(self, job_id: str, start: int = 0, end: int = -1) -> list[str]:
        """Log lines of the job with full id ``job_id`` (none for an id that is not one)."""
        found = self.parse_id(job_id)
        if found is None:
            return []
        p, inner = found
        return await self.queues[p].get_job_logs(inner, start, end)

    async def get_jobs_by_status(self, status: JobStatus | str, limit: int = 100) -> list[JobInfo]:
        """Jobs in a state over all partitions, merged: finished ones newest first,
        waiting ones by priority then age, delayed ones by due time, active by start."""
        st = JobStatus(status)
        lists = await asyncio.gather(*(q.get_jobs_by_status(st, limit) for q in self.queues))
        merged = [
            info for p, infos in enumerate(lists) for i in infos
            if (info := self._info(p, i)) is not None
        ]

        def order(i: JobInfo) -> tuple[int, int]:
            if st in _FINISHED:
                return (0, -(i.finished_at or 0))
            if st is JobStatus.DELAYED:
                return (0, i.delayed_until or 0)
            if st is JobStatus.ACTIVE:
                return (0, i.started_at or 0)
            return (-i.priority, i.created_at or 0)

        merged.sort(key=order)
        return merged[:limit]

    async def get_dlq_jobs(self, limit: int = 100) -> list[JobInfo]:
        return await self.get_jobs_by_status(JobStatus.DLQ, limit)

    async def get_stats(self) -> QueueStats:
        """Counts summed over the partitions; ``is_paused`` when every partition is
        paused; ``latency_ms`` the largest of the partitions'."""
        parts = await asyncio.gather(*(q.get_stats() for q in self.queues))
        return QueueStats(
            waiting=sum(s.waiting for s in parts),
            active=sum(s.active for s in parts),
            delayed=sum(s.delayed for s in parts),
            completed=sum(s.completed for s in parts),
            failed=sum(s.failed for s in parts),
            dlq=sum(s.dlq for s in parts),
            paused=sum(s.paused for s in parts),
            is_paused=all(s.is_paused for s in parts),
            latency_ms=max(s.latency_ms for s in parts),
        )

    async def partition_stats(self) -> list[QueueStats]:
        """Stats of each partition, in partition order (to spot a hot partition)."""
        return list(await asyncio.gather(*(q.get_stats() for q in self.queues)))

    async def health_check(self) -> HealthStatus:
        parts = await asyncio.gather(*(q.health_check() for q in self.queues))
        bad = [h for h in parts if not h.healthy]
        lat = [h.redis_latency_ms for h in parts if h.redis_latency_ms is not None]
        return HealthStatus(
            healthy=not bad,
            redis_latency_ms=max(lat) if lat else None,
            backend=self.connection.describe(),
            error=bad[0].error if bad else None,
            worker_running=any(w.running for w in self._workers),
        )

    async def events(
        self, *, last_id: str = "$", block_ms: int = 5000, follow: bool = True
    ) -> AsyncIterator[StreamEvent]:
        """Iterate the durable event streams of every partition, merged.

        Each partition has its own stream (under its own hash tag, so on a cluster the
        streams live on different nodes); one reader per partition feeds this iterator.
        Events of one partition keep their order; events of different partitions
        interleave as they arrive. ``job_id`` is the full id (``"<partition>:<id>"``)
        and ``fields["partition"]`` the partition number; ``id`` is the entry id within
        that partition's stream.

        ``last_id`` applies to every partition: ``"$"`` (only new events) or ``"0"``
        (replay what every stream still holds). ``follow=False`` stops once every
        partition went ``block_ms`` without an event. A reader that fails (Redis
        unreachable) ends the iteration with its error.
        """
        if last_id not in ("$", "0"):
            raise ConfigurationError(
                f"last_id of a partitioned queue must be '$' or '0', got {last_id!r}; entry "
                "ids are per partition (read one partition with queue.queues[p].events())"
            )
        inbox: asyncio.Queue[tuple[int, StreamEvent | Exception | None]] = asyncio.Queue(
            maxsize=1000
        )

        async def read(p: int) -> None:
            try:
                async for ev in self.queues[p].events(
                    last_id=last_id, block_ms=block_ms, follow=follow
                ):
                    await inbox.put((p, ev))
            except Exception as exc:  # handed to the consumer, raised there
                await inbox.put((p, exc))
                return
            await inbox.put((p, None))

        readers = [asyncio.ensure_future(read(p)) for p in range(self.partitions)]
        try:
            open_ = self.partitions
            while open_:
                p, item = await inbox.get()
                if item is None:
                    open_ -= 1
                elif isinstance(item, Exception):
                    raise item
                else:
                    yield StreamEvent(
                        item.id,
                        item.event,
                        self._public(p, item.job_id) if item.job_id else "",
                        {**item.fields, "partition": str(p)},
                    )
        finally:
            for r in readers:
                r.cancel()
            await asyncio.gather(*readers, return_exceptions=True)

    # ------------------------------------------------------------------ management
    async def _each(self, method: str, *args: Any) -> list[Any]:
        return list(await asyncio.gather(*(getattr(q, method)(*args) for q in self.queues)))

    async def pause(self) -> None:
        await self._each("pause")

    async def resume(self) -> None:
        await self._each("resume")

    async def drain(self, *, delayed: bool = True) -> int:
        return sum(await asyncio.gather(*(q.drain(delayed=delayed) for q in self.queues)))

    async def clear(self, *, force: bool = False) -> None:
        await asyncio.gather(*(q.clear(force=force) for q in self.queues))

    async def promote_delayed(self, limit: int = 1000) -> int:
        return sum(await self._each("promote_delayed", limit))

    # The three below take a full id only; anything else raises JobNotFoundError.
    async def retry_job(self, job_id: str) -> None:
        p, inner = self._locate(job_id)
        await self.queues[p].retry_job(inner)

    async def remove_job(self, job_id: str) -> bool:
        p, inner = self._locate(job_id)
        return await self.queues[p].remove_job(inner)

    async def cancel_job(self, job_id: str) -> str:
        p, inner = self._locate(job_id)
        return await self.queues[p].cancel_job(inner)

    async def bulk_retry(
        self, status: JobStatus | str = JobStatus.FAILED, limit: int = 1000
    ) -> int:
        moved = 0
        for q in self.queues:
            if moved >= limit:
                break
            moved += await q.bulk_retry(status, limit - moved)
        return moved

    async def replay_dlq(self, limit: int = 1000) -> int:
        moved = 0
        for q in self.queues:
            if moved >= limit:
                break
            moved += await q.replay_dlq(limit - moved)
        return moved

    # ------------------------------------------------------------------ workers
    @property
    def workers(self) -> list[Worker]:
        """The running per-partition workers of this process."""
        return list(self._workers)

    async def start(self, *, concurrency: int | None = None) -> None:
        """Consume every partition in this process with one budget of ``concurrency``
        slots (default: ``worker.concurrency``). Returns once the workers run."""
        if any(w.running for w in self._workers):
            return
        total = int(concurrency or self.queues[0].worker_config.concurrency)
        if total < 1:
            raise ConfigurationError(f"concurrency must be >= 1, got {total}")
        slots = SharedSlots(total)
        workers = [Worker(q, concurrency=total, slots=slots) for q in self.queues]
        self._stopped = asyncio.Event()
        started: list[Worker] = []
        try:
            for w in workers:
                await w.start()
                started.append(w)
        except BaseException:
            await asyncio.gather(*(w.stop(0) for w in started), return_exceptions=True)
            raise
        self._workers = workers

    async def run_worker(
        self, *, concurrency: int | None = None, install_signal_handlers: bool = True
    ) -> None:
        """Run until SIGTERM/SIGINT (or ``close()``), then stop gracefully."""
        await self.start(concurrency=concurrency)
        await serve_until_stopped(
            self._stopped, self.close, install_signal_handlers=install_signal_handlers
        )

    async def stop(self, timeout_ms: int | None = None) -> None:
        """Stop this process's workers gracefully (see ``Worker.stop``)."""
        workers, self._workers = self._workers, []
        await asyncio.gather(*(w.stop(timeout_ms) for w in workers))
        self._stopped.set()

    async def close(self) -> None:
        """Stop the workers and release every connection."""
        await self.stop()
        for q in self.queues:
            await q.close()
        shared, self._shared = self._shared, None
        if shared is not None and self.connection.owns(shared):
            await shared.aclose()

    async def __aenter__(self) -> PartitionedQueue:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _as_dict(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, JobOptions):
        return {
            f.name: getattr(value, f.name)
            for f in dataclasses.fields(value)
            if getattr(value, f.name) is not None
        }
    if isinstance(value, Mapping):
        return dict(value)
    raise ConfigurationError(f"options must be a dict or JobOptions, got {type(value).__name__}")


def _item(i: int, j: Any) -> tuple[str, Any, dict[str, Any]]:
    if isinstance(j, Mapping):
        extra = [k for k in j if k not in ("name", "data", "options", "opts")]
        if extra:
            raise ConfigurationError(
                f"add_jobs item {i}: unknown key(s) {extra}; use name, data, options"
            )
        return str(j.get("name") or ""), j.get("data"), _as_dict(j.get("options", j.get("opts")))
    if isinstance(j, (tuple, list)) and len(j) in (2, 3):
        return str(j[0] or ""), j[1], _as_dict(j[2]) if len(j) == 3 else {}
    raise ConfigurationError(f"add_jobs item {i} must be a dict or a (name, data[, options]) tuple")
