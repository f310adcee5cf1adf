"""``JobChainManager``: workflows (DAGs of jobs) and job dependencies on one queue.

Enabling it (``JobChainManager(queue)``, in every process that adds or runs the queue's
jobs, with the same ``retention_ms``) declares the job options ``workflow_id``,
``depends_on``, ``workflow_step``, ``on_failure`` and ``data_transformer`` and fills the
Lua slots with the feature's fragments (``lua.py``). From then on:

* ``execute_workflow`` checks a whole DAG, then writes it in one atomic script: roots
  go to wait, every other step is parked (``pending``) behind an unfinished parent;
* a step's dependents are released in the same atomic step that records its completion
  (the ``release`` slot): no poller, nothing a crash can strand;
* a step that fails for good applies its ``on_failure`` policy in that same step;
* ``add_job(..., depends_on=[ids])`` and ``wait_for_dependencies`` give plain jobs
  dependencies.

The exact semantics are in ``docs/workflows.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson
from redis.exceptions import ResponseError

from ...errors import ConfigurationError, JobNotFoundError, JobRefusedError, JobStateError
from ...limits import get_logger
from ...options import check_text, to_int
from ...presence import PRUNE_INDEX
from ...queries import check_reads
from .events import WorkflowEvents
from .heal import DependentsHealReport, heal_dependents
from .install import (
    check_ids,
    check_policy,
    install,
    installed_retention,
    parent_results,
    set_public_id,
    shown_error,
    transformers_of,
)
from .lua import MAX_PARENTS
from .model import (
    MAX_NAME,
    ParentResult,
    StepStatus,
    WorkflowStatus,
    WorkflowStep,
    WorkflowSummary,
    plan,
)

if TYPE_CHECKING:
    from ...queue import JobQueue

__all__ = ["DependentsHealReport", "JobChainManager"]

log = get_logger(__name__)

#: Default time a finished workflow's records (step states, results) are kept: 7 days.
DEFAULT_RETENTION_MS = 7 * 86_400_000
#: Most bytes of step data and options one workflow may send in its one script call.
MAX_WORKFLOW_BYTES = 64 * 1024 * 1024


def _text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v or "")


def _num(v: Any) -> int | None:
    try:
        return None if v in (None, b"", "") else int(v)
    except (TypeError, ValueError):
        return None


def _read(reply: Any, key: str, problems: list[str]) -> Any:
    """One reply of a pipeline run with ``raise_on_error=False``: a key of another type
    (``WRONGTYPE``, a record damaged by hand) is None, with the damage noted in
    ``problems``; any other error is raised."""
    if isinstance(reply, ResponseError) and "WRONGTYPE" in str(reply):
        problems.append(f"key {key} holds another type (damaged by hand?): delete or repair it")
        return None
    if isinstance(reply, BaseException):
        raise reply
    return reply


def _full_ids(facade: Any, index: int) -> Callable[[str], str]:
    """Member ``index``'s ids shown as ``facade``'s full ids (holding the façade weakly:
    the function is kept per member queue, which the façade holds)."""
    ref = weakref.ref(facade)

    def public(inner: str) -> str:
        f = ref()
        return inner if f is None else str(f.full_id(index, inner))

    return public


class JobChainManager:
    """Workflows and job dependencies on one ``JobQueue`` or ``PartitionedQueue``.

    Args:
        queue: the queue. On a ``PartitionedQueue`` every partition is enabled, and a
            workflow lives on the partition its id maps to (``queue_of``): its steps,
            the jobs added to it with ``add_job(..., workflow_id=...)`` and the jobs
            that depend on them. Job ids are then the queue's full ids.
        retention_ms: how long a finished workflow's records (states, results, errors)
            are kept after its last step finished.
        events: report ``workflow-completed`` / ``workflow-failed`` /
            ``workflow-cancelled`` in process (the ``feature_event`` hook, ``queue.on``)
            from one worker process of the queue (a leader-only service per partition).
            They are on the durable event stream (``queue.events()``) either way.

    Every process that adds or runs the queue's jobs must create it, with the same
    ``retention_ms``: it is compiled into the queue's scripts.
    """

    def __init__(
        self, queue: Any, *, retention_ms: int = DEFAULT_RETENTION_MS, events: bool = True
    ) -> None:
        self.queue = queue
        self.retention_ms = to_int(
            retention_ms, "retention_ms", minimum=1000, maximum=10 * 365 * 86_400_000
        )
        # A façade of several queues (a PartitionedQueue) has its members in `queues`.
        members = getattr(queue, "queues", None)
        self._facade: Any = queue if members is not None else None
        self._parts: list[JobQueue] = list(members) if members is not None else [queue]
        self._by_name = {q.name: i for i, q in enumerate(self._parts)}
        self.event_services: list[WorkflowEvents] = []
        for i, q in enumerate(self._parts):
            install(q, self.retention_ms)
            if self._facade is not None:
                set_public_id(q, _full_ids(self._facade, i))
            if events:
                svc = WorkflowEvents(q)
                q.add_service(svc)
                self.event_services.append(svc)
        self.events: WorkflowEvents | None = self.event_services[0] if self.event_services else None

    # ------------------------------------------------------------------ routing
    def queue_of(self, workflow_id: str) -> JobQueue:
        """The queue (partition) that holds workflow ``workflow_id``."""
        return self._parts[self._index(workflow_id)]

    def _index(self, workflow_id: str) -> int:
        return 0 if self._facade is None else int(self._facade.partition_of(workflow_id))

    def _public(self, i: int, inner: str) -> str:
        return inner if self._facade is None else str(self._facade.full_id(i, inner))

    def _split(self, job_id: str) -> tuple[int, str]:
        """(partition, id within it) of a job id as the caller knows it."""
        if self._facade is None:
            return 0, job_id
        found = self._facade.parse_id(job_id)
        if found is None:
            raise self._facade.not_found(job_id)
        return int(found[0]), str(found[1])

    # ------------------------------------------------------------------ transformers
    def register_transformer(self, name: str, fn: Callable[..., Any]) -> None:
        """Register ``fn(data, parent_results) -> data`` (sync or async) under ``name``,
        for steps whose ``data_transformer`` is ``name``. Register it in every worker
        process that runs such steps (a function cannot travel between processes)."""
        check_text(name, "transformer name", max_len=300)
        if not callable(fn):
            raise ConfigurationError(f"transformer {name!r} is not callable")
        for q in self._parts:
            transformers_of(q)[name] = fn

    @classmethod
    def for_queue(cls, queue: Any) -> JobChainManager:
        """A manager of ``queue`` with the retention workflows were enabled with on it in
        this process (the default when they were not), reporting no events: what tools
        that only have the queue (the CLI) use."""
        first = (getattr(queue, "queues", None) or [queue])[0]
        return cls(
            queue, retention_ms=installed_retention(first) or DEFAULT_RETENTION_MS, events=False
        )

    # ------------------------------------------------------------------ writing
    async def execute_workflow(
        self, workflow_id: str, steps: Sequence[WorkflowStep | Mapping[str, Any]]
    ) -> dict[str, str]:
        """Check a whole workflow, then write it atomically; returns step name -> job id.

        Job ids are ``"<workflow_id>:<step name>"`` (on a ``PartitionedQueue``, the full
        ids of those on the workflow's partition). Roots go to wait at once; every other
        step waits (``pending``) until all its parents finished.

        Raises:
            ConfigurationError: a bad step (the message names it), a duplicate or unknown
                step name, a cycle, an option a step may not set; nothing was written.
            JobStateError: a workflow with this id exists (or existed within its
                retention), or a job id it needs is taken; nothing was written.
            FencedError: the queue is a region's copy of a multi-region queue that is
                not the primary (or whose lease ran out); nothing was written: write
                the workflow on the primary's copy.
        """
        wid = check_text(workflow_id, "workflow_id", max_len=MAX_NAME)
        part = self._index(wid)
        q = self._parts[part]
        ordered = plan(steps, q.processors or None, transformers_of(q))
        producer = q.producer
        ids = {s.name: f"{wid}:{s.name}" for s in ordered}
        args: list[Any] = [*q.ctx.argv_head(), wid]
        size = 0
        names: list[str] = []
        for s in ordered:
            opts: dict[str, Any] = {
                **s.options,
                "job_id": ids[s.name],
                "workflow_id": wid,
                "workflow_step": s.name,
                "attempts": s.retry_attempts + 1,
            }
            if s.on_failure != "fail_workflow":
                opts["on_failure"] = s.on_failure
            if s.data_transformer:
                opts["data_transformer"] = s.data_transformer
            try:
                name, data, opts = await producer.through_middleware(s.job_name, s.data, opts)
                p = producer.prepare(name, data, opts)
            except ConfigurationError as exc:
                raise ConfigurationError(f"step {s.name!r}: {exc}") from None
            size += len(p[2]) + len(p[3])
            if size > MAX_WORKFLOW_BYTES:
                raise ConfigurationError(
                    f"workflow {wid!r}: its steps' data is above {MAX_WORKFLOW_BYTES} bytes "
                    "in all; store large data elsewhere and pass references"
                )
            parents = orjson.dumps([ids[x] for x in dict.fromkeys(s.depends_on)])
            size += len(parents)
            # lifo '1' | '0' (wf_create): the 'n' of job_id_window=False is enqueue.lua's
            args += [s.name, p[0], p[1], p[2], p[3], p[4], p[5], p[6][:1], parents]
            names.append(p[1])
        client = await q.client()
        reply = await q.scripts.call(client, "wf_create", q.keys.all, args)
        kind = _text(reply[0])
        if kind == "exists":
            raise JobStateError(
                f"workflow {wid!r} exists (or finished within its retention); choose a new id"
            )
        if kind == "taken":
            raise JobStateError(
                f"workflow {wid!r}: job id {_text(reply[1])!r} is taken by an existing job (or a"
                " step of another workflow whose ids read the same); "
                "choose another workflow id"
            )
        if q.hooks.enqueued:
            q.hooks.emit_enqueued(q.name, [ids[s.name] for s in ordered], names)
        return {s.name: self._public(part, ids[s.name]) for s in ordered}

    async def wait_for_dependencies(
        self, job_id: str, dependencies: Sequence[str], *, on_failure: str | None = None
    ) -> int:
        """Make job ``job_id``, added on its own and not started, wait until every job
        of ``dependencies`` completed; returns how many of them are unfinished (0: it
        may run now). ``on_failure``: what its own final failure does to *its*
        dependents (see ``WorkflowStep``).

        Raises:
            JobNotFoundError: no such job.
            JobStateError: it started or finished already, has dependencies already, or
                has dependents (other jobs depend on it: a cycle could close).
            JobRefusedError: a dependency does not exist or failed (the reason says).
            ConfigurationError: on a ``PartitionedQueue``, a dependency on another
                partition than the job's.
        """
        part, jid = self._split(check_text(job_id, "job_id", max_len=512))
        if isinstance(dependencies, (str, bytes, Mapping)) or not isinstance(
            dependencies, Iterable
        ):
            # A str is one id, not a list of its characters (each a job id).
            raise ConfigurationError(
                "wait_for_dependencies: dependencies must be a list of job ids, got "
                f"{type(dependencies).__name__}"
            )
        deps = [
            self._inner(part, d, job_id)
            for d in check_ids(list(dependencies), "wait_for_dependencies")
        ]
        pol = "" if on_failure is None else check_policy(on_failure, "wait_for_dependencies")
        q = self._parts[part]
        client = await q.client()
        reply = await q.scripts.call(
            client, "wf_depend", q.keys.all, [*q.ctx.argv_head(), jid, orjson.dumps(deps), pol]
        )
        kind = _text(reply[0])
        if kind == "ok":
            return int(reply[1])
        if kind == "missing":
            raise JobNotFoundError(f"job {job_id!r} not found")
        if kind == "started":
            raise JobStateError(
                f"job {job_id!r} is {_text(reply[1])}: only a job that has not started can "
                "wait for dependencies"
            )
        if kind == "tracked":
            raise JobStateError(f"job {job_id!r} has dependencies already")
        if kind == "depended":
            raise JobStateError(
                f"job {job_id!r} has dependents (jobs wait for it, or did): a job others "
                "depend on cannot be given dependencies later (they could close a cycle); "
                "give them when it is added (add_job depends_on)"
            )
        raise JobRefusedError(f"job {job_id!r}: {_text(reply[1])}")

    def _inner(self, part: int, dep: str, job_id: str) -> str:
        """A dependency's id within partition ``part`` (the job's)."""
        if self._facade is None:
            return dep
        found = self._facade.parse_id(dep)
        if found is None:
            raise ConfigurationError(
                f"wait_for_dependencies: {dep[:100]!r} is not a job id of partitioned queue "
                f"{self._facade.name!r}: use the full ids add_job returned"
            )
        if int(found[0]) != part:
            raise ConfigurationError(
                f"wait_for_dependencies: job {job_id[:100]!r} is on partition {part} and "
                f"{dep[:100]!r} on partition {found[0]}: a job and the jobs it depends on "
                "must share one partition (add them with the same partition_key)"
            )
        return str(found[1])

    async def cancel_workflow(self, workflow_id: str) -> int:
        """Cancel a workflow: every step that has not started is removed (state
        ``cancelled``), running steps are asked to stop (``cancel_job``). Returns the
        number of steps cancelled before they started. A finished workflow is left as it
        is (0). Raises ``JobNotFoundError`` for an unknown workflow."""
        wid = check_text(workflow_id, "workflow_id", max_len=MAX_NAME)
        q = self.queue_of(wid)

        async def action() -> Any:
            client = await q.client()
            return await q.scripts.call(client, "wf_cancel", q.keys.all, [*q.ctx.argv_head(), wid])

        reply = await q.admin.execute("cancel_workflow", {"workflow_id": wid}, action)
        if _text(reply[0]) == "missing":
            raise JobNotFoundError(f"workflow {wid!r} not found")
        if _text(reply[0]) != "cancelled":
            return 0
        for jid in reply[2]:
            with contextlib.suppress(JobNotFoundError, JobStateError):  # finished meanwhile
                await q.cancel_job(_text(jid))
        return int(reply[1])

    async def heal(self) -> DependentsHealReport:
        """Release the dependents of jobs that finished without releasing them, in
        every partition: a process of the queue without ``JobChainManager`` ran those
        jobs. Each gets the end the release fragment would have given it (completed:
        its dependents go on; failed, dead-lettered or gone: its ``on_failure``
        policy). The queue's workers with ``JobChainManager`` do this every
        ``heal.HEAL_INTERVAL_S`` by themselves; this runs it now. See
        ``docs/workflows.md``."""
        parents = dependents = 0
        for q in self._parts:

            async def action(q: JobQueue = q) -> DependentsHealReport:
                return await heal_dependents(q)

            r = await q.admin.execute("heal_workflows", {}, action)
            parents, dependents = parents + r.parents, dependents + r.dependents
        return DependentsHealReport(parents, dependents)

    # ------------------------------------------------------------------ reading
    async def parent_results(self, job: Any) -> dict[str, ParentResult]:
        """The results of ``job``'s parents, keyed by step name (a parent that is not a
        workflow step: by its job id). A parent that failed with ``on_failure=
        "continue"`` is there with ``status="failed"`` and its ``error``; one whose record
        or stored result cannot be read, with ``status="damaged"`` and ``error`` saying
        why (the others are read as usual). Pass the
        ``Job`` a processor receives, or a job id. A read of the queue: it passes the
        queue's read guards first (``data_transformer`` gets the same results as the
        library's own read, unguarded)."""
        if isinstance(job, str):
            part, jid = self._split(job)
        else:
            index = self._by_name.get(str(getattr(job, "queue_name", "")))
            if index is None:
                raise ConfigurationError(
                    f"job {getattr(job, 'id', job)!r} is not a job of this manager's queue"
                )
            part, jid = index, str(job.id)
        await self._parts[part].queries.check("parent_results", {"job_id": jid})
        return await parent_results(self._parts[part], jid)

    async def get_workflow_status(self, workflow_id: str) -> WorkflowStatus | None:
        """The workflow's state and every step's state, attempts, timings and error;
        None when there is no such workflow (or its retention ended). A read of the
        queue: it passes the queue's read guards first."""
        wid = check_text(workflow_id, "workflow_id", max_len=MAX_NAME)
        part = self._index(wid)
        q = self._parts[part]
        await q.queries.check("get_workflow_status", {"workflow_id": wid})
        key = q.keys.extra
        client = await q.client()
        pipe = client.pipeline(transaction=False)
        pipe.hgetall(key(f"wf:{wid}"))
        pipe.hgetall(key(f"wf-s:{wid}"))
        # Keys of another type (damaged by hand) are reported, not raised (_read).
        head_raw, steps_raw = await pipe.execute(raise_on_error=False)
        damage: list[str] = []
        head = _read(head_raw, key(f"wf:{wid}"), damage)
        if not head and not damage:
            return None
        steps = _read(steps_raw, key(f"wf-s:{wid}"), damage) or {}
        head = head or {}
        ids = {_text(k): _text(v) for k, v in steps.items()}
        pipe = client.pipeline(transaction=False)
        for jid in ids.values():
            pipe.hmget(key(f"dep:{jid}"), "st", "ts", "f", "e", "en")
            pipe.hmget(q.keys.job(jid), "st", "a", "ps", "f", "e", "ts", "n")
            pipe.lrange(key(f"dep-p:{jid}"), 0, MAX_PARENTS - 1)
        rows = await pipe.execute(raise_on_error=False)
        by_id = {v: k for k, v in ids.items()}
        out: dict[str, StepStatus] = {}
        counts: dict[str, int] = {}
        for i, (name, jid) in enumerate(ids.items()):
            bad: list[str] = []
            dep = _read(rows[3 * i], key(f"dep:{jid}"), bad) or [None] * 5
            job = _read(rows[3 * i + 1], q.keys.job(jid), bad) or [None] * 7
            parents = _read(rows[3 * i + 2], key(f"dep-p:{jid}"), bad) or []
            state = _text(dep[0]) or ("damaged" if bad else "missing")
            if state == "ready":
                state = _text(job[0]) or ("damaged" if bad else "waiting" if job[5] else "missing")
            elif state == "failed" and _text(job[0]) == "dlq":
                state = "dlq"
            counts[state] = counts.get(state, 0) + 1
            # The step's reason (its record's copy, else its job's own), as the job views
            # show it: a sealed one opened where the key is held (shown_error).
            err = dep[3] or job[4]
            named = (dep[3] and dep[4]) or job[6]
            out[name] = StepStatus(
                name=name,
                job_id=self._public(part, jid),
                state=state,
                depends_on=[by_id.get(_text(p)) or self._public(part, _text(p)) for p in parents],
                attempts=_num(job[1]) or 0,
                created_at=_num(dep[1]) or _num(job[5]),
                started_at=_num(job[2]),
                finished_at=_num(dep[2]) or _num(job[3]),
                error=shown_error(q, jid, named, err),
                damaged="; ".join(bad) or None,
            )
        return WorkflowStatus(
            workflow_id=wid,
            state=_text(head.get(b"st")) or ("damaged" if damage else "missing"),
            created_at=_num(head.get(b"ts")),
            finished_at=_num(head.get(b"f")),
            total=_num(head.get(b"n")) or len(out),
            unfinished=_num(head.get(b"left")) or 0,
            failed_step=_text(head.get(b"err")) or None,
            counts=counts,
            steps=out,
            damaged="; ".join(damage) or None,
        )

    async def list_workflows(self, limit: int = 100, offset: int = 0) -> list[WorkflowSummary]:
        """Workflows, newest first (those within their retention); on a
        ``PartitionedQueue``, of every partition (each reads its first offset + limit)."""
        n = to_int(limit, "limit", minimum=0, maximum=10_000)
        skip = to_int(offset, "offset", minimum=0, maximum=2**31)
        await check_reads(self._parts, "list_workflows", {"limit": n, "offset": skip})
        if n == 0:
            return []
        if len(self._parts) == 1:
            return await _list(self._parts[0], skip, n)
        rows = [
            r
            for part in await asyncio.gather(*(_list(q, 0, skip + n) for q in self._parts))
            for r in part
        ]
        # Each partition's index is ordered by creation, then by id (descending).
        rows.sort(key=lambda r: (r.created_at or 0, r.workflow_id.encode()), reverse=True)
        return rows[skip : skip + n]


