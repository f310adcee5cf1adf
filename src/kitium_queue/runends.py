"""How a run ends when it does not end the ordinary way (``runner.py``), and the
exceptions that need care on the way to an outcome.

* ``cancelled(run)``: whether a ``CancelledError`` that ended a run is a real
  cancellation of its task (timeout, ``cancel_job()``, shutdown, a lost lease, or one
  from outside the worker) or one the processor raised (or a batch processor handed it
  as a job's result) while its run was not cancelled: a failure like any other.
* ``PROCESS_EXITS`` (``KeyboardInterrupt``, ``SystemExit``) end the process as asyncio
  lets them; ``RunEnds.process_exit`` records nothing for such a run and frees its slot,
  so the job keeps its lease until it expires and is recovered (a stall, as after a
  crash). Every other ``BaseException`` is a processor error.
* ``settable(exc)`` / ``no_stop(fn, *args)``: asyncio refuses a ``StopIteration`` in a
  future (``set_exception`` raises ``TypeError``, and a thread's ``StopIteration`` never
  reaches the awaiting task), which would leave the job ``active`` until its timeout;
  it becomes a ``RuntimeError`` naming it, as PEP 479 does for a coroutine.
* ``RunEnds.overran``: a run that returned past its timeout without its timeout
  cutting it off blocked the event loop; its result is kept, and a warning says so.
* ``RunEnds.ended``: the done callback on every run's task, the safety net. A run whose
  task ended without an outcome (an error escaping ``Runner.run`` itself, a task
  cancelled before it started) is given one there, so its slot is never leaked and its
  job never stays ``active`` under a worker that keeps renewing its lease.
* ``DaemonThreads``: the thread pool of plain ``def`` processors, of daemon threads the
  interpreter does not wait for at exit; ``leave_threads`` / ``wait_unless``: the end of
  a graceful stop's grace period. A thread cannot be stopped: a ``def`` processor still
  running then is left, its job leased and nothing recorded (handed back, it ran again
  at once on another worker while this thread went on, and the process waited for the
  thread at exit); its lease, no longer renewed, expires and the job is recovered, as
  after a crash. A second SIGTERM/SIGINT (``forced``) ends the waits at once.
* ``ignoring_cancellation()``: the tasks of jobs whose processors did not end when the
  stop cancelled them (``grace_period`` gives up on them), still running: the end of
  ``asyncio.run`` waits for them for ever, so the CLI's worker ends its process instead
  (``cli/base.py``), and an app that embeds ``run_worker()`` checks it.
* ``run_exit_handlers()``: such a process ends with ``os._exit``, which skips the
  ``atexit`` handlers (an OpenTelemetry batch exporter's last spans, a log queue's
  listener); they are run first, in a daemon thread, for ``EXIT_HANDLERS_S`` at most.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import Executor, Future
from queue import Empty, SimpleQueue
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from .job import Job
from .limits import get_logger, printable
from .outcomes import describe, safe_name

if TYPE_CHECKING:
    from .leases import Leases, Run
    from .runner import Runner

__all__ = [
    "EXIT_HANDLERS_S",
    "FAILING_CANCELS",
    "PROCESS_EXITS",
    "DaemonThreads",
    "RunEnds",
    "bounded",
    "cancelled",
    "grace_period",
    "ignoring_cancellation",
    "in_thread",
    "leave_threads",
    "no_stop",
    "run_exit_handlers",
    "settable",
    "thread_of",
    "wait_event",
    "wait_unless",
]

#: The messages a run's task is cancelled with when the cancellation fails the run: its
#: timeout (``runner.Timeouts``) and ``cancel_job`` (``leases``). A stop handing the job
#: back, or a lost lease, cancels without one (the tracing feature tells them apart).
FAILING_CANCELS = ("timeout", "cancelled")

log = get_logger("kitium_queue.worker")

#: Exceptions that end the process rather than fail a job.
PROCESS_EXITS = (KeyboardInterrupt, SystemExit)

_T = TypeVar("_T")
_P = ParamSpec("_P")


def cancelled(run: Run) -> bool:
    """Whether the ``CancelledError`` that ended ``run`` is a cancellation of its task
    rather than one the processor raised while its run was not cancelled."""
    if run.abandoned or run.reason is not None:
        return True
    return cancelling(run.task)


def cancelling(task: asyncio.Task[Any] | None) -> bool:
    """Whether ``task`` is being cancelled (a ``CancelledError`` it sees is real). Before
    Python 3.11 there is no way to tell: a cancellation, as before."""
    probe = getattr(task, "cancelling", None)
    if probe is None:
        return True
    return bool(probe())


async def wait_event(event: asyncio.Event, timeout: float | None) -> None:
    """Wait until ``event`` is set or ``timeout`` seconds passed (None: no limit), and
    never swallow a cancellation. ``asyncio.wait_for`` before Python 3.12 drops one that
    lands as the event is set (gh-86296): a worker loop waiting so ran on when
    ``asyncio.run`` cancelled it at its end, and that ``asyncio.run`` never returned."""
    if timeout is None:
        await event.wait()
        return
    deadline = getattr(asyncio, "timeout", None)
    if deadline is None:  # Python 3.10: no asyncio.timeout, and wait_for drops the cancel
        # asyncio.wait never swallows one: a cancel raises out of it whatever the waiter.
        waiter = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait({waiter}, timeout=timeout)
        finally:
            waiter.cancel()
        return
    with contextlib.suppress(TimeoutError):
        async with deadline(timeout):
            await event.wait()


async def bounded(aw: Awaitable[_T], timeout: float | None) -> _T:
    """``await aw`` within ``timeout`` seconds (None: no limit), else
    ``asyncio.TimeoutError`` (``aw`` cancelled) -- ``asyncio.wait_for`` that never
    swallows a cancellation. Before Python 3.12, ``wait_for`` returns ``aw``'s result
    when the cancel of the task awaiting it lands as ``aw`` ends (gh-86296): a loop so
    waiting ran on after its stop cancelled it (a leader kept campaigning, a stop
    waited for it in vain)."""
    deadline = getattr(asyncio, "timeout", None)
    if deadline is not None:  # Python 3.11+: runs in this task, the cancel lands in aw
        async with deadline(timeout):
            return await aw
    inner = asyncio.ensure_future(aw)  # Python 3.10: asyncio.wait never swallows one
    try:
        done, _ = await asyncio.wait({inner}, timeout=timeout)
        if not done:
            raise asyncio.TimeoutError()
    except BaseException:
        # Cancelled or timed out: aw has ended when this does, as wait_for waits for it
        # (a stopped leader's lease call must not run on); what it raised is moot.
        inner.cancel()
        inner.add_done_callback(lambda f: f.cancelled() or f.exception())
        await asyncio.wait({inner})  # raises only a cancel of this task
        raise
    return inner.result()


def not_cancelled(exc: BaseException) -> str:
    """The reason recorded for a ``CancelledError`` raised while the run was not
    cancelled."""
    return f"{describe(exc)} (raised by the processor; the run was not cancelled)"


def settable(exc: BaseException) -> BaseException:
    """``exc``, or a ``RuntimeError`` naming it when asyncio would refuse it in a future
    (a ``StopIteration`` or ``StopAsyncIteration``)."""
    if isinstance(exc, (StopIteration, StopAsyncIteration)):
        wrapped = RuntimeError(f"{describe(exc)} (raised or returned by the processor)")
        wrapped.__cause__ = exc
        return wrapped
    return exc


def no_stop(fn: Callable[..., _T], *args: Any) -> _T:
    """``fn(*args)`` (in a thread): a ``StopIteration`` it raises comes out as
    ``settable``'s ``RuntimeError``, which the awaiting task can receive."""
    try:
        return fn(*args)
    except (StopIteration, StopAsyncIteration) as exc:
        raise settable(exc) from exc


