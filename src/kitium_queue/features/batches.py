"""Batch processors: one call handles up to N jobs; each job completes or fails on its own.

``queue.process_batch(name, fn, size=N, min_size=M, max_wait=W)`` registers, as the
processor of ``name``, a collector: every claimed job of that name joins the current
batch, and the batch is handed to ``fn(jobs)`` when

1. it holds ``size`` jobs, or
2. the jobs claimed together have all arrived and it holds at least ``min_size``, or
3. ``max_wait`` ms passed since its first job arrived (then with whatever it holds).

The jobs stay ordinary jobs throughout: each is claimed under its own lease (renewed
while it waits in the batch), runs under its own ``timeout``, and gets its own outcome
from ``fn``'s reply — retries, ``RetryLater``/``RateLimited``, ``NonRetryableError`` and
the DLQ work per job. A batch never holds more jobs than the worker has slots
(``worker.concurrency``), so set the concurrency to at least ``size`` (1 to 10,000, the
largest concurrency). A plain ``def`` function runs in a pool of the processor's own,
whose calls ``runends.thread_of`` names: with ``worker.thread_overrun="hold"`` the jobs of
a batch past their timeout are held until its call returns (``overruns.hold``), and a
pool whose batch ran on after its jobs left is replaced (``BatchProcessor._left``).

A batch function may return an awaitable (a plain decorator around an ``async def``, a
lambda returning a coroutine): it is awaited on the worker's loop, as a processor's is
(``processors.settled``). The collector belongs to the event loop of the worker that
calls it; a queue closed and started again in another loop starts it afresh there (its
timer and pending jobs of the old loop are dropped), and a batch's ``max_wait`` timer
stops once every job waiting for it left.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import weakref
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

from ..errors import ConfigurationError
from ..limits import get_logger
from ..options import MAX_CONCURRENCY, to_int, to_ms
from ..outcomes import describe
from ..processors import settled
from ..runends import PROCESS_EXITS, DaemonThreads, cancelling, no_stop, settable

__all__ = ["BatchProcessor", "resolve_batch", "set_batch_defaults"]

log = get_logger(__name__)

_SETTLE_ROUNDS = 3
# Per queue: (size, min_size, max_wait ms) for process_batch calls that leave them out.
_DEFAULTS: weakref.WeakKeyDictionary[Any, tuple[int, int, int]] = weakref.WeakKeyDictionary()


def set_batch_defaults(queue: Any, *, size: int, min_size: int = 1, max_wait: Any = 1000) -> None:
    """Give ``queue.process_batch`` calls of this process defaults for the arguments
    they leave out (the ``batching`` section of ``AdvancedQueueConfig``)."""
    size, min_size = _sizes(size, min_size)
    _DEFAULTS[queue] = (size, min_size, to_ms(max_wait, "batch max_wait"))


def _sizes(size: Any, min_size: Any) -> tuple[int, int]:
    """``size`` (1 to ``MAX_CONCURRENCY``: a batch never holds more jobs than the
    worker's slots) and ``min_size`` (1 to ``size``), checked."""
    size = to_int(size, "batch size", minimum=1, maximum=MAX_CONCURRENCY)
    if not isinstance(min_size, int) or isinstance(min_size, bool) or not 1 <= min_size <= size:
        raise ConfigurationError(
            f"batch min_size must be an int from 1 to size ({size}), got {min_size!r:.40}"
        )
    return size, min_size


def resolve_batch(
    queue: Any, job_name: str, size: int | None, min_size: int | None, max_wait: Any
) -> tuple[int, int, Any]:
    """The arguments of a ``process_batch`` call, the queue's defaults filling in the
    ones left out (None)."""
    d = _DEFAULTS.get(queue)
    if size is None:
        if d is None:
            raise ConfigurationError(
                f"process_batch({job_name!r}) needs size=N: this queue has no batch defaults "
                "(enable the batching section of AdvancedQueueConfig to give it some)"
            )
        size = d[0]
    if min_size is None:
        min_size = min(d[1], size) if d is not None and isinstance(size, int) else 1
    if max_wait is None:
        max_wait = d[2] if d is not None else 1000
    return size, min_size, max_wait


#: Threads running a plain ``def`` batch function at once (one batch each).
_BATCH_THREADS = 32


class BatchProcessor:
    """Collects jobs into batches for ``fn`` (see the module docstring).

    ``fn(jobs)`` (async, or a plain function run in a thread) returns one of:

    * a list/tuple with one entry per job, in order: a result, or an exception instance
      to fail that job (``RetryLater`` etc. work too);
    * a dict ``{job.id: result or exception}`` covering every job;
    * ``None``: every job completed with result ``None``.

    Raising fails every job of the batch with that exception (a ``BaseException`` that
    is not an ``Exception`` too, ``GeneratorExit`` included, with a reason naming it;
    ``KeyboardInterrupt`` and ``SystemExit`` end the process). A ``StopIteration``
    raised or returned for a job, which asyncio cannot hand over, fails it as a
    ``RuntimeError`` naming it.
    """

    def __init__(
        self, fn: Callable[..., Any], *, size: int, min_size: int = 1, max_wait: Any = 1000
    ) -> None:
        if not callable(fn):
            raise ConfigurationError("batch processor must be callable")
        self.size, self.min_size = _sizes(size, min_size)
        self.fn = fn
        self._threads: DaemonThreads | None = None
        self.max_wait_ms = to_ms(max_wait, "batch max_wait") or 0
        target = fn.func if isinstance(fn, functools.partial) else fn
        call = getattr(target, "__call__", None)  # noqa: B004
        if inspect.isasyncgenfunction(target) or inspect.isasyncgenfunction(call):
            # Its call gives an async generator, never a reply: every job would fail.
            raise ConfigurationError(
                "batch processor is an async generator function: it must be a function or "
                "coroutine function returning the reply (return the list instead of "
                "yielding it)"
            )
        self._async = inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(call)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[tuple[Any, asyncio.Future[Any]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._settle_armed = False
        self._arrivals = 0
        self._tasks: set[asyncio.Task[None]] = set()
        # The running batch of each job waiting for it.
        self._batch_of: dict[asyncio.Future[Any], _Running] = {}
        self.batches = 0

    async def __call__(self, job: Any) -> Any:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._rebind(loop)
        fut: asyncio.Future[Any] = loop.create_future()
        entry = (job, fut)
        self._pending.append(entry)
        self._arrivals += 1
        if len(self._pending) >= self.size:
            self._dispatch(loop)
        else:
            if self._timer is None and self.max_wait_ms > 0:
                self._timer = loop.call_later(self.max_wait_ms / 1000, self._dispatch, loop)
            if not self._settle_armed:
                self._settle_armed = True
                loop.call_soon(self._settle, loop, self._arrivals, _SETTLE_ROUNDS)
        try:
            return await fut
        except asyncio.CancelledError:
            # Timed out, cancelled or shut down before its batch ran: leave the batch.
            if entry in self._pending:
                self._pending.remove(entry)
                if not self._pending and self._timer is not None:
                    # Its max_wait counted from a job that left: a job arriving later
                    # starts a batch (and a wait) of its own.
                    self._timer.cancel()
                    self._timer = None
            else:
                self._left(fut)
            raise

    def _rebind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start afresh in ``loop``: the queue was closed and its worker started again in
        another event loop. What the old loop held can never run there: its timer (left
        as it was, it kept a new batch from arming one, so a batch below ``min_size``
        waited for ever) and its pending jobs and batches."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._settle_armed = False
        self._pending = [e for e in self._pending if e[1].get_loop() is loop]
        self._batch_of.clear()
        self._tasks.clear()
        self._loop = loop

    def _left(self, fut: asyncio.Future[Any]) -> None:
        """A job stopped waiting for its running batch (handed back by a stop, its
        timeout, ``cancel_job``): once no job of the batch waits, an async batch is
        cancelled, as an async processor's run would be (before, it ran on and did the
        work of jobs handed back meanwhile, while another worker ran them too), and so is
        a thread batch whose call has not started (it waited for a thread of a busy
        pool). A thread batch still running in its thread cannot be stopped: the pool is
        wound down (it ends as its threads return) and the next batch takes a fresh one,
        as the runner does for a plain processor, so hung threads never keep later
        batches waiting. (With ``thread_overrun="hold"`` the worker holds the jobs
        themselves until the thread returns: ``overruns.hold``.)"""
        got = self._batch_of.get(fut)
        if got is None or not all(f.done() for _, f in got.batch):
            return
        call, pool = got.call, got.pool
        if call is None or call.cancel():
            if got.task is not None:
                got.task.cancel()  # an async batch, or a thread batch not started
        elif not call.done() and pool is not None:
            if self._threads is pool:
                self._threads = None
            pool.shutdown(wait=False)

    def _settle(self, loop: asyncio.AbstractEventLoop, seen: int, rounds: int) -> None:
        # Jobs claimed together start on consecutive loop iterations; wait until no new
        # job arrived during one iteration before judging min_size.
        if self._arrivals != seen and rounds > 0:
            loop.call_soon(self._settle, loop, self._arrivals, rounds - 1)
            return
        self._settle_armed = False
        if self._pending and (len(self._pending) >= self.min_size or self.max_wait_ms == 0):
            self._dispatch(loop)

    def _dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        while self._pending:
            batch = self._pending[: self.size]
            del self._pending[: self.size]
            batch = [(j, f) for j, f in batch if not f.done()]
            if batch:
                self.batches += 1
                running = _Running(batch)
                running.task = task = loop.create_task(self._run(running))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                for _, f in batch:
                    self._batch_of[f] = running
                task.add_done_callback(functools.partial(self._forget, batch))
            if len(self._pending) < self.size:
                break
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pending and self.max_wait_ms > 0:
            self._timer = loop.call_later(self.max_wait_ms / 1000, self._dispatch, loop)

    def _forget(self, batch: list[tuple[Any, asyncio.Future[Any]]], _task: Any) -> None:
        for _, f in batch:
            self._batch_of.pop(f, None)

    async def _run(self, running: _Running) -> None:
        batch = running.batch
        jobs = [j for j, _ in batch]
        try:
            if self._async:
                reply = await self.fn(jobs)
            else:
                reply = await self._in_thread(jobs, running)
            # An awaitable it returned (a plain decorator around an async def, a lambda
            # returning a coroutine) is awaited here, on the loop, as a processor's is.
            outcomes = _outcomes(jobs, await settled(reply))
        except Exception as exc:
            outcomes = [exc] * len(jobs)
        except PROCESS_EXITS:
            raise  # they end the process, as in runner.py
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError) and cancelling(asyncio.current_task()):
                raise  # a real cancellation of this batch's task
            # A custom abort signal, a GeneratorExit, or a CancelledError the function
            # raised while this task was not cancelled: every job of the batch fails with
            # it, as a plain processor's would. Left unhandled, the jobs stayed active
            # until their timeout (for ever without one) or shutdown. (Should this task's
            # coroutine itself be closed, its jobs are failed the same way.)
            outcomes = [exc] * len(jobs)
        for (_, fut), out in zip(batch, outcomes, strict=True):
            _settle_one(fut, out)

    async def _in_thread(self, jobs: list[Any], running: _Running) -> Any:
        """``fn(jobs)`` in a thread of the processor's pool. Daemon threads, and the jobs
        known to run in one (``runends.thread_of``): a stop past its grace leaves them
        leased rather than handing them back (``runends.leave_threads``), and with
        ``thread_overrun="hold"`` a job past its timeout is held until the call returns
        (``overruns.hold``)."""
        if self._threads is None:
            self._threads = DaemonThreads(_BATCH_THREADS, "kq-batch")
        running.pool = self._threads
        running.call = self._threads.submit(no_stop, self.fn, jobs)
        return await asyncio.wrap_future(running.call)


class _Running:
    """A batch handed to its function: its jobs, its task, and for a plain ``def``
    function the call of the pool running it and that pool (None until submitted)."""

    __slots__ = ("batch", "call", "pool", "task")

    def __init__(self, batch: list[tuple[Any, asyncio.Future[Any]]]) -> None:
        self.batch = batch
        self.task: asyncio.Task[None] | None = None
        self.call: Future[Any] | None = None
        self.pool: DaemonThreads | None = None


def _settle_one(fut: asyncio.Future[Any], out: Any) -> None:
    """Hand one job's entry of the reply to the run waiting for it."""
    if fut.done() or fut.get_loop().is_closed():
        return  # it left, or its run went with its loop: nobody waits for it
    try:
        if isinstance(out, GeneratorExit):
            # The run awaiting ``fut`` would take it for the close of its own coroutine.
            wrapped = RuntimeError(f"{describe(out)} (raised by the batch processor)")
            wrapped.__cause__ = out
            fut.set_exception(wrapped)
        elif isinstance(out, BaseException):
            fut.set_exception(settable(out))
        else:
            fut.set_result(out)
    except Exception as exc:  # never leave a run waiting for ever
        fut.set_exception(RuntimeError(f"batch reply could not be handed over: {describe(exc)}"))


def _outcomes(jobs: Sequence[Any], reply: Any) -> list[Any]:
    if reply is None:
        return [None] * len(jobs)
    if isinstance(reply, Mapping):
        missing = [j.id for j in jobs if j.id not in reply]
        if missing:
            raise TypeError(
                f"batch processor's dict reply has no entry for job(s) {missing[:5]}; "
                "return one result or exception per job id"
            )
        return [reply[j.id] for j in jobs]
    if isinstance(reply, (list, tuple)):
        if len(reply) != len(jobs):
            raise TypeError(
                f"batch processor returned {len(reply)} results for {len(jobs)} jobs; "
                "return one result or exception per job, in order"
            )
        return list(reply)
    raise TypeError(
        f"batch processor must return a list (one entry per job), a dict keyed by job "
        f"id, or None; got {type(reply).__name__}"
    )
