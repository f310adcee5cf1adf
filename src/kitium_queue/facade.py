"""``MultiQueue``: the base of a façade that makes several queues act as one
(``PartitionedQueue``; a regional queue).

A façade names its member queues (``queues``) and answers three questions: which member
takes a new job (``place``), how a full id splits into member and inner id
(``parse_id``) and back (``full_id``). Every other method of ``api.QueueAPI`` is
generated here from its route in ``api.OPERATIONS``, one routing function per route, so a
new façade writes none of them and a new API method reaches every façade at once. A
façade may still define any method itself; a generated one is then left out.

Generated methods carry the declared signature (``inspect.signature``, ``help()``) and
docstring, plus a sentence on how the façade carries them out. Members are called through
their public methods, looked up on each call.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
from abc import abstractmethod
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, Generic, TypeVar

from .api import OPERATIONS, Ids, Miss, Operation, QueueAPI, Route
from .enums import JobStatus
from .errors import (
    ConfigurationError,
    JobNotFoundError,
    KitiumQueueError,
    PartialEnqueueError,
)
from .events import EventData, Handler, StreamEvent, check_handler
from .job import JobInfo
from .jobspec import job_item, job_items, options_dict
from .lifecycle import job_name_for_processor
from .queue import HealthStatus, QueueStats
from .serving import serve_until_stopped

__all__ = ["MultiQueue"]

Q = TypeVar("Q", bound=QueueAPI)
M = TypeVar("M", bound="MultiQueue[Any]")

_FINISHED = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.DLQ)
# Every generated method, so that a subclass gets its own (with its name in the
# docstring) while a method a class defines itself is never replaced.
_generated: set[Callable[..., Any]] = set()


class MultiQueue(QueueAPI, Generic[Q]):
    """Several queues acting as one: every ``QueueAPI`` method, routed over ``queues``.

    A subclass sets ``member_label`` (``"partition"``, ``"region"``), passes its members
    to ``__init__`` and implements ``place``, ``parse_id`` and ``full_id``. It may
    override ``not_found``, ``describe_backend`` and ``is_worker_running`` (health), and
    the lifecycle (``start``, ``close``): by default every member runs its own worker.

    Args:
        name: the façade's (logical) queue name.
        queues: the member queues, in member order (index ``i`` in full ids).
    """

    #: What a member is called in messages, docstrings and the merged event stream.
    member_label: ClassVar[str] = "member"
    #: The keyword of ``add_job`` (and option of an ``add_jobs`` item) that pins a job to
    #: a member, if the façade has one; ``place`` takes it out of the options.
    member_key: ClassVar[str | None] = None

    def __init__(self, name: str, queues: Sequence[Q]) -> None:
        self.name = name
        self.queues: list[Q] = list(queues)
        #: Set once this façade's workers stopped: what ``run_worker`` waits for.
        self.stopped = asyncio.Event()
        # One entry per ``on``: (event, handler, its relay on each member).
        self._relays: list[tuple[str, Handler, list[Handler]]] = []

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _install(cls, cls.member_label, cls.member_key)

    # ------------------------------------------------------------------ façade hooks
    @abstractmethod
    def place(self, options: dict[str, Any]) -> int:
        """The member index that takes a new job with these options (it may remove
        façade-only options, such as a partition key, from ``options``)."""

    @abstractmethod
    def parse_id(self, job_id: str) -> tuple[int, str] | None:
        """``(member index, id within it)`` of a full id, or None if it is not one."""

    @abstractmethod
    def full_id(self, index: int, inner: str) -> str:
        """The full id of job ``inner`` of member ``index`` (``parse_id``'s inverse)."""

    def not_found(self, job_id: Any) -> JobNotFoundError:
        """The error for an id that is not a full id of this façade."""
        shown = repr(job_id[:100]) if isinstance(job_id, str) else type(job_id).__name__
        return JobNotFoundError(
            f"{shown} is not a job id of {type(self).__name__} {self.name!r}: use the full "
            "id add_job returned"
        )

    def describe_backend(self, parts: Sequence[HealthStatus]) -> str:
        """``backend`` of the merged ``health_check``: the members' distinct ones."""
        return ", ".join(dict.fromkeys(h.backend for h in parts))

    def is_worker_running(self) -> bool:
        """Whether this façade runs workers of its own in this process (members that run
        their own workers say so in their health)."""
        return False

    def designated(self, op: Operation) -> int | None:
        """The member that carries out an operation routed UNSUPPORTED (schedules,
        cursors), if this façade has one for it; None (default): it raises
        ``ConfigurationError``. A regional queue names its primary's member for the
        schedules (they fire into the global queue and are replicated with it)."""
        return None

    def members_for(self, op: Operation) -> Sequence[int]:
        """The indexes of the members a FAN_OUT, BROADCAST, BUDGET or STREAM operation
        ``op`` is carried out on, in order: every member by default. A façade some of
        whose members are not serving copies (a regional queue's replicas of the
        primary) narrows it per operation; the list must not be empty."""
        return range(len(self.queues))

    # ------------------------------------------------------------------ in-process events
    def on(self, event: str, handler: Handler) -> None:
        """Call ``handler`` on ``event`` of any member; ``job_id`` is the full id."""
        check_handler(event, handler)
        relays: list[Handler] = []
        for i, q in enumerate(self.queues):

            def relay(data: EventData, i: int = i) -> Any:
                if data.job_id is not None:
                    data = dataclasses.replace(data, job_id=self.full_id(i, data.job_id))
                return handler(data)

            relays.append(relay)
            q.on(event, relay)
        self._relays.append((str(event), handler, relays))

    def off(self, event: str, handler: Handler) -> None:
        """Remove a handler added with ``on`` (one registration of it, as ``JobQueue.off``;
        found by equality, so ``obj.method`` given again is the same handler)."""
        for n, (name, added, relays) in enumerate(self._relays):
            if name == str(event) and added == handler:
                del self._relays[n]
                for q, relay in zip(self.queues, relays, strict=False):
                    q.off(event, relay)
                return

    # ------------------------------------------------------------------ lifecycle
    async def start(self, *, concurrency: int | None = None) -> None:
        """Start every member's own worker (``concurrency`` each)."""
        self.stopped.clear()
        await asyncio.gather(*(q.start(concurrency=concurrency) for q in self.queues))

    async def run_worker(
        self, *, concurrency: int | None = None, install_signal_handlers: bool = True
    ) -> None:
        """Run until SIGTERM/SIGINT (or ``close()``), then stop gracefully."""
        await serve_until_stopped(
            self.stopped,  # the signals' handlers are in place before the workers start
            self.close,
            install_signal_handlers=install_signal_handlers,
            start=lambda: self.start(concurrency=concurrency),
        )

    async def close(self) -> None:
        """Close every member (stopping its worker) and release the connections."""
        await asyncio.gather(*(q.close() for q in self.queues))
        self.stopped.set()

    async def __aenter__(self: M) -> M:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


# ---------------------------------------------------------------------- id translation
def _with_full_ids(mq: MultiQueue[Any], i: int, ids: Ids, value: Any) -> Any:
    """``value`` (a member's answer) with its job ids made full ids of member ``i``."""
    if ids == "none" or value is None:
        return value
    if ids == "id":
        return mq.full_id(i, value)
    if ids == "ids":
        return [mq.full_id(i, v) for v in value]
    if ids == "job":
        return dataclasses.replace(value, id=mq.full_id(i, value.id))
    if ids == "jobs":
        return [dataclasses.replace(v, id=mq.full_id(i, v.id)) for v in value]
    return tuple([mq.full_id(i, v) for v in part] for part in value)  # "id lists"


# ---------------------------------------------------------------------- merging answers
def _merge(mq: MultiQueue[Any], op: Operation, args: Mapping[str, Any], parts: list[Any]) -> Any:
    """One answer from the members' answers (already with full ids)."""
    how = op.merge
    if how == "none":
        return None
    if how == "sum":
        return sum(parts)
    if how == "concat":
        return tuple([x for part in parts for x in part[k]] for k in range(len(parts[0])))
    if how == "stats":
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
            pending=sum(s.pending for s in parts),
        )
    if how == "health":
        bad = [h for h in parts if not h.healthy]
        lat = [h.redis_latency_ms for h in parts if h.redis_latency_ms is not None]
        return HealthStatus(
            healthy=not bad,
            redis_latency_ms=max(lat) if lat else None,
            backend=mq.describe_backend(parts),
            error=bad[0].error if bad else None,
            worker_running=mq.is_worker_running() or any(h.worker_running for h in parts),
        )
    # "jobs": get_jobs_by_status, or get_dlq_jobs (whose jobs are all dead-lettered).
    status = JobStatus(args.get("status", JobStatus.DLQ))
    merged: list[JobInfo] = [info for part in parts for info in part]

    def order(i: JobInfo) -> tuple[int, int]:
        if status in _FINISHED:
            return (0, -(i.finished_at or 0))
        if status is JobStatus.DELAYED:
            return (0, i.delayed_until or 0)
        if status is JobStatus.ACTIVE:
            return (0, i.started_at or 0)
        return (-i.priority, i.created_at or 0)

    merged.sort(key=order)
    skip = args.get("offset", 0)
    return merged[skip : skip + args["limit"]]