class RunEnds:
    """The ends of a ``Runner``'s runs that its ``run`` does not record itself."""

    def __init__(self, runner: Runner, leases: Leases) -> None:
        self.runner = runner
        self.leases = leases

    def process_exit(self, run: Run, exc: BaseException) -> None:
        """The processor raised ``KeyboardInterrupt`` / ``SystemExit`` (the caller
        re-raises it). Nothing is recorded: the job keeps its lease (no longer renewed)
        and is recovered once it expires, counted as a stall, so a job that keeps ending
        its worker is dead-lettered after max_stalled_count runs. Its slot is freed in
        case the loop goes on."""
        run.deadline = None
        self.leases.forget(run)
        q = self.runner.queue
        log.error(
            "queue %s: job %s: processor raised %s; the job stays leased and runs again "
            "once its lease expires (lock_duration=%d ms)",
            q.name,
            printable(run.job.id),
            safe_name(exc),
            q.lock_duration_ms,
        )

    def overran(self, run: Run, now: float) -> None:
        """``run`` returned at loop time ``now``: if that is past its timeout and its
        timeout never interrupted it, its processor blocked the event loop (the timer
        could not fire), and a warning says so. Its result is kept all the same: the run
        happened, and failing it would run its side effects again on a retry."""
        timeout_s = (run.policy.timeout_ms or 0) / 1000
        over = now - run.started - timeout_s
        if not timeout_s or over <= 0 or run.reason is not None:
            return
        job = run.job
        log.warning(
            "queue %s: job %s (%s) ran %s s past its timeout of %s s while blocking the "
            "event loop, so its timeout could not interrupt it; its result is kept. Use "
            "`await` for waits in an async processor, and a plain `def` processor (run in "
            "a thread) for blocking code",
            printable(self.runner.queue.name),
            printable(job.id),
            printable(job.name),
            _seconds(over),
            _seconds(timeout_s),
        )

    def ended(self, run: Run, task: asyncio.Task[None]) -> None:
        """Done callback of a run's task: the safety net (module docstring). A run that
        recorded its outcome or was abandoned is no longer held, and nothing happens."""
        # Retrieved in every case, so an error is reported here, not as "Task exception
        # was never retrieved" when the task is collected.
        exc = None if task.cancelled() else task.exception()
        runs, runner = self.leases.runs, self.runner
        if runs.get(run.job.id) is not run or run.abandoned:
            return
        run.deadline = None
        name = runner.queue.name
        try:
            if exc is None:
                if task.cancelled():
                    # Cancelled before its first step: run()'s handlers never ran.
                    runner.interrupted(run)
                else:
                    runner.fail_final(run, None, "the run ended without recording an outcome")
            elif isinstance(exc, PROCESS_EXITS):
                self.leases.forget(run)  # as in run(): the lease expires, the job is recovered
            else:
                log.error(
                    "queue %s: job %s: %s escaped its run; recording it as the job's failure",
                    name,
                    printable(run.job.id),
                    printable(describe(exc)),
                    exc_info=exc,
                )
                runner.failed(run, exc)
        except Exception:
            log.exception(
                "queue %s: job %s: could not record the outcome of its run",
                name,
                printable(run.job.id),
            )
        finally:
            if runs.get(run.job.id) is run:
                # Still held: never leak the slot, whatever escaped above. No outcome is
                # sent, so the lease expires and the job is recovered like the job of a
                # crashed worker.
                self.leases.forget(run)


