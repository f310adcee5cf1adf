"""Effectively-once processing: ``IdempotencyManager`` and the idempotency windows.

``IdempotencyManager(queue)`` (in every process of the queue, like ``process``) enables:

* ``delivery_guarantee="exactly-once"`` on a job (or on every job: ``exactly_once=True``):
  the job needs an idempotency key — given, or derived from its name and data — and once
  it completed, its encoded result is kept under the key for as long as the key lives,
  whatever count- or age-based retention does to the job. A repeated ``add_job`` with
  the key returns the first job's id without running anything, and
  ``get_result(job_id_or_key)`` returns the stored result.
* the window of a key (``idempotency_window``, per job or as the manager's default):
  ``"ttl"`` (the queue's ``idempotency_ttl`` from the first add), ``"until_finished"``
  (duplicates are suppressed while the job is unfinished; the key is freed when it
  completes, fails for good or is removed) or ``"debounce"`` (a repeated key replaces the
  data of the job that has not started yet and pushes its start back by the new delay;
  once it started, the repeated key adds a new job).
* ``record_execution`` / ``get_execution_result`` for processors that touch other
  systems: remember that a side effect was done, under the job's stable key.
* ``conflicts="raise"`` (or the job option ``idempotency_conflict``): a key or chosen
  ``job_id`` reused with different data raises ``IdempotencyConflictError`` instead of
  returning the existing id (``conflicts.py``).

What is guaranteed and what is not: ``docs/effectively-once.md``. In short: a worker
killed after its side effect and before the outcome is recorded runs the job again,
with the same ``job.idempotency_key`` — exactly-once *delivery* is not offered.
"""

from __future__ import annotations

import hashlib
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from importlib import resources
from typing import TYPE_CHECKING, Any

import orjson
from redis.exceptions import ResponseError

from ...enums import DeliveryGuarantee, JobStatus
from ...errors import ConfigurationError, LeaseLostError, SerializationError
from ...job import JobInfo
from ...lifecycle import running
from ...limits import get_logger
from ...options import check_text, shown, to_ms
from ...queries import check_reads
from .conflicts import OPTION, ConflictCheck, conflict_mode

if TYPE_CHECKING:
    from ...queue import JobQueue

__all__ = ["RESULT_PREFIX", "WINDOWS", "ExecutionResult", "IdempotencyManager", "derive_key"]

FEATURE = "effectively-once"
#: The idempotency windows.
WINDOWS = ("ttl", "until_finished", "debounce")
_MAX_KEY = 512
#: Key suffix (after the queue's prefix) of the result kept under an idempotency key:
#: HASH id, r (the encoded result), f (finished at), n (job name), o (its options).
RESULT_PREFIX = "idem-r:"
_RECORD_PREFIX = "idem-x:"
_RECORD_INDEX = "idem-x"
#: The script writing an execution record (``record.lua``).
_RECORD = "idem_record"

_INSTALLED: weakref.WeakKeyDictionary[Any, tuple[str, bool, bool, str]] = (
    weakref.WeakKeyDictionary()
)
#: The idempotency_ttl compiled into a queue's enqueue and requeue fragments (the
#: length of an until_finished window, kept on each such job when it is added).
_COMPILED_TTL: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()

log = get_logger(__name__)


async def _read(client: Any, command: str, key: str, *args: Any) -> Any:
    """``command`` on ``key``, or None when the key holds another type (written by
    hand, damaged): the record is skipped, logged, never the caller's crash."""
    try:
        return await getattr(client, command)(key, *args)
    except ResponseError as exc:
        if "WRONGTYPE" not in str(exc):
            raise
        log.warning(
            "effectively-once: key %s holds another type than kitium-queue writes there "
            "(damaged); it is ignored. Delete it to repair",
            key,
        )
        return None


def _lua(name: str) -> str:
    return resources.files(__package__).joinpath(f"{name}.lua").read_text("utf-8")


def _compile_ttl(q: JobQueue) -> None:
    """Fill the enqueue and requeue slots of ``q`` with its current ``idempotency_ttl``
    compiled in (nothing when it already is): the length of an until_finished window,
    kept on each such job when it is added (``it``), and the fallback window of a job
    put back in wait that has none kept (``requeue.lua``)."""
    ttl = int(q.ctx.idempotency_ttl)
    if _COMPILED_TTL.get(q) == ttl:
        return
    text = str(ttl)
    q.scripts.add_slot("enqueue", FEATURE, _lua("enqueue").replace("@TTL@", text))
    q.scripts.add_slot("requeue", FEATURE, _lua("requeue").replace("@TTL@", text))
    _COMPILED_TTL[q] = ttl


