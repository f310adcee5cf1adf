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

import contextlib
import inspect
import weakref
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any

import orjson

from ...errors import ConfigurationError, JobNotFoundError, JobRefusedError, JobStateError
from ...limits import get_logger
from ...options import check_text, to_int
from . import lua
from .events import WorkflowEvents
from .lua import FEATURE, MAX_PARENTS
from .model import (
    MAX_NAME,
    POLICIES,
    ParentResult,
    StepStatus,
    WorkflowStatus,
    WorkflowStep,
    WorkflowSummary,
    plan,
    resolve_transformer,
)

if TYPE_CHECKING:
    from ...queue import JobQueue

__all__ = ["JobChainManager"]

log = get_logger(__name__)

#: Default time a finished workflow's records (step states, results) are kept: 7 days.
DEFAULT_RETENTION_MS = 7 * 86_400_000
#: Most bytes of step data and options one workflow may send in its one script call.
MAX_WORKFLOW_BYTES = 64 * 1024 * 1024
# One installation per queue object: its retention, and the transformers registered
# by every manager of it (the process middleware that applies them is installed once).
_INSTALLED: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
_TRANSFORMERS: weakref.WeakKeyDictionary[Any, dict[str, Callable[..., Any]]] = (
    weakref.WeakKeyDictionary()
)


def _text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v or "")


def _num(v: Any) -> int | None:
    try:
        return None if v in (None, b"", "") else int(v)
    except (TypeError, ValueError):
        return None


def _ids(value: Any, section: str) -> list[str]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ConfigurationError(f"{section}: depends_on must be a list of job ids")
    if len(value) > MAX_PARENTS:
        raise ConfigurationError(
            f"{section}: depends_on lists {len(value)} jobs, at most {MAX_PARENTS}"
        )
    return [check_text(v, f"{section}: depends_on item", max_len=512) for v in value]


def _policy(value: Any, section: str) -> str:
    if value not in POLICIES:
        raise ConfigurationError(
            f"{section}: on_failure must be one of {', '.join(POLICIES)}, got {value!r}"
        )
    return str(value)


