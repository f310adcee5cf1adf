"""``PartitionedQueue``: one logical queue spread over N physical queues, each with its
own hash tag, so the shards of a Redis Cluster share one busy queue."""

from __future__ import annotations

import asyncio
import functools
import random
import re
import zlib
from collections.abc import Callable, Sequence
from typing import Any

from .. import lifecycle
from ..api import OPERATIONS, Route
from ..connection import ConnectionFactory
from ..errors import ConfigurationError, JobNotFoundError
from ..events import EventData
from ..facade import MultiQueue
from ..job import Job, JobInfo
from ..keys import MAX_KEY_PART, check_key_part
from ..limits import get_logger
from ..options import MAX_CONCURRENCY, to_int
from ..pools import drop_connections
from ..queue import HealthStatus, JobQueue, QueueStats
from ..scripts import ScriptRegistry
from ..worker import SharedSlots, Worker
from .partitioncount import MAX_PARTITIONS, RECORD_LUA, RECORD_SCRIPT, CountRecord, partition_names

__all__ = ["PartitionedQueue", "partition_names"]

log = get_logger(__name__)

# A full id: the partition as a canonical decimal (ASCII digits, no sign, no leading
# zero, at most 4 digits since partitions <= 1024), the FIRST ':', then the job's id in
# that partition, taken verbatim (it may hold ':' itself).
_FULL_ID = re.compile(r"(0|[1-9][0-9]{0,3}):(.+)", re.DOTALL)
# A chosen job_id that begins like a full id ("1:inv-4"): refused, so that a string that
# parses as a full id can only ever mean one job.
_LOOKS_FULL = re.compile(r"[0-9]+:")


def shown_id(value: Any) -> str:
    """A job id (or what was given as one) for a message: quoted, cut to 100 characters."""
    return repr(value[:100]) if isinstance(value, str) else type(value).__name__


