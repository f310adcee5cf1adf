"""``PartitionedQueue``: one logical queue spread over N physical queues, each with its
own hash tag, so the shards of a Redis Cluster share one busy queue."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import re
import uuid
import weakref
import zlib
from collections.abc import Callable, Sequence
from typing import Any

from redis.crc import key_slot
from redis.exceptions import ResponseError

from ..api import OPERATIONS, Route
from ..connection import ConnectionFactory
from ..connerrors import refused
from ..errors import ConfigurationError, JobNotFoundError, PermissionDeniedError
from ..events import EventData
from ..facade import MultiQueue
from ..job import Job, JobInfo
from ..keys import MAX_KEY_PART, QueueKeys, check_key_part
from ..limits import clip, get_logger
from ..options import MAX_CONCURRENCY, to_int
from ..queue import HealthStatus, JobQueue, QueueStats
from ..worker import SharedSlots, Worker

__all__ = ["PartitionedQueue"]

log = get_logger(__name__)

_SLOTS = 16384
_MAX_PARTITIONS = 1024
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


# ---------------------------------------------------------------------- the recorded count
#: The placement scheme recorded with the count: keys map by ``crc32(key) % N`` and the
#: partitions are named by ``partition_names``. Another scheme is another layout.
SCHEME = "crc32-slot-ranges/1"
_REFRESH_S = 10.0  # how often a process that uses the count says so
_STALE_MS = 30_000  # a process not heard of for this long no longer counts as using it
_CANONICAL = re.compile(r"[1-9][0-9]{0,3}")

# One call: the record (a hash: partitions, scheme) and the processes using it (a sorted
# set: token -> when last seen, server time), both under the hash tag ``{<name>#}``.
# ARGV: count, scheme, token, stale ms, mode ('use' | 'take'), and for 'take' the count
# and scheme it replaces. Returns {'same'} | {'new'} | {'taken', old n, old scheme}
# | {'other', n, scheme, users} | {'damaged', key, type}. Every check before the first write.
_RECORD_LUA = """
local rec, users = KEYS[1], KEYS[2]
for i, want in ipairs({'hash', 'zset'}) do
  local t = redis.call('TYPE', KEYS[i])['ok']
  if t ~= 'none' and t ~= want then return {'damaged', KEYS[i], t} end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', users, '-inf', now - tonumber(ARGV[4]))
local cur = redis.call('HMGET', rec, 'partitions', 'scheme')
if cur[1] == ARGV[1] and cur[2] == ARGV[2] then
  redis.call('ZADD', users, now, ARGV[3])
  return {'same'}
end
local live = redis.call('ZCARD', users)
if cur[1] and not (ARGV[5] == 'take' and cur[1] == ARGV[6] and cur[2] == ARGV[7]
                   and live == 0) then
  return {'other', cur[1], cur[2] or '', live}