def _count_arg(value: Any) -> int:
    """``value`` if it is a plain int (a limit or offset), else -1."""
    return value if isinstance(value, int) and not isinstance(value, bool) else -1


def _count(value: Any) -> int:
    """How much of a BUDGET's ``limit`` an answer used."""
    return value if isinstance(value, int) else sum(len(part) for part in value)


# ---------------------------------------------------------------------- the routes
# Each builder returns the function a façade class gets for one operation. The members'
# methods are looked up at each call (getattr), so a member replaced or patched is used.
Builder = Callable[[Operation, inspect.Signature], Callable[..., Any]]


def _by_key(op: Operation, sig: inspect.Signature) -> Callable[..., Any]:
    varkw = next(p.name for p in sig.parameters.values() if p.kind is p.VAR_KEYWORD)

    async def method(self: MultiQueue[Any], *args: Any, **kwargs: Any) -> Any:
        bound = sig.bind(self, *args, **kwargs)
        opts = {**options_dict(bound.arguments.get("options")), **bound.arguments.pop(varkw, {})}
        if self.member_key is not None and self.member_key in bound.arguments:
            # The same key inside ``options`` takes precedence over the keyword.
            opts.setdefault(self.member_key, bound.arguments.pop(self.member_key))
        i = self.place(opts)
        bound.arguments["options"] = opts
        answer = await getattr(self.queues[i], op.name)(*bound.args[1:], **bound.kwargs)
        return _with_full_ids(self, i, op.ids, answer)

    return method


