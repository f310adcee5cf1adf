"""Runs that go on after their timeout or ``cancel_job()`` ended them, said.

* ``left``: a plain ``def`` processor whose run its timeout or ``cancel_job()`` ended
  while its thread still runs. A thread cannot be stopped: the job's outcome (the
  timeout's failure, retried after its backoff; a cancel's final failure) is recorded at
  once and its slot freed, so the retry may start, on this worker or another, while the
  thread still runs, and what the thread returns is ignored. A WARNING names the job;
  the thread's pool is wound down (the runner took a fresh one).
* ``hold``: with ``worker={"thread_overrun": "hold"}``, a plain ``def`` run its timeout
  ended is held until its thread returns, before ``left``: its task waits for the
  thread, so its job stays leased (renewed with the others, its outcome fenced by its
  token as ever) and its slot taken, and the timeout's failure is recorded only when the
  thread returned: the retry cannot start beside it. The wait is bounded by
  ``thread_overrun_max`` ms (default: the job's timeout again); past it the worker gives
  up holding, an ERROR names the job, and the run is released as above. A stop (the
  thread still runs at the end of its grace: left leased, ``runends.leave_threads``), a
  lost lease (nothing recorded) and ``cancel_job()`` (failed for good) end the hold at
  once, as they end any run. ``cancel_job()`` itself is never held: it fails the job for
  good, so no retry follows it. The same holds a job whose ``async`` processor handed
  it to a call of a thread pool of its own (``runends.thread_of``: a plain ``def`` batch
  function, one call for the batch's jobs): each job of the call is held until it
  returns, and the jobs held on one call are given up together, in one ERROR naming
  them, once the first of them reaches ``thread_overrun_max``. Winding such a pool down
  is its processor's part (``features/batches.py``).
* ``ignored``: an ``async def`` processor that caught the ``CancelledError`` of its
  timeout (or of ``cancel_job()``) and returned: the run held its slot and lease until
  then, and its result is kept (``completed``: the run happened, and failing it would run
  its side effects again on a retry), as for a run that blocked the event loop past its
  timeout (``runends.RunEnds.overran``). A WARNING says so.

None costs the normal path anything: ``hold``, ``left`` and ``ignored`` run only for a
run whose task was cancelled (``hold`` does more only with ``"hold"`` and a thread that
still runs). A dependency that hangs times out every job: each worker names the first
run of each kind at once, and counts those that follow within ``OVERRUN_LOG_S`` in one
WARNING at its end (not a line per job).
"""

from __future__ import annotations

import asyncio
import weakref
from concurrent.futures import Executor, Future
from typing import TYPE_CHECKING, Any

from .limits import get_logger, printable
from .runends import FAILING_CANCELS, thread_of

if TYPE_CHECKING:
    from .leases import Run
    from .runner import Runner

__all__ = ["OVERRUN_LOG_S", "hold", "ignored", "left"]

log = get_logger("kitium_queue.worker")

_BY = {"timeout": "its timeout", "cancelled": "cancel_job()"}

#: After a worker named an overrun of one kind, how long it counts those that follow
#: before it says how many (s).
OVERRUN_LOG_S = 60.0

_MORE = {
    "left": "were ended by their timeout or cancel_job() while their plain `def` processor "
    "still ran in its thread (a retry may run beside such a thread)",
    "ignored": "caught the cancellation of their timeout or cancel_job() and returned (their "
    "results were kept)",
}


class _Said:
    """The overruns of one worker's runs counted since it named one, by kind."""

    def __init__(self, queue_name: str) -> None:
        self.queue_name = queue_name
        self.more: dict[str, int] = {}

    def named(self, kind: str) -> bool:
        """Whether this overrun of ``kind`` is named: the first one of a window."""
        if kind in self.more:
            self.more[kind] += 1
            return False
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop to end a window: each is named
            return True
        self.more[kind] = 0
        loop.call_later(OVERRUN_LOG_S, self._end, kind)
        return True

    def _end(self, kind: str) -> None:
        more = self.more.pop(kind, 0)
        if more:
            log.warning(
                "queue %s: %d more job(s) %s in the %s s after the one named above",
                printable(self.queue_name),
                more,
                _MORE[kind],
                f"{OVERRUN_LOG_S:g}",
            )


_SAID: weakref.WeakKeyDictionary[Runner, _Said] = weakref.WeakKeyDictionary()


def _named(runner: Runner, kind: str) -> bool:
    said = _SAID.get(runner)
    if said is None:
        said = _SAID[runner] = _Said(runner.queue.name)
    return said.named(kind)


def left(
    run: Run, runner: Runner, thread: Future[Any] | None, pool: Executor, said: bool = False
) -> None:
    """``run``'s task was cancelled while its processor ran in a thread of ``pool``
    (``thread``: that call; None: an ``async`` processor, nothing to do): when the thread
    still runs, wind ``pool`` down (it ends as its threads return) and, when its timeout
    or ``cancel_job()`` ended the run, say so (``runner``'s first in a window; the others
    counted) unless ``said`` (``hold`` gave up on it with an ERROR)."""
    if thread is None or thread.done():
        return
    pool.shutdown(wait=False)
    if run.reason not in FAILING_CANCELS or run.abandoned or said:
        return  # a stop or a lost lease: said where they happen
    if not _named(runner, "left"):
        return
    job = run.job
    log.warning(
        "queue %s: job %s (%s) was ended by %s while its plain `def` processor still runs "
        "in its thread (a thread cannot be stopped): its outcome is recorded and its slot "
        "freed, so a retry may run beside this thread, here or on another worker, and what "
        'the thread returns is ignored. Use mode="process" for a hard timeout',
        printable(runner.queue.name),
        printable(job.id),
        printable(job.name),
        _BY[run.reason],
    )