end
redis.call('HSET', rec, 'partitions', ARGV[1], 'scheme', ARGV[2])
redis.call('ZADD', users, now, ARGV[3])
if cur[1] then return {'taken', cur[1], cur[2] or ''} end
return {'new'}
"""


class CountRecord:
    """The partition count of one logical queue, recorded in Redis at its first use
    (``<prefix>:{<name>#}:partitions``, with the processes using it in
    ``...:partitions:users``), so that a process opening it with another count cannot
    lose sight of the jobs the recorded count still holds (docs/scale-out.md)."""

    def __init__(self, name: str, partitions: int, prefix: str) -> None:
        self.name, self.partitions = name, partitions
        base = f"{prefix}:{{{name}#}}:"
        self.key, self.users_key = base + "partitions", base + "partitions:users"
        self.prefix = prefix
        self._token = ""  # this registration's (made at each check: forked processes differ)
        self._lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        self._client: Any = None  # the client of the last check, None: not checked
        self._refresher: asyncio.Task[None] | None = None
        #: Set when the record changed under this process: new jobs are refused.
        self.moved: str | None = None

    @property
    def checked(self) -> bool:
        """Whether a connection of this process checked the count (until ``release``)."""
        return self._client is not None

    async def _call(
        self, client: Any, mode: str = "use", old: Sequence[str] = ("", "")
    ) -> list[str]:
        answer = await client.eval(
            _RECORD_LUA, 2, self.key, self.users_key, str(self.partitions), SCHEME,
            self._token, str(_STALE_MS), mode, *old,
        )  # fmt: skip
        return [a.decode("utf-8", "replace") if isinstance(a, bytes) else str(a) for a in answer]

    async def check(self, client: Any) -> None:
        """Record the count, or check it against the recorded one (once per connection
        of the queue; ``ConfigurationError`` if another count is in use)."""
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock[0] is not loop:  # a lock serves one loop
            self._lock = (loop, asyncio.Lock())
        async with self._lock[1]:
            if self._client is not None:
                return
            self._token = uuid.uuid4().hex
            try:
                await self._settle(client)
            except ResponseError as exc:
                if not refused(exc):
                    raise
                raise PermissionDeniedError(
                    f"Redis refused the check of the partition count of {self.name!r} "
                    f"({clip(str(exc), 200)}): its user needs the key pattern "
                    f"~{self.prefix}:{{{self.name}#* (every partition count and the record "
                    f"of the count), or ~{self.prefix}:{{{self.name}#}}:* besides the "
                    "partitions' own (docs/scale-out.md)"
                ) from None
            self._client, self.moved = client, None
            self._refresher = loop.create_task(_refresh(weakref.ref(self)))

    async def _settle(self, client: Any) -> None:
        answer = await self._call(client)
        for _ in range(3):
            if answer[0] == "damaged":
                raise ConfigurationError(
                    f"the partition count record of {self.name!r} is damaged: key "
                    f"{clip(answer[1], 300)} holds a {clip(answer[2], 20)}; check it and delete it"
                )
            if answer[0] == "same":
                return
            if answer[0] in ("new", "taken"):
                was = f" (it was {clip(answer[1], 10)})" if answer[0] == "taken" else ""
                log.info(
                    "partitioned queue %s: partition count %d recorded%s",
                    self.name, self.partitions, was,
                )  # fmt: skip
                return
            old_n, old_scheme, live = answer[1], answer[2], int(answer[3])
            held = await self._held(client, old_n, old_scheme)
            if held or live:
                raise ConfigurationError(self._refusal(old_n, held, live))
            answer = await self._call(client, "take", (old_n, old_scheme))
        raise ConfigurationError(
            f"partitioned queue {self.name!r}: the recorded partition count kept changing "
            "while this process checked it; start it again"
        )

    async def _held(self, client: Any, old_n: str, old_scheme: str) -> dict[str, int]:
        """The jobs the layout of ``old_n`` partitions holds, per state (none at 0)."""
        if old_scheme != SCHEME or not _CANONICAL.fullmatch(old_n) or int(old_n) > _MAX_PARTITIONS:
            raise ConfigurationError(
                f"partitioned queue {self.name!r} is recorded with partitions="
                f"{clip(repr(old_n), 20)} and placement {clip(repr(old_scheme), 60)}, which "
                f"this release cannot read; if no job is left in that layout, delete key "
                f"{self.key} and start again"
            )
        pipe = client.pipeline(transaction=False)
        for name in partition_names(self.name, int(old_n)):
            k = QueueKeys(name, self.prefix)
            for key in (k.wait, k.active, k.delayed, k.failed, k.dlq):
                pipe.zcard(key)
            pipe.hget(k.meta, "parked")
        held = dict.fromkeys(("waiting", "active", "delayed", "failed", "dlq", "parked"), 0)
        for i, reply in enumerate(await pipe.execute()):
            with contextlib.suppress(TypeError, ValueError):  # a damaged parked counter
                held[list(held)[i % 6]] += max(0, int(reply or 0))
        return {s: n for s, n in held.items() if n}

    def _refusal(self, old_n: str, held: dict[str, int], live: int) -> str:
        head = (
            f"partitioned queue {self.name!r} is recorded in Redis with {old_n} partitions "
            f"and this process opened it with partitions={self.partitions}: the partitions "
            "of another count are other queues, "
        )
        tail = (
            f"start with partitions={self.partitions} again then: the new count is "
            "recorded once the old layout holds no job and no process uses it "
            "(docs/scale-out.md, changing the partition count)"
        )
        if held:
            total = sum(held.values())
            what = ", ".join(f"{n} {s}" for s, n in held.items())
            return (
                f"{head}so the {total} job(s) that layout still holds ({what}) would be "
                f"neither counted, found nor run. Keep PartitionedQueue({self.name!r}, "
                f"partitions={old_n}) running until they are done (retry or remove its "
                f"failed and dead-lettered jobs), stop its processes, and {tail}"
            )
        return (
            f"{head}and {live} process(es) using {old_n} partitions are live (heard of "
            f"within {_STALE_MS // 1000} s): jobs they add would not be seen. Stop them "
            f"(close(); a process killed is forgotten {_STALE_MS // 1000} s after it was "
            f"last heard of), and {tail}"
        )

    async def _refreshed(self) -> bool:
        """Say this process still uses the count; False once another took over (``moved``)."""
        try:
            answer = await self._call(self._client)
        except Exception as exc:  # Redis away: the next turn tries again
            log.debug("partitioned queue %s: count refresh failed: %s", self.name, exc)
            answer = ["same"]
        if answer[0] in ("other", "damaged"):
            self.moved = (
                f"partitioned queue {self.name!r}: the partition count recorded in Redis "
                f"is no longer {self.partitions} (this process was not heard of for "
                f"{_STALE_MS // 1000} s and another count took over): new jobs are "
                "refused; restart it with the recorded count"
            )
            log.error("%s", self.moved)
        return self.moved is None

    async def release(self) -> None:
        """Stop saying this process uses the count (``close``); from another loop than the
        check's, stop its refresh there (the entry is forgotten after ``_STALE_MS``)."""
        task, self._refresher = self._refresher, None
        client, self._client = self._client, None
        if task is not None and (loop := task.get_loop()) is not asyncio.get_running_loop():
            with contextlib.suppress(RuntimeError):  # that loop is closed
                loop.call_soon_threadsafe(task.cancel)
            return
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if client is not None:
            try:
                await asyncio.wait_for(client.zrem(self.users_key, self._token), 5)
            except Exception as exc:  # forgotten after _STALE_MS all the same
                log.debug("partitioned queue %s: count release failed: %s", self.name, exc)


async def _refresh(ref: weakref.ref[CountRecord]) -> None:
    """Refresh every ``_REFRESH_S`` while the record lives (an unclosed queue is freed)."""
    while True:
        await asyncio.sleep(_REFRESH_S)
        record = ref()
        if record is None or not await record._refreshed():
            return
        del record


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
            or not (1 <= partitions <= _MAX_PARTITIONS)
        ):
            raise ConfigurationError(
                f"partitions must be an int from 1 to {_MAX_PARTITIONS}, got {partitions!r}"
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
        self.count_record = CountRecord(name, partitions, self.queues[0].keys.prefix)
        for q in self.queues:
            self._check_at_connect(q)

    def _check_at_connect(self, q: JobQueue) -> None:
        """Every new connection of partition ``q`` (producer, worker, query, blocking
        client) checks the recorded count before use (the context's ``connect_checks``:
        a refusal is raised as the connect's own errors are, the client discarded)."""
        q.ctx.connect_checks.append(self.count_record.check)

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
        """Stop the workers and release every connection."""
        await self.stop()
        await self.count_record.release()
        for q in self.queues:
            await q.close()
        shared, self._shared = self._shared, None
        if shared is not None and self.connection.owns(shared):
            await shared.aclose()


def _checked_first(method: Callable[..., Any]) -> Callable[..., Any]:
    """A by-id method that checks the recorded count first: an id whose partition this
    count lacks is then refused with the layout, not answered as unknown unchecked."""

    @functools.wraps(method)
    async def run(self: PartitionedQueue, *args: Any, **kwargs: Any) -> Any:
        if not self.count_record.checked:
            await self.queues[0].client()
        return await method(self, *args, **kwargs)

    return run


for _op in OPERATIONS.values():
    if _op.route is Route.BY_ID:
        setattr(PartitionedQueue, _op.name, _checked_first(getattr(PartitionedQueue, _op.name)))