async def _list(q: JobQueue, skip: int, n: int) -> list[WorkflowSummary]:
    """One queue's workflows, newest first."""
    client = await q.client()
    index = q.keys.extra("wfs")
    try:
        wids = await client.zrevrange(index, skip, skip + n - 1)
    except ResponseError as exc:
        if "WRONGTYPE" not in str(exc):
            raise
        raise JobStateError(
            f"the index of workflows {index} holds another type than a sorted set (damaged "
            "by hand?): delete it (the workflows themselves are kept, unlisted), then list "
            "again"
        ) from None
    pipe = client.pipeline(transaction=False)
    for w in wids:
        pipe.hmget(q.keys.extra(f"wf:{_text(w)}"), "st", "ts", "f", "n", "left")
    rows = await pipe.execute(raise_on_error=False)
    out: list[WorkflowSummary] = []
    gone: list[Any] = []
    for w, reply in zip(wids, rows, strict=True):
        bad: list[str] = []
        r = _read(reply, q.keys.extra(f"wf:{_text(w)}"), bad)
        if bad:
            # A record of another type: listed as damaged, the others as they are.
            out.append(WorkflowSummary(_text(w), "damaged", None, None, 0, 0, bad[0]))
            continue
        if r[0] is None:
            gone.append(w)
            continue
        out.append(
            WorkflowSummary(
                _text(w), _text(r[0]), _num(r[1]), _num(r[2]), _num(r[3]) or 0, _num(r[4]) or 0
            )
        )
    if gone:  # retention ended: forget them in the index too, unless made again since
        keys = [index, *(q.keys.extra(f"wf:{_text(w)}") for w in gone)]
        await client.eval(PRUNE_INDEX, len(keys), *keys, *gone)
    return out
