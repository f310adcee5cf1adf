"""Extension points around enqueue and processing (DESIGN §5.1-5.2), and option ownership.

* **Enqueue middleware** ``fn(job_name, data, options) -> (job_name, data, options)``
  (sync or async) runs in ``add_job``/``add_jobs`` before validation and encoding, in the
  order added: idempotency, tenancy, regions and encryption plug in here. It also runs
  when a schedule is declared, on the template of the schedule's jobs: then
  ``enqueue_origin`` holds ``("schedule", <schedule id>)`` (those jobs get the ids
  ``sched:<schedule id>:<tick ms>``); for a job added directly it is None.
* **Process middleware** ``async fn(job, call_next) -> result`` wraps every run of a
  processor, outermost first: circuit breakers, tenancy context, tracing. Raise to fail
  the run, return to complete it. A plain ``def`` may return ``call_next()`` (or another
  awaitable); one that returns anything else fails the run with a ``TypeError`` naming
  it (``run_process_chain``).
* **Context carried to a child** (``carry_to_child``): what a process middleware makes
  current for the processor (a context variable of its own) does not reach a processor
  run in a child process (``mode="process"``). Around ``call_next`` it may name a
  ``ChildContext``: when the run goes to a child, the pool asks it for a short text
  (``capture``, in the run's context, so it sees what the middleware made current) and
  sends it with the job; the child imports the function ``enter`` names and calls it
  with the text before the processor, and what that returned after it (``carried``).
  Nothing is asked or sent for a run in the worker's own process.
* **Option ownership**: a feature declares the job options it handles in the queue's
  option registry (``jobspec.py``): ``queue.declare_option(name, feature=..., normalize=...)``,
  or ``queue.own_options(feature, names)`` for options that carry ids or keys; an option
  nobody declared is rejected.
* **Failure-text filters** ``fn(job, exc, reason, tb) -> (reason, tb)`` (sync, in
  ``queue.failure_text_filters``) rewrite the texts a failed run stores on its job (the
  reason ``e`` and the traceback ``tb`` of a retry or a final failure, and the reason
  of a deferral the event stream keeps, already clipped and encoded), in the order
  added, just before the outcome is queued for Redis (``Outcomes.ack``): a feature may
  seal or mask them. ``exc`` is the error of the run (None when the worker made the
  reason itself); the in-process hooks still get the original reason. They fail
  closed, as does an answer longer than ``MAX_FILTERED_REASON_BYTES`` /
  ``MAX_FILTERED_TRACEBACK_BYTES`` (``filter_failure_texts``). An answer that must
  never be cut (a sealed text: cut, it never opens) starts with ``SEALED_TEXT_MARK``:
  what copies a reason elsewhere under a bound of its own keeps such a text whole or
  not at all (``copies.CopiedField``, part ``error``).
* **Services** (DESIGN §5.4): background loops in ``queue.services`` that every worker of
  the queue starts after its own loops and stops first when it stops (the scheduler).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar, Token
from typing import Any, Protocol, TypeVar

from .errors import ConfigurationError
from .limits import MAX_ERROR_CHARS, MAX_TRACEBACK_CHARS, get_logger, printable

__all__ = [
    "ENTERED_IN_CHILD",
    "MAX_CHILD_CONTEXTS",
    "MAX_CHILD_CONTEXT_CHARS",
    "MAX_FILTERED_REASON_BYTES",
    "MAX_FILTERED_TRACEBACK_BYTES",
    "SEALED_TEXT_MARK",
    "ChildContext",
    "EnqueueMiddleware",
    "FailureTextFilter",
    "ProcessMiddleware",
    "Service",
    "carry_to_child",
    "check_callable",
    "child_contexts",
    "enqueue_origin",
    "enqueue_result",
    "entered_in_child",
    "filter_failure_texts",
    "run_process_chain",
]

T = TypeVar("T")

log = get_logger(__name__)

#: Longest reason a failure-text filter may answer, in bytes: twice the most the clipped
#: reason takes in UTF-8, and 4 KiB more (room for a sealed envelope: base64 and JSON).
#: A longer answer fails closed (``filter_failure_texts``).
MAX_FILTERED_REASON_BYTES = 2 * 4 * MAX_ERROR_CHARS + 4096
#: Longest traceback a failure-text filter may answer, in bytes (as for the reason).
MAX_FILTERED_TRACEBACK_BYTES = 2 * 4 * MAX_TRACEBACK_CHARS + 4096
#: How a failure-text filter's answer that must never be cut starts (a sealed text).
SEALED_TEXT_MARK = "(sealed: "

#: What the enqueue middleware running now prepares: None for a job added directly
#: (``add_job``, ``add_jobs``), ``("schedule", <schedule id>)`` for the template of a
#: schedule's jobs.
enqueue_origin: ContextVar[tuple[str, str] | None] = ContextVar("kq_enqueue_origin", default=None)


#: Most contexts one run carries to a child, and the longest text of each (characters):
#: what goes over the pipe is small, and the child ignores anything past these.
MAX_CHILD_CONTEXTS = 4
MAX_CHILD_CONTEXT_CHARS = 1024


class ChildContext(Protocol):
    """Context a process middleware carries to a processor run in a child process.

    ``enter`` is the import path (``"module:function"``) of a function the child calls
    with the text ``capture()`` returned, before the processor; it returns a callable
    the child calls once the processor returned or raised (or None: nothing to undo).
    The child calls only a function marked with ``entered_in_child``. Its module is
    imported in the child, which starts with few modules loaded: it should import
    little; a module that raises ``ImportError`` there (an optional package missing) is
    skipped silently. A raising ``enter`` costs that context, never the job.

    ``capture()`` is called in the worker, in the run's context, when the job is sent
    to its child: the text to carry (printable, at most ``MAX_CHILD_CONTEXT_CHARS``
    characters, else nothing is carried), or None for nothing."""

    enter: str

    def capture(self) -> str | None: ...


#: The attribute ``entered_in_child`` sets on a function.
ENTERED_IN_CHILD = "__kq_entered_in_child__"

F = TypeVar("F", bound=Callable[..., Any])


def entered_in_child(fn: F) -> F:
    """Mark ``fn`` as a function a child process may call to enter a carried context
    (``ChildContext.enter`` names it): the child calls no function without the mark,
    whatever path its pipe names."""
    setattr(fn, ENTERED_IN_CHILD, True)
    return fn


#: The contexts the runs under way in this task carry to a child (``carry_to_child``).
child_contexts: ContextVar[tuple[ChildContext, ...]] = ContextVar("kq_child_contexts", default=())


def carry_to_child(carried: ChildContext) -> Token[tuple[ChildContext, ...]]:
    """Carry ``carried`` to the child of the run under way (if it runs in one): call it
    in a process middleware before ``call_next``, and ``child_contexts.reset(token)``
    after it. One of the same ``enter`` already carried is replaced (the innermost
    middleware's wins)."""
    now = child_contexts.get()
    if now:
        now = tuple(c for c in now if c.enter != carried.enter)
    return child_contexts.set((*now, carried))


class EnqueueMiddleware(Protocol):
    def __call__(
        self, job_name: str, data: Any, options: Mapping[str, Any]
    ) -> tuple[str, Any, Mapping[str, Any]] | Awaitable[tuple[str, Any, Mapping[str, Any]]]: ...


def check_callable(fn: T, what: str) -> T:
    """``fn`` when it is callable; else a ``ConfigurationError`` naming ``what`` (at
    registration, rather than at the first job it would have failed)."""
    if not callable(fn):
        raise ConfigurationError(f"{what} must be a function, got {type(fn).__name__}")
    return fn


def enqueue_result(middleware: Any, out: Any) -> tuple[Any, Any, Mapping[str, Any]]:
    """``out``, what an enqueue ``middleware`` returned (awaited), once it is the
    ``(job_name, data, options)`` it must be; else a ``TypeError`` naming the middleware
    and what it returned (the job is not added)."""
    if isinstance(out, (tuple, list)) and len(out) == 3 and isinstance(out[2], Mapping):
        return out[0], out[1], out[2]
    got = (
        f"a {type(out).__name__} of {len(out)} items"
        if isinstance(out, (tuple, list))
        else type(out).__name__
    )
    if isinstance(out, (tuple, list)) and len(out) == 3:
        got = f"options of type {type(out[2]).__name__}"
    name = getattr(middleware, "__qualname__", None) or type(middleware).__name__
    raise TypeError(
        f"enqueue middleware {name} returned {got}: it must return the tuple "
        "(job_name, data, options) with options a dict (return them unchanged to let "
        "the job pass as it is); the job was not added"
    )


class Service(Protocol):
    """A background loop run alongside each worker: ``queue.add_service(svc)``.

    ``start(queue)`` is awaited when a worker starts (it should create its tasks and
    return); ``stop()`` when the worker stops, before running jobs are waited for (the
    time it takes is taken out of the jobs' grace, ``shutdown_timeout``).
    ``name`` identifies it (adding a service with the same name replaces the old one).
    A service that opens Redis connections of its own while it runs (a subscription)
    says how many in an attribute ``connections`` (0 when absent): a worker's start
    makes sure that many can be opened (``lifecycle``).
    """

    name: str

    async def start(self, queue: Any) -> None: ...

    async def stop(self) -> None: ...


class FailureTextFilter(Protocol):
    """Rewrites what a failed run stores as its job's reason and traceback.

    Called in the worker's event loop, for each retry, deferral (its reason goes to the
    event stream) or final failure of a run, with the job, the run's error (None when
    the worker made the reason itself: a result too large, a cancel), and the reason
    and traceback as they would be stored (UTF-8 bytes, clipped to
    ``limits.MAX_ERROR_CHARS`` / ``MAX_TRACEBACK_CHARS``; ``b""`` for none).
    Returns the pair to store instead: the texts are not clipped again, but a reason
    longer than ``MAX_FILTERED_REASON_BYTES`` or a traceback longer than
    ``MAX_FILTERED_TRACEBACK_BYTES`` fails closed; a text that must never be cut (one it
    sealed) starts with ``SEALED_TEXT_MARK``. It must be quick and must not block
    (no I/O). A filter may also have ``rewrites(job, exc) -> bool`` (whether it would
    rewrite that failure's texts): the worker's log lines ask it instead of running the
    filter again to learn whether to name the error's type only."""

    def __call__(
        self, job: Any, exc: BaseException | None, reason: bytes, tb: bytes
    ) -> tuple[bytes, bytes]: ...


def filter_failure_texts(
    filters: Sequence[FailureTextFilter],
    job: Any,
    exc: BaseException | None,
    reason: bytes,
    tb: bytes,
) -> tuple[bytes, bytes]:
    """``reason`` and ``tb`` through ``filters``, in order. A filter that raises, or
    returns anything but two ``bytes`` (or texts longer than ``MAX_FILTERED_REASON_BYTES``
    / ``MAX_FILTERED_TRACEBACK_BYTES``: they would be stored as they are), fails closed:
    the texts are replaced by a sentence naming the filter (a filter that hides texts
    must never let them through by failing), and an error is logged without them. The
    job's outcome is recorded either way."""
    for fn in filters:
        try:
            out = fn(job, exc, reason, tb)
            if (
                isinstance(out, tuple)
                and len(out) == 2
                and type(out[0]) is bytes
                and type(out[1]) is bytes
            ):
                if (
                    len(out[0]) <= MAX_FILTERED_REASON_BYTES
                    and len(out[1]) <= MAX_FILTERED_TRACEBACK_BYTES
                ):
                    reason, tb = out
                    continue
                problem = (
                    f"returned texts of {len(out[0])} and {len(out[1])} bytes, above the "
                    f"{MAX_FILTERED_REASON_BYTES} and {MAX_FILTERED_TRACEBACK_BYTES} allowed"
                )
            else:
                problem = f"returned {type(out).__name__}, not (bytes, bytes)"
        except Exception as exc2:
            problem = f"raised {type(exc2).__name__}"
        name = getattr(fn, "__qualname__", None) or type(fn).__name__
        log.error(
            "failure-text filter %s %s on job %s; its failure reason and traceback are withheld",
            name,
            problem,
            printable(getattr(job, "id", "?")),
        )
        text = f"failure text withheld: the failure-text filter {name} {problem}"
        return text.encode("utf-8", "backslashreplace"), b""
    return reason, tb


ProcessMiddleware = Callable[[Any, Callable[[], Awaitable[Any]]], Awaitable[Any]]


async def run_process_chain(
    chain: list[ProcessMiddleware], job: Any, innermost: Callable[[], Awaitable[Any]]
) -> Any:
    """Run ``innermost`` wrapped by ``chain`` (first element outermost). The chain is
    read once, when the run starts: a middleware added meanwhile wraps later runs. A
    middleware that returns something not awaitable (a plain ``def`` returning a value)
    fails the run with a ``TypeError`` naming it (before: "object dict can't be used in
    'await' expression", naming nobody)."""
    if len(chain) == 1:  # the usual case: no wrapper to build
        return await _awaitable(chain[0], chain[0](job, innermost))
    call_next = innermost
    for middleware in reversed(chain):
        call_next = functools.partial(_step, middleware, job, call_next)
    return await call_next()


async def _step(middleware: ProcessMiddleware, job: Any, call_next: Any) -> Any:
    return await _awaitable(middleware, middleware(job, call_next))


def _awaitable(middleware: Any, out: Any) -> Awaitable[Any]:
    """``out``, what a process ``middleware`` returned, when it can be awaited; else a
    ``TypeError`` naming the middleware."""
    if inspect.isawaitable(out):
        return out
    name = getattr(middleware, "__qualname__", None) or type(middleware).__name__
    raise TypeError(
        f"process middleware {name} returned {type(out).__name__}, not an awaitable: a "
        "process middleware is 'async def fn(job, call_next)' and returns "
        "'await call_next()' (or a result of its own)"
    )