class PartitionedQueue(MultiQueue[JobQueue]):
    """A logical queue made of ``partitions`` ``JobQueue``\\ s (``orders#0``, ...).

    Producers spread jobs over the partitions: round-robin, or by a stable key so that
    related jobs share a partition: ``partition_key=...`` if given, else the job's
    ``message_group_id``, ``idempotency_key`` or ``job_id`` (``crc32(key) % partitions``).
    Duplicates are therefore caught (an idempotency key lands on the same partition
    whenever nothing pins the job elsewhere), and jobs with the same ``message_group_id``
    go to the same partition (so whatever ordering a group gets within one queue, it
    gets here too). Options a feature declared with a placement pin a job as well: a
    workflow's steps go to the partition of its ``workflow_id``, and a job with
    ``depends_on`` to the partition of the jobs it names (see ``place``).

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

    Ordering: FIFO (within a priority) holds **within a partition** only;
    jobs of different partitions run in no particular order relative to each other.
    The count is recorded in Redis at first use (``CountRecord``): another count is
    refused while the recorded one's partitions hold jobs or a process uses it (a key
    maps to another partition, and those partitions are other queues); once they are
    empty and unused, the new count is recorded. Stats and lists aggregate over all
    partitions; pause, resume and drain apply to each partition in turn (not atomically).

    Every method of the queue API is generated from ``api.QueueAPI`` by ``MultiQueue``
    (each docstring says how it is carried out over the partitions); this class adds the
    partitions' names, the id format, placement and one worker budget.

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

    member_label = "partition"
    member_key = "partition_key"

    def __init__(
        self, name: str, *, partitions: int, redis: Any = "memory://", **options: Any
    ) -> None:
        if (
            not isinstance(partitions, int)
            or isinstance(partitions, bool)
            or not (1 <= partitions <= MAX_PARTITIONS)
        ):
            raise ConfigurationError(
                f"partitions must be an int from 1 to {MAX_PARTITIONS}, got {partitions!r}"
            )
        if "name" in options:
            raise ConfigurationError("pass the queue name as the first argument")
        # Before partition_names, which encodes it: refused names fail here, clearly.
        check_key_part(name, "queue name", max_len=MAX_KEY_PART - 50)
        self.partitions = partitions
        self.connection = ConnectionFactory(redis)
        # One client for every partition (a cluster client discovers the topology once).
        self._shared: Any = None if self.connection.is_memory else self.connection.client()
        backend = redis if self._shared is None else self._shared
        super().__init__(
            name,
            [JobQueue(n, redis=backend, **options) for n in partition_names(name, partitions)],
        )
        self._index = {q.name: i for i, q in enumerate(self.queues)}
        self._rr = random.randrange(partitions)
        self._workers: list[Worker] = []
        #: The event loop of the last connection (the shared client's connections'):
        #: ``close()`` awaited in another releases them without awaiting there.
        self._loop: asyncio.AbstractEventLoop | None = None
        for q in self.queues:  # its script through each partition's registry (EVALSHA)
            q.scripts.add_fragment(RECORD_SCRIPT, RECORD_LUA)
        self.count_record = CountRecord(
            name, partitions, self.queues[0].keys.prefix, scripts=self.queues[0].scripts,
            spare=functools.partial(self.connection.client, blocking=True),
        )  # fmt: skip
        for q in self.queues:
            self._check_at_connect(q)

    def _check_at_connect(self, q: JobQueue) -> None:
        """Every new connection of partition ``q`` (producer, worker, query, blocking
        client) checks the recorded count before use (the context's ``connect_checks``:
        a refusal is raised as the connect's own errors are, the client discarded)."""

        async def check(client: Any, scripts: ScriptRegistry = q.scripts) -> None:
            self._loop = asyncio.get_running_loop()
            await self.count_record.check(client, scripts)

        q.ctx.connect_checks.append(check)

    # ------------------------------------------------------------------ ids and keys
    def partition_of(self, key: str) -> int:
        """The partition a key maps to (``crc32(key) % partitions``)."""
        # surrogatepass: a key that is not valid text still maps (the same as strict UTF-8
        # for any valid one); the option's own check then refuses it with a clear error.
        return zlib.crc32(key.encode("utf-8", "surrogatepass")) % self.partitions

    def place(self, options: dict[str, Any]) -> int:
        """The partition of a new job: by ``partition_key`` (taken out of ``options``) or
        its ``message_group_id``; by the options a feature declared with a placement
        (``OptionSpec.placement``: a workflow's id, the full ids of the jobs it depends
        on, which are passed on as ids within that partition); else its
        ``idempotency_key`` or ``job_id``; else the next one round-robin. Pins that
        disagree, and a ``job_id`` that begins like a full id, are refused; so are all
        new jobs once the recorded partition count changed under this process."""
        if self.count_record.moved is not None:
            raise ConfigurationError(self.count_record.moved)
        job_id = options.get("job_id")
        if isinstance(job_id, str) and _LOOKS_FULL.match(job_id):
            raise ConfigurationError(
                f"job_id {job_id[:100]!r} begins like a full id of partitioned queue "
                f"{self.name!r} ('<partition>:<id>'): choose an id that does not begin with "
                "digits and ':', so that it cannot be mistaken for another job's full id"
            )
        key = options.pop("partition_key", None)
        group = options.get("message_group_id")
        if key is not None and group is not None and key != group:
            raise ConfigurationError(
                f"a job of message group {str(group)[:100]!r} goes to its group's partition; "
                "give message_group_id or partition_key, not both (a group's jobs must "
                "share one partition to keep their order)"
            )
        pins: list[tuple[str, int]] = []
        if key is not None:
            if not isinstance(key, str) or not key:
                raise ConfigurationError(f"partition_key must be a non-empty string, got {key!r}")
            pins.append((f"partition_key {key[:100]!r}", self.partition_of(key)))
        elif group:
            pins.append((f"message_group_id {str(group)[:100]!r}", self.partition_of(str(group))))
        pins += self._declared_pins(options)
        for what, p in pins[1:]:
            if p != pins[0][1]:
                raise ConfigurationError(
                    f"{pins[0][0]} places the job on partition {pins[0][1]} but {what} on "
                    f"partition {p}: related jobs must share one partition (add them with "
                    "the same partition_key, or as steps of one workflow)"
                )
        if pins:
            return pins[0][1]
        for name in ("idempotency_key", "job_id"):
            if options.get(name):
                return self.partition_of(str(options[name]))
        self._rr = (self._rr + 1) % self.partitions
        return self._rr

    def _declared_pins(self, options: dict[str, Any]) -> list[tuple[str, int]]:
        """Partitions the options with a declared placement name (rewriting full ids of
        ``job_ids`` options into ids within the partition)."""
        pins: list[tuple[str, int]] = []
        spec = self.queues[0].jobspec
        for name, kind in spec.placements():
            value = options.get(name)
            if value is None:
                continue
            # The option's own check first: what is placed by it is valid.
            option = spec.get(name)
            if option is not None:
                option.normalize(value, "job")
            if kind == "key":
                if isinstance(value, str):
                    pins.append((f"{name} {value[:100]!r}", self.partition_of(value)))
                continue
            if not isinstance(value, (list, tuple)):
                continue
            found: dict[int, list[str]] = {}
            inner: list[Any] = []
            for item in value:
                parsed = self.parse_id(item) if isinstance(item, str) else None
                if parsed is None:
                    raise ConfigurationError(
                        f"{name}: {shown_id(item)} is not a job id of partitioned queue "
                        f"{self.name!r}: use the full ids add_job returned ('<partition>:<id>')"
                    )
                found.setdefault(parsed[0], []).append(item)
                inner.append(parsed[1])
            if len(found) > 1:
                where = ", ".join(f"{p} ({found[p][0][:60]!r})" for p in sorted(found))
                raise ConfigurationError(
                    f"{name} lists jobs on partitions {where}: the jobs a job names in "
                    f"{name} must share one partition (add them with the same "
                    "partition_key, or as steps of one workflow)"
                )
            if found:
                options[name] = inner
                pins.append((name, next(iter(found))))
        return pins

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

    def full_id(self, index: int, inner: str) -> str:
        """``"<partition>:<id>"``."""
        return f"{index}:{inner}"

    def not_found(self, job_id: Any) -> JobNotFoundError:
        return JobNotFoundError(
            f"{shown_id(job_id)} is not a job id of partitioned queue {self.name!r}: use the full "
            f"id add_job returned, '<partition>:<id>' with a partition from 0 to "
            f"{self.partitions - 1}"
        )

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
        return self.full_id(p, inner)

    # ------------------------------------------------------------------ queries
    async def partition_stats(self) -> list[QueueStats]:
        """Stats of each partition, in partition order (to spot a hot partition)."""
        return list(await asyncio.gather(*(q.get_stats() for q in self.queues)))

    def describe_backend(self, parts: Sequence[HealthStatus]) -> str:
        return self.connection.describe()

    def is_worker_running(self) -> bool:
        return any(w.running for w in self._workers)

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
        # The check of a JobQueue's worker: 0, negative, bool, float or text is refused.
        total = (
            self.queues[0].worker_config.concurrency
            if concurrency is None
            else to_int(concurrency, "concurrency", minimum=1, maximum=MAX_CONCURRENCY)
        )
        slots = SharedSlots(total)
        workers = [Worker(q, concurrency=total, slots=slots) for q in self.queues]
        self.stopped.clear()
        started: list[Worker] = []
        try:
            for w in workers:
                await w.start()
                started.append(w)
        except BaseException:
            await asyncio.gather(*(w.stop(0) for w in started), return_exceptions=True)
            raise
        self._workers = workers

    async def stop(self, timeout_ms: int | None = None) -> None:
        """Stop this process's workers gracefully (see ``Worker.stop``)."""
        workers, self._workers = self._workers, []
        await asyncio.gather(*(w.stop(timeout_ms) for w in workers))
        self.stopped.set()

    async def close(self) -> None:
        """Stop the workers and release every connection. Awaited in another event
        loop than the queue's, as ``JobQueue.close``: running workers are stopped in
        their own loop if it runs (in another thread), forgotten if it ended; the
        connections of an ended or idle loop are closed without it, those of a loop
        running elsewhere are closed there; the process's entry in the count record is
        withdrawn in any case."""
        here = asyncio.get_running_loop()
        owner = next((w.runner.loop for w in self._workers if w.running), None)
        if owner is not None and owner is not here:
            if await lifecycle.closed_in(owner, self.close, f"partitioned queue {self.name!r}"):
                return
            self._forget_workers()
        await self.stop()
        await self.count_record.release()
        for q in self.queues:
            await q.close()
        shared, loop = self._shared, self._loop
        if shared is None or not self.connection.owns(shared):
            return
        if loop is None or loop is here:
            await shared.aclose()
        elif loop.is_running():  # another thread's: closed there
            closing = asyncio.run_coroutine_threadsafe(shared.aclose(), loop)
            try:
                await asyncio.wait_for(asyncio.wrap_future(closing), 5)
            except Exception as exc:
                log.debug("partitioned queue %s: closing in its loop failed: %s", self.name, exc)
        else:  # that loop ended (or is idle): its sockets closed without it
            drop_connections(shared)

    def _forget_workers(self) -> None:
        """The workers of an ended loop (``close()`` from another, as ``JobQueue``'s)."""
        workers, self._workers = self._workers, []
        for w in workers:
            if w.running:
                w.running = False
                w.queue.lifecycle.running.discard(w)
                lifecycle.STOPPING.discard(w)
        log.warning(
            "partitioned queue %s: its workers were left running when their event loop "
            "ended (close() was not awaited in that loop); forgotten now: the jobs they "
            "held stay leased and run again once their leases expire",
            self.name,
        )


def _checked_first(method: Callable[..., Any]) -> Callable[..., Any]:
    """A by-id method that checks the recorded count first: an id whose partition this
    count lacks is then refused with the layout, not answered as unknown unchecked."""

    @functools.wraps(method)
    async def run(self: PartitionedQueue, *args: Any, **kwargs: Any) -> Any:
        if not self.count_record.checked:
            await self.queues[0].client()
        return await method(self, *args, **kwargs)

    return run


def _confirmed_first(method: Callable[..., Any]) -> Callable[..., Any]:
    """An add that first makes sure this process is still counted with the recorded
    count: no Redis call while it was confirmed lately (the refresh's), else one
    (``CountRecord.confirm``): a process paused past the stale bound while another
    count was recorded is refused before it writes."""

    @functools.wraps(method)
    async def run(self: PartitionedQueue, *args: Any, **kwargs: Any) -> Any:
        if not self.count_record.current():
            await self.count_record.confirm()
        return await method(self, *args, **kwargs)

    return run


for _op in OPERATIONS.values():
    if _op.route is Route.BY_ID:
        setattr(PartitionedQueue, _op.name, _checked_first(getattr(PartitionedQueue, _op.name)))
    elif _op.route in (Route.BY_KEY, Route.SPLIT_BY_KEY):
        setattr(PartitionedQueue, _op.name, _confirmed_first(getattr(PartitionedQueue, _op.name)))