class JobChainManager:
    """Workflows and job dependencies on one ``JobQueue``.

    Args:
        queue: the queue.
        retention_ms: how long a finished workflow's records (states, results, errors)
            are kept after its last step finished.
        events: report ``workflow-completed`` / ``workflow-failed`` /
            ``workflow-cancelled`` in process (the ``feature_event`` hook, ``queue.on``)
            from one worker process of the queue (a leader-only service). They are on the
            durable event stream (``queue.events()``) either way.

    Every process that adds or runs the queue's jobs must create it, with the same
    ``retention_ms``: it is compiled into the queue's scripts.
    """

    def __init__(
        self, queue: JobQueue, *, retention_ms: int = DEFAULT_RETENTION_MS, events: bool = True
    ) -> None:
        self.queue = queue
        self.retention_ms = to_int(
            retention_ms, "retention_ms", minimum=1000, maximum=10 * 365 * 86_400_000
        )
        _install(queue, self.retention_ms)
        self._transformers = _TRANSFORMERS[queue]
        self.events: WorkflowEvents | None = None
        if events:
            self.events = WorkflowEvents(queue)
            queue.add_service(self.events)

    # ------------------------------------------------------------------ keys
    def _key(self, kind: str, name: str) -> str:
        return self.queue.keys.extra(f"{kind}:{name}")

    # ------------------------------------------------------------------ transformers
    def register_transformer(self, name: str, fn: Callable[..., Any]) -> None:
        """Register ``fn(data, parent_results) -> data`` (sync or async) under ``name``,
        for steps whose ``data_transformer`` is ``name``. Register it in every worker
        process that runs such steps (a function cannot travel between processes)."""
        check_text(name, "transformer name", max_len=300)
        if not callable(fn):
            raise ConfigurationError(f"transformer {name!r} is not callable")
        self._transformers[name] = fn

    @classmethod
    def for_queue(cls, queue: JobQueue) -> JobChainManager:
        """A manager of ``queue`` with the retention workflows were enabled with on it in
        this process (the default when they were not), reporting no events: what tools
        that only have the queue (the CLI) use."""
        return cls(queue, retention_ms=_INSTALLED.get(queue, DEFAULT_RETENTION_MS), events=False)

    # ------------------------------------------------------------------ writing
    async def execute_workflow(
        self, workflow_id: str, steps: Sequence[WorkflowStep | Mapping[str, Any]]
    ) -> dict[str, str]:
        """Check a whole workflow, then write it atomically; returns step name -> job id.

        Job ids are ``"<workflow_id>:<step name>"``. Roots go to wait at once; every
        other step waits (``pending``) until all its parents finished.

        Raises:
            ConfigurationError: a bad step (the message names it), a duplicate or unknown
                step name, a cycle, an option a step may not set; nothing was written.
            JobStateError: a workflow with this id exists (or existed within its
                retention), or a job id it needs is taken; nothing was written.
        """
        wid = check_text(workflow_id, "workflow_id", max_len=MAX_NAME)
        ordered = plan(steps, self.queue.processors or None, self._transformers)
        q = self.queue
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
            args += [s.name, p[0], p[1], p[2], p[3], p[4], p[5], p[6], parents]
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
                f"workflow {wid!r}: job id {_text(reply[1])!r} is taken by an existing job; "
                "choose another workflow id"
            )
        if q.hooks.enqueued:
            q.hooks.emit_enqueued(q.name, [ids[s.name] for s in ordered], names)
        return {s.name: ids[s.name] for s in ordered}

    async def wait_for_dependencies(
        self, job_id: str, dependencies: Sequence[str], *, on_failure: str | None = None
    ) -> int:
        """Make job ``job_id``, added on its own and not started, wait until every job
        of ``dependencies`` completed; returns how many of them are unfinished (0: it
        may run now). ``on_failure``: what its own final failure does to *its*
        dependents (see ``WorkflowStep``).

        Raises:
            JobNotFoundError: no such job.
            JobStateError: it started or finished already, or has dependencies already.
            JobRefusedError: a dependency does not exist or failed (the reason says).
        """
        jid = check_text(job_id, "job_id", max_len=512)
        deps = _ids(list(dependencies), "wait_for_dependencies")
        pol = "" if on_failure is None else _policy(on_failure, "wait_for_dependencies")
        q = self.queue
        client = await q.client()
        reply = await q.scripts.call(
            client, "wf_depend", q.keys.all, [*q.ctx.argv_head(), jid, orjson.dumps(deps), pol]
        )
        kind = _text(reply[0])
        if kind == "ok":
            return int(reply[1])
        if kind == "missing":
            raise JobNotFoundError(f"job {jid!r} not found")
        if kind == "started":
            raise JobStateError(
                f"job {jid!r} is {_text(reply[1])}: only a job that has not started can "
                "wait for dependencies"
            )
        if kind == "tracked":
            raise JobStateError(f"job {jid!r} has dependencies already")
        raise JobRefusedError(f"job {jid!r}: {_text(reply[1])}")

    async def cancel_workflow(self, workflow_id: str) -> int:
        """Cancel a workflow: every step that has not started is removed (state
        ``cancelled``), running steps are asked to stop (``cancel_job``). Returns the
        number of steps cancelled before they started. A finished workflow is left as it
        is (0). Raises ``JobNotFoundError`` for an unknown workflow."""
        wid = check_text(workflow_id, "workflow_id", max_len=MAX_NAME)
        q = self.queue

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

    # ------------------------------------------------------------------ reading
    async def parent_results(self, job: Any) -> dict[str, ParentResult]:
        """The results of ``job``'s parents, keyed by step name (a parent that is not a
        workflow step: by its job id). A parent that failed with ``on_failure=
        "continue"`` is there with ``status="failed"`` and its ``error``. Pass the
        ``Job`` a processor receives, or a job id."""
        return await _parent_results(self.queue, job)

    async def get_workflow_status(self, workflow_id: str) -> WorkflowStatus | None:
        """The workflow's state and every step's state, attempts, timings and error;
        None when there is no such workflow (or its retention ended)."""
        wid = check_text(workflow_id, "workflow_id", max_len=MAX_NAME)
        q = self.queue
        client = await q.client()
        pipe = client.pipeline(transaction=False)
        pipe.hgetall(self._key("wf", wid))
        pipe.hgetall(self._key("wf-s", wid))
        head, steps = await pipe.execute()
        if not head:
            return None
        ids = {_text(k): _text(v) for k, v in steps.items()}
        pipe = client.pipeline(transaction=False)
        for jid in ids.values():
            pipe.hmget(self._key("dep", jid), "st", "ts", "f", "e")
            pipe.hmget(q.keys.job(jid), "st", "a", "ps", "f", "e", "ts")
            pipe.lrange(self._key("dep-p", jid), 0, MAX_PARENTS - 1)
        rows = await pipe.execute()
        by_id = {v: k for k, v in ids.items()}
        out: dict[str, StepStatus] = {}
        counts: dict[str, int] = {}
        for i, (name, jid) in enumerate(ids.items()):
            dep, job, parents = rows[3 * i], rows[3 * i + 1], rows[3 * i + 2]
            state = _text(dep[0]) or "missing"
            if state == "ready":
                state = _text(job[0]) or ("waiting" if job[5] else "missing")
            elif state == "failed" and _text(job[0]) == "dlq":
                state = "dlq"
            counts[state] = counts.get(state, 0) + 1
            err = dep[3] or job[4]
            out[name] = StepStatus(
                name=name,
                job_id=jid,
                state=state,
                depends_on=[by_id.get(_text(p), _text(p)) for p in parents],
                attempts=_num(job[1]) or 0,
                created_at=_num(dep[1]) or _num(job[5]),
                started_at=_num(job[2]),
                finished_at=_num(dep[2]) or _num(job[3]),
                error=_text(err) if err else None,
            )
        return WorkflowStatus(
            workflow_id=wid,
            state=_text(head.get(b"st")) or "missing",
            created_at=_num(head.get(b"ts")),
            finished_at=_num(head.get(b"f")),
            total=_num(head.get(b"n")) or len(out),
            unfinished=_num(head.get(b"left")) or 0,
            failed_step=_text(head.get(b"err")) or None,
            counts=counts,
            steps=out,
        )

    async def list_workflows(self, limit: int = 100, offset: int = 0) -> list[WorkflowSummary]:
        """Workflows, newest first (those within their retention)."""
        n = to_int(limit, "limit", minimum=0, maximum=10_000)
        skip = to_int(offset, "offset", minimum=0, maximum=2**31)
        if n == 0:
            return []
        client = await self.queue.client()
        wids = await client.zrevrange(self.queue.keys.extra("wfs"), skip, skip + n - 1)
        pipe = client.pipeline(transaction=False)
        for w in wids:
            pipe.hmget(self._key("wf", _text(w)), "st", "ts", "f", "n", "left")
        rows = await pipe.execute()
        out: list[WorkflowSummary] = []
        gone: list[Any] = []
        for w, r in zip(wids, rows, strict=True):
            if r[0] is None:
                gone.append(w)
                continue
            out.append(
                WorkflowSummary(
                    _text(w), _text(r[0]), _num(r[1]), _num(r[2]), _num(r[3]) or 0, _num(r[4]) or 0
                )
            )
        if gone:  # retention ended: forget them in the index too
            await client.zrem(self.queue.keys.extra("wfs"), *gone)
        return out