def _global_item(exc: KitiumQueueError, positions: Sequence[int]) -> None:
    """A member refused item ``k`` of its share (``add_jobs item k: ...``): say the
    position the caller gave it, ``positions[k]``, in place."""
    text = exc.args[0] if len(exc.args) == 1 and isinstance(exc.args[0], str) else ""
    head, sep, rest = text.partition(": ")
    k = head.removeprefix("add_jobs item ")
    if sep and head.startswith("add_jobs item ") and k.isdigit() and int(k) < len(positions):
        exc.args = (f"add_jobs item {positions[int(k)]}: {rest}",)


def _split_by_key(op: Operation, sig: inspect.Signature) -> Callable[..., Any]:
    async def method(self: MultiQueue[Any], jobs: Iterable[Any]) -> list[str]:
        groups: dict[int, list[tuple[int, tuple[str, Any, dict[str, Any]]]]] = {}
        n = 0
        for n, item in job_items(jobs):
            name, data, opts = job_item(n, item)
            groups.setdefault(self.place(opts), []).append((n, (name, data, opts)))
        out: list[str] = [""] * (n + 1 if groups else 0)

        async def one(i: int, items: list[tuple[int, tuple[str, Any, dict[str, Any]]]]) -> None:
            try:
                ids = await getattr(self.queues[i], op.name)([job for _, job in items])
            except PartialEnqueueError as exc:
                # Positions and ids local to the member: record what is known written.
                for (pos, _), inner in zip(items, exc.written_ids, strict=False):
                    out[pos] = self.full_id(i, inner)
                raise
            except KitiumQueueError as exc:
                _global_item(exc, [pos for pos, _ in items])
                raise
            for (pos, _), inner in zip(items, ids, strict=True):
                out[pos] = self.full_id(i, inner)

        results = await asyncio.gather(
            *(one(i, items) for i, items in groups.items()), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if not errors:
            return out
        first = next((k for k, v in enumerate(out) if not v), len(out))
        cause = errors[0]
        if not isinstance(cause, Exception):
            raise cause  # cancellation and the like, as they are
        if first == 0 and not any(out):
            raise cause  # nothing is known written: the error as it is
        raise PartialEnqueueError(
            f"{op.name} on {self.name!r}: jobs from position {first} are not known to be "
            f"written ({type(cause).__name__}: {cause}); retry them with job ids or "
            "idempotency keys",
            out[:first],
            first,
        ) from cause

    return method


def _by_id(op: Operation, sig: inspect.Signature) -> Callable[..., Any]:
    async def method(self: MultiQueue[Any], *args: Any, **kwargs: Any) -> Any:
        bound = sig.bind(self, *args, **kwargs)
        found = self.parse_id(bound.arguments["job_id"])
        if found is None:
            if op.miss == "raise":
                raise self.not_found(bound.arguments["job_id"])
            return None if op.miss == "none" else []
        i, inner = found
        bound.arguments["job_id"] = inner
        answer = await getattr(self.queues[i], op.name)(*bound.args[1:], **bound.kwargs)
        return _with_full_ids(self, i, op.ids, answer)

    return method


def _fan_out(op: Operation, sig: inspect.Signature) -> Callable[..., Any]:
    async def method(self: MultiQueue[Any], *args: Any, **kwargs: Any) -> Any:
        bound = sig.bind(self, *args, **kwargs)
        asked = bound
        skip = bound.arguments.get("offset", 0)
        limit = bound.arguments.get("limit", 0)
        if op.merge == "jobs" and _count_arg(skip) > 0 and _count_arg(limit) >= 0:
            # An offset into the merged order: every member's first offset + limit jobs
            # hold the wanted ones. Values members refuse reach them unchanged.
            asked = sig.bind(self, *args, **kwargs)
            asked.arguments.update(limit=skip + limit, offset=0)
        members = list(self.members_for(op))
        answers = await asyncio.gather(
            *(getattr(self.queues[i], op.name)(*asked.args[1:], **asked.kwargs) for i in members)
        )
        parts = [_with_full_ids(self, i, op.ids, a) for i, a in zip(members, answers, strict=True)]
        bound.apply_defaults()
        return _merge(self, op, bound.arguments, parts)

    return method


def _budget(op: Operation, sig: inspect.Signature) -> Callable[..., Any]:
    async def method(self: MultiQueue[Any], *args: Any, **kwargs: Any) -> Any:
        bound = sig.bind(self, *args, **kwargs)
        bound.apply_defaults()
        limit = bound.arguments["limit"]
        used = 0
        parts: list[Any] = []
        for n, i in enumerate(self.members_for(op)):
            # The first member is always asked, with the whole limit: it validates it.
            if n and used >= limit:
                break
            bound.arguments["limit"] = limit - used
            answer = await getattr(self.queues[i], op.name)(*bound.args[1:], **bound.kwargs)
            parts.append(_with_full_ids(self, i, op.ids, answer))
            used += _count(answer)
        return _merge(self, op, bound.arguments, parts)

    return method


def _stream(op: Operation, sig: inspect.Signature) -> Callable[..., Any]:
    async def method(self: MultiQueue[Any], *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        bound = sig.bind(self, *args, **kwargs)
        last_id = bound.arguments.get("last_id", "$")
        label = self.member_label
        if last_id not in ("$", "0"):
            raise ConfigurationError(
                f"last_id of {type(self).__name__} {self.name!r} must be '$' or '0', got "
                f"{last_id!r}; entry ids are per {label} (read one {label} with "
                "queue.queues[i].events())"
            )
        inbox: asyncio.Queue[tuple[int, StreamEvent | Exception | None]] = asyncio.Queue(
            maxsize=1000
        )

        async def read(i: int) -> None:
            try:
                async for ev in getattr(self.queues[i], op.name)(**bound.kwargs):
                    await inbox.put((i, ev))
            except Exception as exc:  # handed to the consumer, raised there
                await inbox.put((i, exc))
                return
            await inbox.put((i, None))

        readers = [asyncio.ensure_future(read(i)) for i in self.members_for(op)]
        try:
            open_ = len(readers)
            while open_:
                i, item = await inbox.get()
                if item is None:
                    open_ -= 1
                elif isinstance(item, Exception):
                    raise item
                else:
                    yield StreamEvent(
                        item.id,
                        item.event,
                        self.full_id(i, item.job_id) if item.job_id else "",
                        {**item.fields, label: str(i)},
                    )
        finally:
            for r in readers:
                r.cancel()
            await asyncio.gather(*readers, return_exceptions=True)

    return method


def _register(op: Operation, sig: inspect.Signature) -> Callable[..., Any]:
    fn = sig.parameters.get("fn")
    decorates = fn is not None and fn.default is None  # ``process(name)`` returns a decorator

    def method(self: MultiQueue[Any], *args: Any, **kwargs: Any) -> Any:
        bound = sig.bind(self, *args, **kwargs)

        def each() -> Any:
            answers = [getattr(q, op.name)(*bound.args[1:], **bound.kwargs) for q in self.queues]
            return answers[0] if answers else None

        if decorates and bound.arguments.get("fn") is None:
            if "job_name" in bound.arguments:
                # A bare ``@queue.process`` passes the function as the name: refused now,
                # not after its jobs were dead-lettered for want of a processor.
                job_name_for_processor(bound.arguments["job_name"])

            # Decorator form (``@queue.process("name")``): register once given the function.
            def register(f: Any) -> Any:
                bound.arguments["fn"] = f
                each()
                return f

            return register
        return each()

    return method


def _unsupported(op: Operation, sig: inspect.Signature) -> Callable[..., Any]:
    async def method(self: MultiQueue[Any], *args: Any, **kwargs: Any) -> Any:
        sig.bind(self, *args, **kwargs)  # a wrong call is a TypeError, as anywhere
        i = self.designated(op)
        if i is not None:
            return await getattr(self.queues[i], op.name)(*args, **kwargs)
        raise ConfigurationError(
            f"{op.name} is not available on {type(self).__name__} {self.name!r}: "
            + op.note.format(member=self.member_label)
        )

    return method


_BUILDERS: dict[Route, Builder] = {
    Route.BY_KEY: _by_key,
    Route.SPLIT_BY_KEY: _split_by_key,
    Route.BY_ID: _by_id,
    Route.FAN_OUT: _fan_out,
    Route.BROADCAST: _fan_out,
    Route.BUDGET: _budget,
    Route.STREAM: _stream,
    Route.REGISTER: _register,
    Route.UNSUPPORTED: _unsupported,
}

_MISS: dict[Miss, str] = {
    "none": "gives None",
    "empty": "gives an empty list",
    "raise": "raises ``JobNotFoundError``",
}


def _with_keyword(sig: inspect.Signature, key: str) -> inspect.Signature:
    """``sig`` with a keyword-only ``key: str | None = None`` before its ``**kwargs``."""
    *head, varkw = sig.parameters.values()
    pin = inspect.Parameter(
        key, inspect.Parameter.KEYWORD_ONLY, default=None, annotation="str | None"
    )
    return sig.replace(parameters=[*head, pin, varkw])


def _how(op: Operation, cls: type, label: str, key: str | None) -> str:
    """The sentence a generated docstring adds: how ``cls`` carries ``op`` out."""
    each = f"every {label}"
    pinned = f" (``{key}=`` pins it)" if key else ""
    batch_pin = f" (an item's ``{key}`` option pins it)" if key else ""
    merged = {
        "none": "",
        "sum": "; the counts summed",
        "concat": f"; the lists joined, {label} by {label}",
        "stats": f"; counts summed, ``is_paused`` when {each} is paused, ``latency_ms`` "
        "the largest",
        "health": f"; healthy when {each} is, with the first error and the largest latency",
        "jobs": "; merged in the state's order (finished jobs newest first, waiting ones by "
        "priority then age, delayed ones by due time, active ones by start), at most "
        "``limit`` in all (an ``offset`` applies to the merged order: each "
        f"{label} is asked for ``offset + limit``)",
    }[op.merge]
    text = {
        Route.BY_KEY: f"the job goes to the {label} ``place`` picks from its options"
        f"{pinned}; the id returned is the full id",
        Route.SPLIT_BY_KEY: f"one batch per {label}{batch_pin}, all in parallel; full ids "
        "in input order. ``PartialEnqueueError.written_ids`` are the full ids of the "
        "longest run of input jobs, from the first, known written (later jobs of other "
        f"{label}s may be written too: retry with job ids or idempotency keys)",
        Route.BY_ID: "``job_id`` is a full id, as ``add_job`` returned it (see ``parse_id``); "
        f"any other id {_MISS[op.miss]}, no other reading of it is tried",
        Route.FAN_OUT: f"asked of {each} at once{merged}",
        Route.BROADCAST: f"applied to {each} at once with the same arguments, not "
        f"atomically{merged}",
        Route.BUDGET: f"{label}s in turn, sharing ``limit`` until it is used up{merged}",
        Route.STREAM: f"one reader per {label}: one {label}'s events keep their order, "
        f"different {label}s' interleave as they arrive; ``last_id`` is ``'$'`` or ``'0'`` "
        f"(entry ids are per {label}); ``job_id`` is the full id and "
        f"``fields[{label!r}]`` the {label} index",
        Route.REGISTER: f"registered on {each}",
        Route.UNSUPPORTED: "not available, raises ``ConfigurationError``: "
        + op.note.format(member=label)
        + f" (unless the façade names a {label} for it: ``designated``)",
    }[op.route]
    return f"On {cls.__name__}: {text}."


def _install(cls: type, label: str, key: str | None) -> None:
    """Give ``cls`` a generated method for every operation it does not define itself
    (``label`` and ``key``: its ``member_label`` and ``member_key``)."""
    for op in OPERATIONS.values():
        current = getattr(cls, op.name)
        if current is not op.declaration and current not in _generated:
            continue  # defined by the class or a base: kept
        if op.route is Route.OWN:
            raise TypeError(f"{cls.__name__} must define {op.name} (route 'own')")
        if op.route is Route.UNSUPPORTED and not op.is_async:
            raise TypeError(f"{op.name}: only coroutine methods can be declared unsupported")
        sig = op.signature()
        if op.route is Route.BY_KEY and key is not None:
            sig = _with_keyword(sig, key)
        method = _BUILDERS[op.route](op, sig)
        method.__name__ = op.name
        method.__qualname__ = f"{cls.__qualname__}.{op.name}"
        method.__module__ = cls.__module__
        method.__doc__ = f"{op.doc}\n\n{_how(op, cls, label, key)}"
        method.__dict__["__signature__"] = sig
        _generated.add(method)
        setattr(cls, op.name, method)


_install(MultiQueue, MultiQueue.member_label, MultiQueue.member_key)


# ---------------------------------------------------------------------- job items