def _seconds(value: float) -> str:
    """Seconds to the millisecond, without trailing zeros (``0.5``, ``12.346``)."""
    return f"{value:.3f}".rstrip("0").rstrip(".")


# ---------------------------------------------------------------------- threads
# The jobs a ``DaemonThreads`` pool runs now: id(job) -> (job, its future).
_IN_THREAD: dict[int, tuple[Job, Future[Any]]] = {}


def in_thread(job: Job) -> bool:
    """Whether ``job``'s processor runs in a thread of a ``DaemonThreads`` pool now."""
    return thread_of(job) is not None


def thread_of(job: Job) -> Future[Any] | None:
    """The call of a ``DaemonThreads`` pool that runs ``job`` now (started or waiting
    for a thread), or None: the thread of a run whose processor hands its job to a pool
    of its own (``overruns.hold``)."""
    entry = _IN_THREAD.get(id(job))
    if entry is None or entry[0] is not job or entry[1].done():
        return None
    return entry[1]


class DaemonThreads(Executor):
    """``ThreadPoolExecutor``'s behaviour (up to ``max_workers`` threads, started as
    needed, idle ones reused; ``shutdown`` as there) with daemon threads: at exit the
    interpreter joins a ``ThreadPoolExecutor``'s threads, so a processor that ran on
    past its worker's stop held the process for the rest of its run. ``in_thread`` /
    ``thread_of`` tell which jobs its threads run (a ``Job``, or a list of them, among a
    call's arguments)."""

    def __init__(self, max_workers: int, name: str) -> None:
        self._max, self._name = max_workers, name
        self._work: SimpleQueue[Any] = SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._shut = False
        # Dropped without shutdown(): its idle threads end all the same.
        weakref.finalize(self, self._work.put, None)

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]:
        """Run ``fn(*args, **kwargs)`` in one of the pool's threads."""
        fut: Future[_T] = Future()
        with self._lock:
            if self._shut:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._work.put((fut, fn, args, kwargs))
            if not self._idle.acquire(blocking=False) and len(self._threads) < self._max:
                thread = threading.Thread(
                    target=_serve,
                    args=(self._work, self._idle),
                    name=f"{self._name}_{len(self._threads)}",
                    daemon=True,
                )
                thread.start()
                self._threads.append(thread)
        jobs = _jobs_of(args)
        if jobs:
            for job in jobs:
                _IN_THREAD[id(job)] = (job, fut)
            keys = [id(j) for j in jobs]
            fut.add_done_callback(lambda _: [_IN_THREAD.pop(k, None) for k in keys])
        return fut

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Take no more calls; ``cancel_futures``: drop the calls not started; ``wait``:
        wait for the threads to end. The threads end once idle."""
        with self._lock:
            self._shut = True
            while cancel_futures:
                try:
                    item = self._work.get_nowait()
                except Empty:
                    break
                if item is not None:
                    item[0].cancel()
            self._work.put(None)
        if wait:
            for thread in self._threads:
                thread.join()


def _jobs_of(args: tuple[Any, ...]) -> list[Job]:
    # The jobs a call runs: a Job among its arguments, or the list of a batch's jobs.
    for a in args:
        if isinstance(a, Job):
            return [a]
        if isinstance(a, list) and a and isinstance(a[0], Job):
            return [j for j in a if isinstance(j, Job)]
    return []


def _serve(work: SimpleQueue[Any], idle: threading.Semaphore) -> None:
    # One thread of a DaemonThreads pool (it holds no reference to the pool itself).
    while True:
        item = work.get()
        if item is None:
            work.put(None)  # for the next thread: every one ends
            return
        fut, fn, args, kwargs = item
        del item
        if fut.set_running_or_notify_cancel():
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                fut.set_exception(exc)
            else:
                fut.set_result(result)
            result = None
        del fut, fn, args, kwargs
        idle.release()


def leave_threads(leases: Leases) -> None:
    """At the end of a graceful stop's grace period: stop holding the runs whose plain
    ``def`` processor still runs in its thread (module docstring), recording nothing;
    their leases expire and the jobs are recovered then."""
    left = [r for r in leases.runs.values() if in_thread(r.job)]
    for run in left:
        run.abandoned = True  # an outcome it reports later is not recorded
        leases.forget(run)
        if run.task is not None and not run.task.done():
            run.task.cancel()  # the awaiting task ends; the thread runs on
    if left:
        q = leases.queue
        log.warning(
            "worker %s: %d job(s) of queue %s still running in a thread at the end of "
            "shutdown_timeout were left running there (a thread cannot be stopped); not "
            "handed back, so they do not run twice at once: left leased, they run again "
            "once their leases expire (lock_duration=%d ms), and what they return is not "
            "recorded: %s",
            leases.worker_id,
            len(left),
            q.name,
            q.lock_duration_ms,
            ", ".join(printable(r.job.id) for r in left[:10]),
        )


async def grace_period(leases: Leases, grace: float, forced: asyncio.Event) -> None:
    """A graceful stop's grace period: wait up to ``grace`` seconds for the running jobs
    (or until ``forced``), leave the plain ``def`` ones still running in their threads
    (``leave_threads``), hand the rest back (``Leases.wind_down``) and stop holding any
    that ignores its cancellation (``Leases.drop_stuck``)."""
    await wait_unless([r.task for r in leases.runs.values() if r.task is not None], grace, forced)
    leave_threads(leases)
    await leases.wind_down(0, forced)
    stuck = [r.task for r in leases.runs.values() if r.task is not None]
    _GIVEN_UP.update(t for t in stuck if not t.done())
    leases.drop_stuck()


#: The tasks of runs ``grace_period`` gave up on: cancelled, they did not end.
_GIVEN_UP: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()


def ignoring_cancellation() -> list[asyncio.Task[Any]]:
    """The tasks of the running loop's jobs that a worker's stop cancelled and gave up on
    (their processors ignored the cancellation; the ERROR line of the stop names the
    jobs) and that still run. ``asyncio.run`` cancels them again at its end and waits
    for them for ever: the process never exits, and such a processor goes on past its
    lease, beside the job's retry on another worker (README, "Signals and embedding")."""
    loop = asyncio.get_running_loop()
    return [t for t in list(_GIVEN_UP) if t.get_loop() is loop and not t.done()]


