"""The public queue API as one definition: every method's signature, docstring, kind and
the way a façade over several queues routes it.

``QueueAPI`` is a ``typing.Protocol``: ``JobQueue`` satisfies it structurally (mypy checks
it wherever a ``JobQueue`` is used as a ``QueueAPI``). Each of its methods is declared
once, with ``@operation(kind, route, ...)``, and ``OPERATIONS`` collects them. Everything
else is built from that table instead of being written again:

* ``facade.MultiQueue`` (``PartitionedQueue``, a regional queue) subclasses ``QueueAPI``
  and gets every method generated from its route: *by key* (pick a member from the job's
  options), *by id* (parse the full id, ask one member, make ids in the answer full),
  *fan-out* (ask every member, merge), *broadcast* (apply to every member), *budget*
  (members in turn, sharing a ``limit``), *stream* (events), *register* (processors
  and middleware on every member), *unsupported* (a clear error), or *own* (handlers
  and workers, written once in ``MultiQueue``);
* ``sync`` gives each producer, query, admin and schedule method a blocking twin.

Why subclassing a Protocol: mypy then sees every generated method of a façade with its
exact signature, from this one place, with no stub written per façade. The bodies below
only raise (``_unimplemented``): a façade installs its own method before any call, and
JobQueue has its own. A body of ``...`` would make mypy treat the methods as abstract in
an explicit subclass and refuse to instantiate the façade.

Methods of ``JobQueue`` that only make sense on one physical queue (its Redis client, its
scripts, per-queue flow-control limits) are named in ``SINGLE_QUEUE_ONLY`` with the
reason; ``tests/test_facades.py`` keeps the two lists and ``JobQueue`` in step.
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, overload

from .enums import JobStatus

if TYPE_CHECKING:
    from .events import Handler, StreamEvent
    from .explain import Explainer, Explanation
    from .features.schedules import Schedule
    from .job import JobInfo
    from .jobspec import Normalizer
    from .middleware import EnqueueMiddleware, ProcessMiddleware
    from .options import JobOptions
    from .queries import JobPage
    from .queue import HealthStatus, QueueStats
    from .records import JobDetail

__all__ = [
    "OPERATIONS",
    "SINGLE_QUEUE_ONLY",
    "Ids",
    "Kind",
    "Merge",
    "Miss",
    "Operation",
    "QueueAPI",
    "Route",
    "operation",
]

F = TypeVar("F", bound=Callable[..., Any])
Fn = TypeVar("Fn", bound=Callable[..., Any])


#: What a method is for. The sync clients give the first four kinds blocking twins.
Kind = Literal["producer", "query", "admin", "schedule", "events", "registration", "lifecycle"]
#: How FAN_OUT, BROADCAST and BUDGET combine the members' answers: not at all, summed,
#: as stats, as health, as one ordered list of jobs, or list by list (``recover_stalled``).
Merge = Literal["none", "sum", "stats", "health", "jobs", "concat"]
#: What BY_ID gives for an id that is not a full id of the façade: None, [], or it raises
#: ``JobNotFoundError``.
Miss = Literal["none", "empty", "raise"]
#: Where job ids are in a method's answer (a façade makes them full ids): nowhere, the
#: answer, a list of ids, a ``JobInfo``, a list of them, a tuple of lists of ids.
Ids = Literal["none", "id", "ids", "job", "jobs", "id lists"]


class Route(str, enum.Enum):
    """How a façade over several member queues carries out a method."""

    #: One job: the façade picks the member from the job's options (``place``).
    BY_KEY = "by key"
    #: A batch: split by member (``place`` per job), sent in parallel, ids in input order.
    SPLIT_BY_KEY = "split by key"
    #: ``job_id`` is a full id: parsed (``parse_id``), one member asked with its own id.
    BY_ID = "by id"
    #: Every member asked at once; the answers merged (``Merge``).
    FAN_OUT = "fan-out"
    #: A command applied to every member at once (not atomically); results merged.
    BROADCAST = "broadcast"
    #: Members in turn, sharing the ``limit`` argument, until it is used up.
    BUDGET = "budget"
    #: The members' async iterators merged into one.
    STREAM = "stream"
    #: Registered on every member (processors, middleware, backoff strategies).
    REGISTER = "register"
    #: The façade base implements it itself (in-process handlers, workers, connections).
    OWN = "own"
    #: Not available on a façade: calling it raises ``ConfigurationError``.
    UNSUPPORTED = "unsupported"


_BLOCKING_KINDS = frozenset({"producer", "query", "admin", "schedule"})


@dataclass(frozen=True, slots=True)
class Operation:
    """One method of the queue API, as declared in ``QueueAPI``.

    Attributes:
        name: the method name.
        kind: what it is for.
        route: how a multi-queue façade carries it out.
        declaration: the declared function (signature and docstring).
        merge: how the members' answers combine (FAN_OUT, BROADCAST, BUDGET).
        ids: where job ids are in the answer.
        miss: BY_ID only: the answer for an id that is not a full id.
        note: UNSUPPORTED only: why, and what to use instead (shown in the error and
            the façade's docstring; ``{member}`` stands for what it calls a member).
        blocking: whether the sync clients have a blocking twin of it.
    """

    name: str
    kind: Kind
    route: Route
    declaration: Callable[..., Any]
    merge: Merge
    ids: Ids
    miss: Miss
    note: str
    blocking: bool

    @property
    def doc(self) -> str:
        """The declared docstring, dedented."""
        return inspect.getdoc(self.declaration) or ""

    @property
    def is_async(self) -> bool:
        """True for a coroutine method (False for registration, ``on``, ``events``)."""
        return inspect.iscoroutinefunction(self.declaration)

    def signature(self) -> inspect.Signature:
        """The declared signature, ``self`` included (as an ordinary first parameter)."""
        sig = inspect.signature(self.declaration)
        first, *rest = sig.parameters.values()
        return sig.replace(parameters=[first.replace(kind=first.POSITIONAL_OR_KEYWORD), *rest])


_declared: dict[str, Operation] = {}


def operation(
    kind: Kind,
    route: Route,
    *,
    merge: Merge = "none",
    ids: Ids = "none",
    miss: Miss = "raise",
    note: str = "",
) -> Callable[[F], F]:
    """Declare the decorated ``QueueAPI`` method as an operation (returns it unchanged)."""

    def declare(fn: F) -> F:
        blocking = kind in _BLOCKING_KINDS and inspect.iscoroutinefunction(fn)
        _declared[fn.__name__] = Operation(
            fn.__name__, kind, route, fn, merge, ids, miss, note, blocking
        )
        return fn

    return declare


# A schedule fires into one queue and is run by that queue's own worker: a façade has no
# single queue to hold it.
_NO_SCHEDULES = "schedules belong on a plain JobQueue (a schedule fires into one queue)"


# A cursor is a place in one queue's order; a merged one would need one per member.
_NO_CURSOR = (
    "cursors are per {member}: page one {member} with queue.queues[i].list_jobs(), "
    "or page the merged order with get_jobs_by_status(offset=...)"
)


def _unimplemented(obj: object) -> TypeError:
    return TypeError(
        f"{type(obj).__name__} declares this method of the queue API (kitium_queue.api."
        "QueueAPI) without implementing it: implement it, or build the class on "
        "facade.MultiQueue, which generates it"
    )


class QueueAPI(Protocol):
    """The public API of a queue, as ``JobQueue`` has it and every façade reproduces it.

    On a façade over several queues (``PartitionedQueue``) ids are the façade's full ids
    and each method's docstring says how it is carried out over the members.
    """

    name: str

    # ------------------------------------------------------------------ producer
    @operation("producer", Route.BY_KEY, ids="id")
    async def add_job(
        self,
        /,
        job_name: str,
        data: Any = None,
        options: JobOptions | Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> str:
        """Add one job and return its id.

        Job options come as keyword arguments (``attempts=5, delay=1000``) or as
        ``options`` (a ``JobOptions`` or a dict); an unknown option raises
        ``ConfigurationError``. A ``job_id`` or ``idempotency_key`` that is already
        present returns the existing job's id and writes nothing.
        """
        raise _unimplemented(self)

    @operation("producer", Route.SPLIT_BY_KEY, ids="ids")
    async def add_jobs(self, /, jobs: Iterable[Any]) -> list[str]:
        """Add many jobs in few round trips; returns their ids in input order.

        Each item is ``{"name", "data", "options"}`` or ``(name, data[, options])``.
        ``PartialEnqueueError`` says which jobs are known written when only part of the
        call reached Redis.
        """
        raise _unimplemented(self)

    # ------------------------------------------------------------------ queries
    @operation("query", Route.BY_ID, ids="job", miss="none")
    async def get_job_status(self, /, job_id: str) -> JobInfo | None:
        """The record of one job (a damaged record has ``damaged`` set), or None."""
        raise _unimplemented(self)

    @operation("query", Route.BY_ID, ids="job", miss="none")
    async def get_job_detail(self, /, job_id: str) -> JobDetail | None:
        """``get_job_status`` plus the worker holding the job, its lease deadline and
        how many log lines it has; None if there is no such job."""
        raise _unimplemented(self)

    @operation("query", Route.BY_ID, miss="raise")
    async def explain(self, /, job_id: str) -> Explanation:
        """Why a job is not running: its delay, a paused queue, no live worker for its
        name, the lease holder, and what enabled features report (group turn,
        dependencies, open breaker, rate window, concurrency cap)."""
        raise _unimplemented(self)

    @operation("query", Route.BY_ID, miss="empty")
    async def get_job_logs(self, /, job_id: str, start: int = 0, end: int = -1) -> list[str]:
        """Lines a processor logged with ``job.log`` (``start``/``end`` as in LRANGE)."""
        raise _unimplemented(self)

    @operation("query", Route.FAN_OUT, merge="jobs", ids="jobs")
    async def get_jobs_by_status(
        self,
        /,
        status: JobStatus | str,
        limit: int = 100,
        offset: int = 0,
        *,
        include_data: bool = True,
    ) -> list[JobInfo]:
        """Up to ``limit`` jobs in one state, after skipping ``offset``, in the order they
        run or finished; ``include_data=False`` leaves data, result, progress and
        stacktrace unread (None)."""
        raise _unimplemented(self)

    @operation("query", Route.UNSUPPORTED, note=_NO_CURSOR)
    async def list_jobs(
        self,
        /,
        status: JobStatus | str,
        *,
        limit: int = 100,
        cursor: str | None = None,
        include_data: bool = True,
    ) -> JobPage:
        """A page of jobs in one state and the cursor of the next page (a place in the
        state's order, so jobs coming and going neither repeat nor skip others)."""
        raise _unimplemented(self)

    @operation("query", Route.FAN_OUT, merge="jobs", ids="jobs")
    async def get_dlq_jobs(
        self, /, limit: int = 100, *, include_data: bool = True
    ) -> list[JobInfo]:
        """Dead-lettered jobs, newest first, with their failure reason and traceback
        (``include_data``: as in ``get_jobs_by_status``)."""
        raise _unimplemented(self)

    @operation("query", Route.FAN_OUT, merge="stats")
    async def get_stats(self, /) -> QueueStats:
        """Counts per state, whether the queue is paused, and ``latency_ms``."""
        raise _unimplemented(self)

    @operation("query", Route.FAN_OUT, merge="health")
    async def health_check(self, /) -> HealthStatus:
        """Ping Redis; the answer is truthy when healthy. Never raises."""
        raise _unimplemented(self)

    @operation("query", Route.STREAM)
    def events(
        self, /, *, last_id: str = "$", block_ms: int = 5000, follow: bool = True
    ) -> AsyncIterator[StreamEvent]:
        """Iterate the durable event stream (events of every process). Follows the
        stream forever (also from ``last_id="0"``) unless ``follow=False``."""
        raise _unimplemented(self)

    # ------------------------------------------------------------------ admin
    @operation("admin", Route.BROADCAST)
    async def pause(self, /) -> None:
        """Pause: running jobs finish, nothing new starts, in every worker."""
        raise _unimplemented(self)

    @operation("admin", Route.BROADCAST)
    async def resume(self, /) -> None:
        """Resume a paused queue."""
        raise _unimplemented(self)

    @operation("admin", Route.BROADCAST, merge="sum")
    async def drain(self, /, *, delayed: bool = True) -> int:
        """Remove every job that has not started; returns how many."""
        raise _unimplemented(self)

    @operation("admin", Route.BROADCAST)
    async def clear(self, /, *, force: bool = False) -> None:
        """Delete every job and the state that goes with jobs (``QueueActiveError`` while
        jobs run, unless forced); what is kept on purpose: ``JobQueue.clear``."""
        raise _unimplemented(self)

    @operation("admin", Route.BY_ID)
    async def retry_job(self, /, job_id: str) -> None:
        """Run a failed, dead-lettered or completed job again with fresh attempts."""
        raise _unimplemented(self)

    @operation("admin", Route.BY_ID)
    async def remove_job(self, /, job_id: str) -> bool:
        """Delete a job that is not running; False if there was none."""
        raise _unimplemented(self)

    @operation("admin", Route.BY_ID)
    async def cancel_job(self, /, job_id: str) -> str:
        """Stop a job: ``"removed"``, ``"cancelling"`` (running) or ``"finished"``."""
        raise _unimplemented(self)

    @operation("admin", Route.BUDGET, merge="sum")
    async def bulk_retry(
        self, /, status: JobStatus | str = JobStatus.FAILED, limit: int = 1000
    ) -> int:
        """Retry up to ``limit`` jobs of a finished state, oldest first; how many moved."""
        raise _unimplemented(self)

    @operation("admin", Route.BUDGET, merge="sum")
    async def replay_dlq(self, /, limit: int = 1000) -> int:
        """Move up to ``limit`` dead-lettered jobs back to waiting; how many moved."""
        raise _unimplemented(self)

    @operation("admin", Route.BROADCAST, merge="sum")
    async def promote_delayed(self, /, limit: int = 1000) -> int:
        """Move due delayed jobs to waiting now; how many moved."""
        raise _unimplemented(self)

    @operation("admin", Route.BY_ID)
    async def promote_job(self, /, job_id: str) -> None:
        """Move one delayed job to waiting now, due or not (``JobStateError`` when it
        is not delayed)."""
        raise _unimplemented(self)

    @operation("admin", Route.BUDGET, merge="concat", ids="id lists")
    async def recover_stalled(self, /, limit: int = 1000) -> tuple[list[str], list[str]]:
        """Requeue jobs whose lease expired: (requeued ids, dead-lettered ids)."""
        raise _unimplemented(self)

    # ------------------------------------------------------------------ schedules
    @operation("schedule", Route.UNSUPPORTED, note=_NO_SCHEDULES)
    async def schedule_job(
        self, /, job_name: str, data: Any, cron_pattern: str, **options: Any
    ) -> Schedule:
        """Enqueue ``job_name`` on a cron schedule (upserts by schedule id)."""
        raise _unimplemented(self)

    @operation("schedule", Route.UNSUPPORTED, note=_NO_SCHEDULES)
    async def schedule_every(
        self, /, job_name: str, data: Any, interval_ms: Any, **options: Any
    ) -> Schedule:
        """Enqueue ``job_name`` every ``interval_ms`` (upserts by schedule id)."""
        raise _unimplemented(self)

    @operation("schedule", Route.UNSUPPORTED, note=_NO_SCHEDULES)
    async def get_schedules(self, /) -> list[Schedule]:
        """Every schedule, oldest first."""
        raise _unimplemented(self)

    @operation("schedule", Route.UNSUPPORTED, note=_NO_SCHEDULES)
    async def get_schedule(self, /, schedule_id: str) -> Schedule | None:
        """One schedule (definition and state), or None."""
        raise _unimplemented(self)

    @operation("schedule", Route.UNSUPPORTED, note=_NO_SCHEDULES)
    async def update_schedule(self, /, schedule_id: str, **changes: Any) -> Schedule:
        """Change some fields of a schedule (``ScheduleNotFoundError`` if there is none)."""
        raise _unimplemented(self)

    @operation("schedule", Route.UNSUPPORTED, note=_NO_SCHEDULES)
    async def remove_schedule(self, /, schedule_id: str) -> bool:
        """Delete a schedule (its jobs stay); False if there was none."""
        raise _unimplemented(self)

    @operation("schedule", Route.UNSUPPORTED, note=_NO_SCHEDULES)
    async def pause_schedule(self, /, schedule_id: str) -> bool:
        """Stop a schedule from firing; False if there is none."""
        raise _unimplemented(self)

    @operation("schedule", Route.UNSUPPORTED, note=_NO_SCHEDULES)
    async def resume_schedule(self, /, schedule_id: str) -> bool:
        """Resume a paused schedule at its next tick; False if there is none."""
        raise _unimplemented(self)

    # ------------------------------------------------------------------ events
    @operation("events", Route.OWN)
    def on(self, /, event: str, handler: Handler) -> None:
        """Call ``handler(EventData)`` on every ``event`` in this process."""
        raise _unimplemented(self)

    @operation("events", Route.OWN)
    def off(self, /, event: str, handler: Handler) -> None:
        """Remove a handler added with ``on``."""
        raise _unimplemented(self)

    # ------------------------------------------------------------------ registration
    @overload
    def process(
        self, /, job_name: str, *, mode: str = ..., replace: bool = ...
    ) -> Callable[[Fn], Fn]: ...

    @overload
    def process(self, /, job_name: str, fn: Fn, *, mode: str = ..., replace: bool = ...) -> Fn: ...

    @operation("registration", Route.REGISTER)
    def process(
        self, /, job_name: str, fn: Any = None, *, mode: str = "auto", replace: bool = False
    ) -> Any:
        """Register the processor of ``job_name`` (usable as a decorator); each name
        once unless ``replace=True``."""
        raise _unimplemented(self)

    @operation("registration", Route.REGISTER)
    def process_batch(
        self,
        /,
        job_name: str,
        fn: Callable[..., Any] | None = None,
        *,
        size: int | None = None,
        min_size: int | None = None,
        max_wait: Any = None,
    ) -> Any:
        """Register a processor that takes up to ``size`` jobs at once (a decorator too);
        arguments left out take the queue's batch defaults."""
        raise _unimplemented(self)

    @operation("registration", Route.REGISTER)
    def declare_option(
        self,
        /,
        name: str,
        *,
        feature: str,
        normalize: Normalizer | None = None,
        default: Any = None,
        stored: bool = True,
        doc: str = "",
    ) -> None:
        """Declare the job option ``name``, owned by ``feature`` (until declared, it is
        refused as unknown)."""
        raise _unimplemented(self)

    @operation("registration", Route.REGISTER)
    def use_enqueue(self, /, middleware: EnqueueMiddleware) -> None:
        """Add enqueue middleware, run by ``add_job``/``add_jobs`` before validation."""
        raise _unimplemented(self)

    @operation("registration", Route.REGISTER)
    def use_process(self, /, middleware: ProcessMiddleware) -> None:
        """Add process middleware ``async fn(job, call_next) -> result`` around every
        run (first added is outermost); add it before the worker starts."""
        raise _unimplemented(self)

    @operation("registration", Route.REGISTER)
    def add_explainer(self, /, explainer: Explainer) -> None:
        """Add an explainer ``fn(facts) -> [Reason]`` (sync or async) to ``explain``."""
        raise _unimplemented(self)

    @operation("registration", Route.REGISTER)
    def add_gauge(self, /, name: str, fn: Callable[[], Any] | None) -> None:
        """Provide gauge ``name``: ``fn()`` (sync or async) returns its value or None."""
        raise _unimplemented(self)

    @operation("registration", Route.REGISTER)
    def register_backoff(self, /, name: str, fn: Callable[..., Any]) -> None:
        """Register a custom backoff ``fn(attempts_made, error, job) -> delay_ms | None``."""
        raise _unimplemented(self)

    # ------------------------------------------------------------------ lifecycle
    @operation("lifecycle", Route.OWN)
    async def start(self, /, *, concurrency: int | None = None) -> None:
        """Start consuming in this process; returns once the worker runs."""
        raise _unimplemented(self)

    @operation("lifecycle", Route.OWN)
    async def run_worker(
        self, /, *, concurrency: int | None = None, install_signal_handlers: bool = True
    ) -> None:
        """Consume until SIGTERM/SIGINT (or ``close()``), then stop gracefully."""
        raise _unimplemented(self)

    @operation("lifecycle", Route.OWN)
    async def close(self, /) -> None:
        """Stop the worker gracefully (if any) and release the connections."""
        raise _unimplemented(self)


#: Every operation of ``QueueAPI``, in declaration order.
OPERATIONS: Mapping[str, Operation] = MappingProxyType(dict(_declared))

#: Public methods of ``JobQueue`` that belong to one physical queue, and why.
SINGLE_QUEUE_ONLY: Mapping[str, str] = MappingProxyType(
    {
        "client": "the queue's own Redis client",
        "run": "runs one of the queue's scripts on its keys",
        "call": "prepares one of the queue's script calls",
        "argv_head": "the queue's script argument prefix",
        "policy_for": "the queue's resolved retry policy",
        "own_options": "features declare their options on each queue they serve",
        "set_write_barrier": "a write barrier follows one queue's writes on its connection; "
        "features set it on each member queue they serve",
        "add_service": "a service runs with one queue's worker; on each member it would run "
        "once per member",
        "set_rate_limit": "a limit set on every member would admit members x max",
        "set_concurrency_limit": "a limit set on every member would admit members x max",
        "set_global_concurrency": "a cap set on every member would admit members x max",
        "subscribe": "lifecycle hooks carry one queue's own job ids and records: subscribe on "
        "each member queue knowingly",
        "unsubscribe": "see subscribe",
        "read_gauge": "a gauge is one queue's reading (set on every member with add_gauge, "
        "each member may read another value): read it on a member",
    }
)