class _Held:
    """The runs held on one thread's call (the jobs of one batch share it) and whether
    the worker gave up on it (then on them all)."""

    __slots__ = ("over", "runs")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.runs: list[Run] = []
        self.over: asyncio.Future[None] = loop.create_future()


_HELD: weakref.WeakKeyDictionary[Future[Any], _Held] = weakref.WeakKeyDictionary()


async def hold(run: Run, runner: Runner, thread: Future[Any] | None) -> bool:
    """``run``'s task was cancelled while its plain ``def`` processor runs in ``thread``,
    a call of ``runner``'s pool; None: its processor is ``async``, and the call of a pool
    of its own may run its job (``runends.thread_of``: a plain ``def`` batch function's,
    shared by the batch's jobs). With ``worker={"thread_overrun": "hold"}`` and its
    timeout the cause, wait for that thread before the run ends (module docstring): at
    most ``thread_overrun_max`` ms (None: the job's timeout). True when the worker gave
    up holding it (the thread still runs; an ERROR named the job); False otherwise, at
    once when the run is not held. The runs held on one call are given up together, in
    one ERROR naming them, when the first reaches its cap. Another cancellation of the
    task (a stop, a lost lease, ``cancel_job()``) ends the wait: the caller re-raises the
    first, and the run ends as that cancellation says (``run.reason``, ``run.abandoned``)."""
    config = runner.queue.worker_config
    if config.thread_overrun != "hold" or run.reason != "timeout" or run.abandoned:
        return False
    own = thread is not None
    if thread is None:
        thread = thread_of(run.job)
    if thread is None or thread.done():
        return False
    loop = asyncio.get_running_loop()
    given = config.thread_overrun_max  # whole ms (workerchecks.py), or None
    cap_ms = given if isinstance(given, int) else (run.policy.timeout_ms or 0)
    since = loop.time()
    held = _HELD.get(thread)
    if held is None or held.over.get_loop() is not loop:
        held = _HELD[thread] = _Held(loop)
    held.runs.append(run)
    waiter = asyncio.wrap_future(thread, loop=loop)
    waiter.add_done_callback(_retrieved)
    try:
        await asyncio.wait(
            {waiter, held.over}, timeout=cap_ms / 1000, return_when=asyncio.FIRST_COMPLETED
        )
        together = list(held.runs)
    except asyncio.CancelledError:
        return False  # ends as that cancellation says; the thread is left() next
    finally:
        if not waiter.done():
            waiter.cancel()  # the thread itself runs on: a running call cannot be cancelled
        held.runs.remove(run)
        if not held.runs and _HELD.get(thread) is held:
            del _HELD[thread]
    job, name = run.job, printable(runner.queue.name)
    seconds = _seconds(loop.time() - since)
    if thread.done():
        log.info(
            "queue %s: job %s (%s) was held %s s past its timeout until its plain `def` "
            'processor\'s thread returned (thread_overrun="hold"); its timeout is recorded '
            "now",
            name,
            printable(job.id),
            printable(job.name),
            seconds,
        )
        return False
    if held.over.done():
        return True  # given up with the others of its call: the ERROR named it
    held.over.set_result(None)
    hint = ' Use mode="process" for a hard timeout' if own else ""
    if len(together) > 1:
        log.error(
            "queue %s: %d jobs, %s, still run in one call of their plain `def` processor's "
            "thread %s s past the first one's timeout: the worker gives up holding them "
            "(thread_overrun_max=%d ms): their timeouts are recorded now and their slots "
            "freed, so their retries may run beside this thread, here or on another worker, "
            "and what the thread returns is ignored.%s",
            name,
            len(together),
            _jobs(together),
            seconds,
            cap_ms,
            hint,
        )
        return True
    log.error(
        "queue %s: job %s (%s) still runs in its plain `def` processor's thread %s s past "
        "its timeout: the worker gives up holding it (thread_overrun_max=%d ms): its "
        "timeout is recorded now and its slot freed, so its retry may run beside this "
        "thread, here or on another worker, and what the thread returns is ignored.%s",
        name,
        printable(job.id),
        printable(job.name),
        seconds,
        cap_ms,
        hint,
    )
    return True


def _jobs(runs: list[Run]) -> str:
    """The jobs of ``runs`` named (ten at most, then how many more)."""
    named = ", ".join(f"{printable(r.job.id)} ({printable(r.job.name)})" for r in runs[:10])
    return named + (f" and {len(runs) - 10} more" if len(runs) > 10 else "")


def _retrieved(waiter: asyncio.Future[Any]) -> None:
    # What a held thread raised is ignored (its timeout is what is recorded): retrieved,
    # so asyncio does not report it as never retrieved.
    if not waiter.cancelled():
        waiter.exception()


def _seconds(value: float) -> str:
    return f"{max(value, 0.0):.3f}".rstrip("0").rstrip(".")


def ignored(run: Run, runner: Runner, now: float) -> None:
    """``run``'s processor returned at loop time ``now`` although its task was cancelled
    by its timeout or ``cancel_job()``: it caught the cancellation. Say so (its result is
    kept by the caller; ``runner``'s first in a window, the others counted)."""
    if run.reason not in FAILING_CANCELS or run.abandoned:
        return
    if not _named(runner, "ignored"):
        return
    job = run.job
    log.warning(
        "queue %s: job %s (%s) caught the cancellation of %s and returned %s s after its "
        "start; it held its slot and lease until then, and its result is kept (completed). "
        "Let CancelledError propagate in an async processor",
        printable(runner.queue.name),
        printable(job.id),
        printable(job.name),
        _BY[run.reason],
        _seconds(now - run.started),
    )
