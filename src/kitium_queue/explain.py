"""Why is this job not running? ``queue.explain(job_id)`` answers with concrete reasons.

The core explains what it owns: a delay (or a retry's backoff), a paused queue, a queue
held by ``RateLimited`` or over its ``limiter`` window, the jobs ahead in line, no live
worker with a processor for the job's name (``presence.py``), and, for a running job,
the worker holding its lease and until when, and a key of the queue's own layout
damaged outside kitium-queue (``damaged-key``: which key, and how to repair it).
Everything else is explained by the features that hold jobs back: each registers an
*explainer* with ``queue.add_explainer(fn)`` — ``fn(facts: JobFacts)``, sync or async,
returning the ``Reason`` objects it knows of (none when the job is not its business).
The core never names a feature: a parked job whose blocker no explainer claimed is
reported as parked behind that blocker.

Reading only: an explanation changes nothing, and an explainer that fails adds a reason
saying so instead of failing the whole answer.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from .damage import find_damage
from .enums import JobStatus
from .limits import clip, get_logger, printable, reply_text, safe_text
from .presence import WorkerPresence, live_workers
from .queries import Queries, query_id
from .records import JobDetail
from .serverclock import execute_with_clock

if TYPE_CHECKING:
    from .context import QueueContext

__all__ = ["Explainer", "Explanation", "JobFacts", "Reason", "explain_job"]

log = get_logger(__name__)

#: The job-hash fields an explainer sees (``JobFacts.fields``): markers and blockers,
#: never the payload, the result or the traceback.
FACT_FIELDS = ("st", "pk", "gk", "rk", "ck", "wd", "due", "w", "lt", "n", "a", "ps", "ts")
#: Jobs counted ahead of a waiting job at most (ZRANK is O(log n); the number is exact).
_WAITING = (JobStatus.WAITING, JobStatus.PAUSED)
_NOT_STARTED = (
    JobStatus.WAITING,
    JobStatus.PAUSED,
    JobStatus.DELAYED,
    JobStatus.PENDING,
)


@dataclass(frozen=True, slots=True)
class Reason:
    """One reason a job is not running (or, with ``blocking=False``, a fact that helps).

    Attributes:
        code: a stable identifier (``delayed``, ``queue-paused``, ``no-worker``,
            ``lease-held``, ``group-turn``, ``dependencies``, ``breaker-open``, ...).
        message: one sentence for people, naming the concrete cause.
        blocking: False for context that does not hold the job back by itself (its
            place in line, the worker running it).
        until_ms: when the cause ends, if known (ms since the epoch, Redis clock).
        refs: what it refers to, as ``(kind, id)`` pairs: ``("job", id)``,
            ``("worker", id)``, ``("group", id)``, ``("breaker", id)``, ``("key", k)``,
            ``("schedule", id)`` — a UI links them.
        source: who gave the reason: ``core`` or the feature's name.
    """

    code: str
    message: str
    blocking: bool = True
    until_ms: int | None = None
    refs: tuple[tuple[str, str], ...] = ()
    source: str = "core"

    def to_dict(self) -> dict[str, Any]:
        """Plain data (``--json``, the dashboard's API)."""
        return {
            "code": self.code,
            "message": self.message,
            "blocking": self.blocking,
            "until_ms": self.until_ms,
            "refs": [list(r) for r in self.refs],
            "source": self.source,
        }


@dataclass(slots=True)
class JobFacts:
    """What an explainer is told about one job.

    Attributes:
        job: the job's record and detail (``get_job_detail``: status, attempts, worker,
            lease deadline, options).
        fields: markers of the job's hash (``FACT_FIELDS``: ``pk`` its blocker while
            parked, ``gk``, ``rk``, ``ck``, ``wd``, ...), as text; absent when not set.
        now_ms: the Redis clock when the facts were read.
        workers: the live workers of the queue (``presence.live_workers``).
        paused: whether the queue is paused.
    """

    job: JobDetail
    fields: dict[str, str]
    now_ms: int
    workers: list[WorkerPresence] = field(default_factory=list)
    paused: bool = False

    @property
    def blocker(self) -> str | None:
        """What the job is parked behind (status ``pending``), else None."""
        return self.fields.get("pk") if self.job.status is JobStatus.PENDING else None


#: An explainer: the reasons it knows of for ``facts``' job (sync or async).
Explainer = Callable[[JobFacts], "Iterable[Reason] | Awaitable[Iterable[Reason]]"]


@dataclass(frozen=True, slots=True)
class Explanation:
    """The answer of ``queue.explain(job_id)``.

    ``status`` is None when there is no such job. ``reasons``: the core's first, then
    each explainer's, in the order they were added. ``blocked``: whether any reason
    holds the job back.
    """

    job_id: str
    status: JobStatus | None
    reasons: list[Reason]
    now_ms: int

    @property
    def blocked(self) -> bool:
        """True when at least one reason holds the job back."""
        return any(r.blocking for r in self.reasons)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (``--json``, the dashboard's API)."""
        return {
            "job_id": self.job_id,
            "status": None if self.status is None else self.status.value,
            "blocked": self.blocked,
            "now_ms": self.now_ms,
            "reasons": [r.to_dict() for r in self.reasons],
        }


def _int(v: Any) -> int | None:
    try:
        return None if v is None else int(v)
    except (TypeError, ValueError):
        return None


def _reply(value: Any) -> Any:
    """One reply of the facts pipeline: a key overwritten with another type (WRONGTYPE,
    a record damaged by hand) reads as absent, so the explanation still comes; any
    other error is raised."""
    if isinstance(value, ResponseError) and "WRONGTYPE" in str(value):
        return None
    if isinstance(value, Exception):
        raise value
    return value


def at(ms: int, now_ms: int) -> str:
    """A time for messages: UTC, and its distance from now
    (``"2026-01-02 03:04:05 UTC (in 3.2 s)"``)."""
    try:
        when = datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        when = f"{ms} ms"
    d = (ms - now_ms) / 1000
    rel = f"in {d:.1f} s" if d >= 0 else f"{-d:.1f} s ago"
    return f"{when} ({rel})"


async def explain_job(ctx: QueueContext, job_id: str) -> Explanation:
    """``JobQueue.explain``: the reasons job ``job_id`` of the queue is not running."""
    jid = query_id(job_id)
    queries = Queries(ctx)
    job = await queries.get_job_detail(jid)
    client = await ctx.client()
    keys = ctx.keys
    pipe = client.pipeline(transaction=False)
    pipe.hmget(keys.job(jid), *FACT_FIELDS)
    pipe.pttl(keys.hold())
    pipe.get(keys.limiter)
    pipe.pttl(keys.limiter)
    pipe.zrank(keys.wait, jid)
    pipe.hget(keys.meta, "paused")
    got, clock = await execute_with_clock(
        client, pipe, cluster=ctx.connection.is_cluster, raise_on_error=False
    )
    (sec, usec), raw, hold_ttl, lim_used, lim_ttl, rank, paused = [_reply(r) for r in (clock, *got)]
    now = int(sec) * 1000 + int(usec) // 1000
    if job is None:
        return Explanation(jid, None, [], now)
    fields = {
        f: reply_text(v) for f, v in zip(FACT_FIELDS, raw or (), strict=False) if v is not None
    }
    workers = await live_workers(ctx)
    facts = JobFacts(job, fields, now, workers, paused=paused == b"1")
    reasons = _core(ctx, facts, _int(hold_ttl) or -2, _int(lim_used), _int(lim_ttl) or -2, rank)
    damaged = await find_damage(client, keys.all)
    if damaged is not None:
        # A key of the queue's own layout damaged by hand: no job of it moves until then.
        reasons.insert(0, Reason("damaged-key", str(damaged), refs=(("key", damaged.key),)))
    if job.damaged:
        reasons.append(
            Reason(
                "damaged",
                f"the job's record is damaged ({clip(printable(job.damaged), 300)}): "
                "remove the job, or add it again",
                blocking=False,
            )
        )
    for explainer in list(ctx.explainers):
        reasons.extend(await _run(explainer, facts))
    if job.status is JobStatus.PENDING and not any(r.blocking for r in reasons):
        blocker = facts.blocker or "(unknown)"
        reasons.append(
            Reason(
                "parked",
                f"parked behind blocker {blocker!r}; it goes back to wait in the step "
                "that removes the blocker",
                refs=(("blocker", blocker),),
            )
        )
    return Explanation(jid, job.status, reasons, now)


async def _run(explainer: Explainer, facts: JobFacts) -> list[Reason]:
    name = getattr(explainer, "__qualname__", type(explainer).__name__)
    try:
        got = explainer(facts)
        if inspect.isawaitable(got):
            got = await got
        return [r for r in got if isinstance(r, Reason)]
    except Exception as exc:
        log.exception("explainer %s failed for job %s", name, printable(facts.job.id))
        return [
            Reason(
                "explainer-failed",
                f"explainer {name} failed: {clip(printable(safe_text(exc)), 200)}",
                blocking=False,
            )
        ]


def _core(
    ctx: QueueContext,
    facts: JobFacts,
    hold_ttl: int,
    lim_used: int | None,
    lim_ttl: int,
    rank: int | None,
) -> list[Reason]:
    job, now = facts.job, facts.now_ms
    st = job.status
    out: list[Reason] = []
    if st in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.DLQ):
        again = "retry it to run it again" if st is not JobStatus.COMPLETED else "it is done"
        out.append(Reason("finished", f"the job is finished ({st.value}): {again}"))
        return out
    if st is JobStatus.ACTIVE:
        return _running(facts)
    if st is JobStatus.DELAYED:
        due = job.delayed_until
        if due is not None:
            why = (
                f"retrying after failed attempt {job.attempts} of {job.max_attempts} "
                f"({clip(printable(job.failed_reason), 120)}): backoff until"
                if job.failed_reason and job.attempts
                else "delayed until"
            )
            out.append(Reason("delayed", f"{why} {at(due, now)}", until_ms=due))
        else:
            out.append(Reason("delayed", "delayed (its due time is not recorded)"))
    if facts.paused:
        out.append(Reason("queue-paused", f"queue {ctx.name!r} is paused: resume it to run jobs"))
    if st in _WAITING:
        if hold_ttl > 0:
            until = now + hold_ttl
            out.append(
                Reason(
                    "queue-held",
                    f"a processor raised RateLimited: queue {ctx.name!r} hands out nothing "
                    f"until {at(until, now)}",
                    until_ms=until,
                )
            )
        lim = ctx.limiter
        if lim is not None and lim_used is not None and lim_used >= lim.max and lim_ttl > 0:
            until = now + lim_ttl
            out.append(
                Reason(
                    "queue-limiter",
                    f"the queue limiter allows {lim.max} starts per {lim.duration} ms and "
                    f"the window is full until {at(until, now)}",
                    until_ms=until,
                )
            )
        if rank:
            out.append(Reason("in-line", f"{rank} job(s) are ahead of it in wait", blocking=False))
    if st in _NOT_STARTED:
        out.extend(_workers(ctx.name, facts))
    return out


def _workers(queue_name: str, facts: JobFacts) -> list[Reason]:
    name = facts.job.name
    if not facts.workers:
        return [
            Reason(
                "no-worker",
                f"no live worker is consuming queue {queue_name!r} (none sent a heartbeat "
                "in the last 15 s): start one",
            )
        ]
    if not any(w.can_process(name) for w in facts.workers):
        seen = ", ".join(printable(w.id) for w in facts.workers[:5])
        return [
            Reason(
                "no-worker",
                f"no live worker has a processor for {name!r} (live: {seen}); register one "
                f"with queue.process({name!r}, ...)",
                refs=tuple(("worker", w.id) for w in facts.workers[:5]),
            )
        ]
    return []


def _running(facts: JobFacts) -> list[Reason]:
    job, now = facts.job, facts.now_ms
    worker_id = job.worker or facts.fields.get("w") or "(unknown)"
    deadline = job.lease_deadline
    alive = any(w.id == worker_id for w in facts.workers)
    refs = (("worker", worker_id),)
    # Worker ids are read from Redis: shown escaped (no line break, no terminal control).
    worker = printable(worker_id)
    if deadline is None:
        return [Reason("lease-held", f"running on worker {worker}", blocking=False, refs=refs)]
    if deadline < now:
        return [
            Reason(
                "lease-expired",
                f"its lease (worker {worker}) expired at {at(deadline, now)}: "
                "the next claim of any worker recovers it",
                until_ms=deadline,
                refs=refs,
            )
        ]
    if not alive:
        return [
            Reason(
                "lease-held",
                f"the lease is held by worker {worker}, which sent no heartbeat lately, until "
                f"{at(deadline, now)}; then it is recovered and runs again",
                until_ms=deadline,
                refs=refs,
            )
        ]
    return [
        Reason(
            "lease-held",
            f"running: the lease is held by worker {worker} until {at(deadline, now)}, "
            "renewed while it runs",
            blocking=False,
            until_ms=deadline,
            refs=refs,
        )
    ]