async def _parent_results(q: JobQueue, job: Any) -> dict[str, ParentResult]:
    jid = job if isinstance(job, str) else str(job.id)
    client = await q.client()
    parents = await client.lrange(q.keys.extra(f"dep-p:{jid}"), 0, MAX_PARENTS - 1)
    if not parents:
        return {}
    pipe = client.pipeline(transaction=False)
    for p in parents:
        pipe.hmget(q.keys.extra(f"dep:{_text(p)}"), "s", "st", "r", "e")
    rows = await pipe.execute()
    out: dict[str, ParentResult] = {}
    for p, (step, st, raw, err) in zip(parents, rows, strict=True):
        pid = _text(p)
        result = q.ctx.serializer.loads(raw, "result") if raw else None
        key = _text(step) if step else pid
        out[key] = ParentResult(
            pid,
            _text(step) if step else None,
            _text(st) or "missing",
            result,
            _text(err) if err else None,
        )
    return out


def _install(q: JobQueue, retain_ms: int) -> None:
    have = _INSTALLED.get(q)
    if have is not None:
        if have != retain_ms:
            raise ConfigurationError(
                f"workflows are already enabled on queue {q.name!r} with retention_ms={have}; "
                "create one JobChainManager per queue, with the same arguments in every process"
            )
        return
    q.declare_option(
        "workflow_id", feature=FEATURE, doc="the workflow the job is a step of (features.workflows)"
    )
    q.declare_option(
        "workflow_step",
        feature=FEATURE,
        doc="the job's step name in its workflow (features.workflows)",
    )
    q.declare_option(
        "depends_on",
        feature=FEATURE,
        normalize=_ids,
        doc="ids of jobs that must complete before this one runs",
    )
    q.declare_option(
        "on_failure",
        feature=FEATURE,
        normalize=_policy,
        doc="what the job's final failure does to its dependents",
    )
    q.declare_option(
        "data_transformer",
        feature=FEATURE,
        doc="transformer applied to the data before the job runs",
    )
    scripts = q.scripts
    for name in lua.SCRIPTS:
        scripts.add_fragment(name, lua.script(name, retain_ms))
    frags = lua.fragments(retain_ms)
    scripts.add_slot("accept", FEATURE, frags["accept"])
    scripts.add_slot("enqueue", FEATURE, frags["enqueue"])
    scripts.add_slot("admission", FEATURE, frags["admission"], fields=lua.ADMISSION_FIELDS)
    scripts.add_slot("release", FEATURE, frags["release"])
    erase = resources.files(__package__).joinpath("erase.lua").read_text("utf-8")
    scripts.add_slot("erase", FEATURE, erase)

    async def forget_workflows() -> None:
        # clear() deleted the jobs: the feature's own keys go too.
        client = await q.client()
        for pattern in ("dep*", "wf*"):
            found = [k async for k in client.scan_iter(match=q.keys.extra(pattern), count=1000)]
            for i in range(0, len(found), 500):
                await client.unlink(*found[i : i + 500])

    q.admin.add_clear_step(forget_workflows)
    transformers: dict[str, Callable[..., Any]] = {}

    async def transform(job: Any, call_next: Callable[[], Any]) -> Any:
        # The step's data_transformer, on the worker, before it runs.
        name = job.options.get("data_transformer") if isinstance(job.options, dict) else None
        if name:
            fn = resolve_transformer(str(name), transformers)
            out = fn(job.data, await _parent_results(q, job))
            if inspect.isawaitable(out):
                out = await out
            job.data = out
        return await call_next()

    q.use_process(transform)
    _TRANSFORMERS[q] = transformers
    _INSTALLED[q] = retain_ms
