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
* **Option ownership**: a feature declares the job options it handles in the queue's
  option registry (``jobspec.py``): ``queue.declare_option(name, feature=..., normalize=...)``,
  or ``queue.own_options(feature, names)`` for options that carry ids or keys; an option
  nobody declared is rejected.
* **Services** (DESIGN §5.4): background loops in ``queue.services`` that every worker of
  the queue starts after its own loops and stops first when it stops (the scheduler).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from typing import Any, Protocol, TypeVar

from .errors import ConfigurationError

__all__ = [
    "EnqueueMiddleware",
    "ProcessMiddleware",
    "Service",
    "check_callable",
    "enqueue_origin",
    "enqueue_result",
    "run_process_chain",
]

T = TypeVar("T")

#: What the enqueue middleware running now prepares: None for a job added directly
#: (``add_job``, ``add_jobs``), ``("schedule", <schedule id>)`` for the template of a
#: schedule's jobs.
enqueue_origin: ContextVar[tuple[str, str] | None] = ContextVar("kq_enqueue_origin", default=None)


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