def derive_key(job_name: str, data: Any) -> str:
    """The idempotency key of a job without one: its name and a SHA-256 of its data in
    canonical JSON (sorted keys), so the same call gives the same key in any process."""
    try:
        raw = orjson.dumps(data, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    except TypeError as exc:
        raise SerializationError(
            f"cannot derive an idempotency key for job {job_name!r}: its data is not JSON "
            f"({exc}); pass idempotency_key=..."
        ) from None
    return f"eo:{job_name}:{hashlib.sha256(raw).hexdigest()}"


def _window(value: Any, section: str = "idempotency_window") -> str:
    if value not in WINDOWS:
        raise ConfigurationError(f"{section} must be one of {', '.join(WINDOWS)}, got {value!r}")
    return str(value)


@dataclass(frozen=True, slots=True)
class ExecutionResult:
    """A finished execution found by key or job id.

    ``source``: ``"job"`` (read from the job's record), ``"stored"`` (the result kept
    under the key after retention removed the job) or ``"recorded"``
    (``record_execution``). ``result`` is decoded; ``finished_at`` in ms.
    """

    key: str | None
    job_id: str
    job_name: str | None
    result: Any
    finished_at: int | None
    source: str


def _text(v: Any) -> str | None:
    if v is None:
        return None
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


class IdempotencyManager:
    """Effectively-once processing on one queue (or each partition of a
    ``PartitionedQueue``: a key always lands on the same partition).

    Args:
        queue: the ``JobQueue`` or ``PartitionedQueue``.
        window: the default idempotency window of jobs with a key: ``"ttl"``,
            ``"until_finished"`` or ``"debounce"`` (a job's ``idempotency_window``
            option wins).
        exactly_once: treat every job as ``delivery_guarantee="exactly-once"``.
        derive_keys: derive a missing key of an exactly-once job from its name and data
            (default); ``False`` refuses such a job instead.
        ttl_ms: the length of the ``"ttl"`` window (sets the queue's
            ``idempotency_ttl``); stored results live as long as their key.
        conflicts: what an add whose key or chosen ``job_id`` is taken does when its
            data differs from the existing job's: ``"return"`` the existing id (the
            default, the data dropped) or ``"raise"`` ``IdempotencyConflictError``,
            nothing written (a job's ``idempotency_conflict`` option wins; what is not
            compared: ``conflicts.py``).
    """

    def __init__(
        self,
        queue: Any,
        *,
        window: str = "ttl",
        exactly_once: bool = False,
        derive_keys: bool = True,
        ttl_ms: Any = None,
        conflicts: str = "return",
    ) -> None:
        self.window = _window(window, "window")
        self.conflicts = conflict_mode(conflicts)
        self.exactly_once = bool(exactly_once)
        self.derive_keys = bool(derive_keys)
        self.queue = queue
        self._parts: list[JobQueue] = list(getattr(queue, "queues", None) or [queue])
        ttl = None if ttl_ms is None else to_ms(ttl_ms, "ttl_ms", minimum=1)
        want = (self.window, self.exactly_once, self.derive_keys, self.conflicts)
        for q in self._parts:
            if ttl is not None:
                q.ctx.idempotency_ttl = ttl
                q.idempotency_ttl = ttl
            have = _INSTALLED.get(q)
            if have is not None and have != want:
                raise ConfigurationError(
                    f"effectively-once is already enabled on queue {q.name!r} with other "
                    "settings; create one IdempotencyManager per queue, with the same "
                    "arguments in every process"
                )
            if have is None:
                self._install(q)
                _INSTALLED[q] = want
            _compile_ttl(q)

    @classmethod
    def for_queue(cls, queue: Any) -> IdempotencyManager:
        """A manager of ``queue`` with the settings it was enabled with in this process
        (the defaults when it was not): what tools that only have the queue use."""
        first = (getattr(queue, "queues", None) or [queue])[0]
        window, exactly_once, derive, conflicts = _INSTALLED.get(
            first, ("ttl", False, True, "return")
        )
        return cls(
            queue,
            window=window,
            exactly_once=exactly_once,
            derive_keys=derive,
            conflicts=conflicts,
        )

    # ------------------------------------------------------------------ installation
    def _install(self, q: JobQueue) -> None:
        # A core option: taken over (its check accepts 'exactly-once' from then on).
        q.own_options(FEATURE, ["delivery_guarantee"])
        q.declare_option(
            "idempotency_window",
            feature=FEATURE,
            normalize=lambda v, section: _window(v, f"{section}: idempotency_window"),
            doc="ttl | until_finished | debounce",
        )
        q.declare_option(
            OPTION,
            feature=FEATURE,
            normalize=lambda v, section: conflict_mode(v, f"{section}: {OPTION}"),
            stored=False,
            doc="return | raise: a key or job_id reused with different data",
        )
        q.ctx.hooks.add_duplicate_check(ConflictCheck(self.conflicts, self.window, self._id_of(q)))
        q.use_enqueue(self._prepare)
        q.scripts.add_slot("release", FEATURE, _lua("release"))
        q.scripts.add_slot("duplicate", FEATURE, _lua("duplicate"))
        q.scripts.add_slot("erase", FEATURE, _lua("erase"))
        q.scripts.add_fragment(_RECORD, _lua("record"))
        # record_execution is fenced by the run it is called from: the run is marked.
        # The until_finished window's length, kept on the job when it is added
        # (enqueue.lua), and a job put back in wait takes its key again (requeue.lua).
        _compile_ttl(q)

    def _prepare(
        self, job_name: str, data: Any, options: Mapping[str, Any]
    ) -> tuple[str, Any, Mapping[str, Any]]:
        # The idempotency_ttl this add sets keys with is the one compiled into the
        # enqueue fragment (kept on until_finished jobs): a TTL changed since (a
        # configuration that caps it after the manager was created) is compiled again.
        for q in self._parts:
            if _COMPILED_TTL.get(q) != q.ctx.idempotency_ttl:
                _compile_ttl(q)
        # Per job, on the add path: a job that asks for nothing of this feature passes
        # as it is (no copy).
        if not (
            self.exactly_once
            or options.get("delivery_guarantee") is not None
            or (options.get("idempotency_key") and self.window != "ttl")
        ):
            return job_name, data, options
        opts = dict(options)
        eo = opts.get("delivery_guarantee") in (
            DeliveryGuarantee.EXACTLY_ONCE,
            DeliveryGuarantee.EXACTLY_ONCE.value,
        )
        if self.exactly_once and opts.get("delivery_guarantee") is None:
            opts["delivery_guarantee"] = DeliveryGuarantee.EXACTLY_ONCE.value
            eo = True
        if eo and opts.get("idempotency_key") is None:  # "" is refused, not derived
            if not self.derive_keys:
                raise ConfigurationError(
                    f"job {job_name!r} is exactly-once and needs idempotency_key=... (this "
                    "queue's IdempotencyManager does not derive keys)"
                )
            opts["idempotency_key"] = derive_key(job_name, data)
        if (
            opts.get("idempotency_key")
            and "idempotency_window" not in opts
            and self.window != "ttl"
        ):
            opts["idempotency_window"] = self.window
        return job_name, data, opts

    # ------------------------------------------------------------------ routing
    def _queue_for_key(self, key: str) -> JobQueue:
        if len(self._parts) == 1:
            return self._parts[0]
        index: int = self.queue.partition_of(key)
        return self._parts[index]

    def _id_of(self, q: JobQueue) -> Callable[[str], str]:
        """The ids callers know jobs of ``q`` by (a partition's: full ids)."""
        if len(self._parts) == 1:
            return str
        index, facade = self._parts.index(q), self.queue
        return lambda inner: str(facade.full_id(index, inner))

    def _public(self, q: JobQueue, found: ExecutionResult | None) -> ExecutionResult | None:
        # On a partitioned queue, ids read inside a partition are given as full ids.
        if found is None or len(self._parts) == 1:
            return found
        full: str = self.queue.full_id(self._parts.index(q), found.job_id)
        return replace(found, job_id=full)

    # ------------------------------------------------------------------ results
    async def get_result(self, job_id_or_key: str) -> ExecutionResult | None:
        """The result of a completed job, by its id or its idempotency key.

        Looks for the job first (by id, then the job the key points to), then for the
        result kept under the key after the job itself was removed. ``None``: no
        completed job is known by that id or key (still running, failed, or never
        added, or the key's window ended). A read of the queue: it passes the read
        guards of the queue (every partition) first."""
        text = check_text(job_id_or_key, "job id or idempotency key", max_len=_MAX_KEY)
        await check_reads(self._parts, "get_result", {"job_id_or_key": text})
        return await self._result(text)

    async def _result(self, text: str) -> ExecutionResult | None:
        job = await self.queue.get_job_status(text)
        if job is not None:
            return _from_job(job, None)
        # The key's own partition first; then the others: a job pinned by its
        # message_group_id, partition_key or workflow holds its key where it lives.
        home = self._queue_for_key(text)
        for q in [home, *(p for p in self._parts if p is not home)]:
            client = await q.client()
            pointed = await _read(client, "get", q.keys.idempotency(text))
            if pointed is not None:
                job = await q.get_job_status(_text(pointed) or "")
                if job is not None:
                    found = _from_job(job, text)
                    if found is not None:
                        return self._public(q, found)
            raw = await _read(client, "hgetall", q.keys.extra(RESULT_PREFIX + text))
            if raw:
                return self._public(q, _stored(q, text, raw, "stored"))
        return None

    async def get_execution_result(self, key: str) -> ExecutionResult | None:
        """What is known to have run under ``key``: a record made by
        ``record_execution``, else a completed job's result (``get_result``). A read
        of the queue: it passes the queue's read guards first."""
        text = check_text(key, "idempotency key", max_len=_MAX_KEY)
        q = self._queue_for_key(text)
        await q.queries.check("get_execution_result", {"key": text})
        client = await q.client()
        raw = await _read(client, "hgetall", q.keys.extra(_RECORD_PREFIX + text))
        if raw:
            return _stored(q, text, raw, "recorded")
        return await self._result(text)

    async def record_execution(
        self,
        key: str,
        job_id: str,
        job_name: str,
        result: Any,
        *,
        ttl_ms: Any = None,
        lease_token: str | None = None,
    ) -> None:
        """Remember that the work under ``key`` was done (by job ``job_id``), with its
        result, for ``ttl_ms`` (default: the queue's ``idempotency_ttl``).

        Call it inside a processor right after a side effect, and check
        ``get_execution_result(job.idempotency_key)`` before doing it: a run repeated
        after a crash then skips what was already done.

        Fenced by the run: called from a run of job ``job_id`` (its processor, or a
        task started from it), or given that run's ``lease_token=job.lease_token``
        (a processor run in a child process must pass it), the record is written in
        one script only while that run still holds the job. Raises
        ``LeaseLostError``, nothing written, when the job was erased, removed,
        finished, or re-leased to another run since. Called outside a run without a
        token, ``job_id`` is a label, written as given.
        """
        text = check_text(key, "idempotency key", max_len=_MAX_KEY)
        job_id = check_text(job_id, "job_id", max_len=512)
        job_name = check_text(job_name, "job_name", max_len=256)
        if lease_token is not None:
            lease_token = check_text(lease_token, "lease_token", max_len=256)
        q = self._queue_for_key(text)
        ttl = to_ms(ttl_ms if ttl_ms is not None else q.idempotency_ttl, "ttl_ms", minimum=1)
        raw = q.serializer.dumps(result, "result")
        held = self._held(q, job_id, lease_token)
        inner, token = job_id, ""
        if held is not None:
            where, inner, token = held
            if where is not q:
                # The job lives in another partition than the key (another hash slot):
                # its lease is read there first, not atomically with the write below.
                client = await where.client()
                found = await _read(client, "hmget", where.keys.job(inner), "lt", "st")
                _fenced(job_id, _lease_state(found, token))
                inner, token = job_id, ""
        reply = await q.run(_RECORD, [text, job_id, token, raw, job_name, ttl, inner])
        _fenced(job_id, reply)
        if int(reply[1]) == 0:
            # The index holds another type (damaged): the record stands (it expires on
            # its own); only clean_expired cannot list it.
            log.warning(
                "effectively-once: the index %s holds another type (damaged); the "
                "execution record was kept, unindexed. Delete the index to repair",
                q.keys.extra(_RECORD_INDEX),
            )

    def _held(
        self, q: JobQueue, job_id: str, lease_token: str | None
    ) -> tuple[JobQueue, str, str] | None:
        """``(queue of the job, its id there, lease token)`` when the record is made by
        a run of job ``job_id`` (the run the current task serves, ``lifecycle.running``,
        or ``lease_token`` given); None when it is not."""
        run = running()
        if run is not None and run[0] in self._parts:
            where, inner, token = run
            full = inner
            if len(self._parts) > 1:
                full = self.queue.full_id(self._parts.index(where), inner)
            if job_id in (inner, full):
                return where, inner, lease_token or token
        if lease_token is None:
            return None
        if len(self._parts) > 1:
            parsed = self.queue.parse_id(job_id)
            if parsed is not None:
                return self._parts[parsed[0]], parsed[1], lease_token
        return q, job_id, lease_token

    async def clean_expired(self) -> int:
        """Forget index entries of execution records whose time is over (Redis expires
        the records themselves); returns how many were removed.

        Each step removes, in one command, the entries whose end is still at or
        before a cutoff (at most ``now``): a key recorded again meanwhile has a later
        end, so neither its new record nor its entry is touched."""
        removed = 0
        now = int(time.time() * 1000)
        for q in self._parts:
            client = await q.client()
            idx = q.keys.extra(_RECORD_INDEX)
            while True:
                due = await _read(client, "zrangebyscore", idx, "-inf", now, 0, 500, True)
                if not due:  # none due, or the index is damaged (logged; skipped)
                    break
                cutoff = min(now, int(due[-1][1]))
                gone = int(await client.zremrangebyscore(idx, "-inf", cutoff))
                removed += gone
                if gone == 0:
                    break
        return removed


def _lease_state(found: Any, token: str) -> list[Any]:
    """record.lua's reply for a job's ``lt`` and ``st`` read from Python."""
    if not found or found[1] is None:
        return [0, b"gone"]
    if _text(found[0]) != token or _text(found[1]) != "active":
        return [0, b"lost"]
    return [1, 1]


def _fenced(job_id: str, reply: Any) -> None:
    """Raise ``LeaseLostError`` when record.lua refused to write (``reply[0] == 0``)."""
    if int(reply[0]) != 0:
        return
    why = (
        "no longer exists (erased, removed or cleared)"
        if _text(reply[1]) == "gone"
        else "is no longer held by this run (it finished, or its lease was lost)"
    )
    raise LeaseLostError(
        f"execution record not written: job {shown(job_id)} {why}; nothing was written"
    )


def _from_job(job: Any, key: str | None) -> ExecutionResult | None:
    status = getattr(job.status, "value", job.status)
    if status != "completed":
        return None
    return ExecutionResult(key, job.id, job.name, job.result, job.finished_at, "job")


def _stored(q: JobQueue, key: str, raw: Mapping[bytes, bytes], source: str) -> ExecutionResult:
    g = raw.get
    f = _text(g(b"f"))
    job_id, name = _text(g(b"id")) or "", _text(g(b"n")) or ""
    try:
        result = q.serializer.loads(g(b"r") or b"", "result")
    except SerializationError as exc:
        where = q.keys.extra((RESULT_PREFIX if source == "stored" else _RECORD_PREFIX) + key)
        raise SerializationError(
            f"the result {source} under idempotency key {shown(key)} cannot be decoded "
            f"({exc}): it was not written by this queue's serializer, or was damaged. "
            f"Delete the Redis key {shown(where)} to forget it"
        ) from None
    try:
        opts = orjson.loads(g(b"o") or b"{}")
    except orjson.JSONDecodeError:
        opts = {}
    # Through the queue's payload views, as a query would show the job's result (a
    # feature that protects payloads opens it here for a process holding its keys).
    info = JobInfo(
        id=job_id,
        name=name,
        status=JobStatus.COMPLETED,
        result=result,
        options=opts if isinstance(opts, dict) else {},
    )
    ctx = q.ctx
    for view in ctx.info_views:
        view(info, ctx.redacting)
    # And through the redactors, where a query applies them (redact_fields of the
    # compliance feature): a kept result is shown as its job's result would be.
    if ctx.redactors and (ctx.redacting or ctx.redact_everywhere):
        info.result = ctx.redact_value(info.result)
    return ExecutionResult(
        key=key,
        job_id=job_id,
        job_name=name or None,
        result=info.result,
        finished_at=int(f) if f and f.isdigit() else None,
        source=source,
    )