#: How long ``run_exit_handlers`` waits for the ``atexit`` handlers to end (s).
EXIT_HANDLERS_S = 5.0


def run_exit_handlers(timeout: float = EXIT_HANDLERS_S) -> bool:
    """Run the ``atexit`` handlers registered (last registered first, as the
    interpreter's exit does, each at most once) before a process ends with
    ``os._exit``, which skips them; returns whether they ended within ``timeout``
    seconds. They run in a daemon thread: one that hangs (a join of a process or
    thread that never ends, an exporter waiting for a collector) cannot keep the
    process alive, and ``os._exit`` ends it with the process."""
    ended = threading.Event()

    def run() -> None:
        try:
            atexit._run_exitfuncs()  # prints what a handler raises, runs the others
        finally:
            ended.set()

    threading.Thread(target=run, name="kitium-queue-atexit", daemon=True).start()
    return ended.wait(timeout)


async def wait_unless(
    tasks: Iterable[asyncio.Future[Any]], timeout: float, forced: asyncio.Event
) -> set[asyncio.Future[Any]]:
    """Wait up to ``timeout`` seconds for every one of ``tasks`` to end, or until
    ``forced`` is set; returns those still pending."""
    pending = {t for t in tasks if not t.done()}
    if not pending or forced.is_set():
        return pending
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(timeout, 0)
    waiter = loop.create_task(forced.wait())
    try:
        while pending and not forced.is_set():
            left = deadline - loop.time()
            if left <= 0:
                break
            done, _ = await asyncio.wait(
                {*pending, waiter}, timeout=left, return_when=asyncio.FIRST_COMPLETED
            )
            pending -= done
    finally:
        waiter.cancel()
    return pending
