"""Runs that go on after their timeout or ``cancel_job()`` ended them, said once each.

* ``left``: a plain ``def`` processor whose run its timeout or ``cancel_job()`` ended
  while its thread still runs. A thread cannot be stopped: the job's outcome (the
  timeout's failure, retried after its backoff; a cancel's final failure) is recorded at
  once and its slot freed, so the retry may start, on this worker or another, while the
  thread still runs, and what the thread returns is ignored. A WARNING names the job;
  the thread's pool is wound down (the runner took a fresh one).
* ``ignored``: an ``async def`` processor that caught the ``CancelledError`` of its
  timeout (or of ``cancel_job()``) and returned: the run held its slot and lease until
  then, and its result is kept (``completed``: the run happened, and failing it would run
  its side effects again on a retry), as for a run that blocked the event loop past its
  timeout (``runends.RunEnds.overran``). A WARNING says so.

Neither costs the normal path anything: ``left`` runs only in a cancelled thread run,
``ignored`` only for a run whose task was cancelled.
"""

from __future__ import annotations

from concurrent.futures import Executor, Future
from typing import TYPE_CHECKING, Any

from .limits import get_logger, printable
from .runends import FAILING_CANCELS

if TYPE_CHECKING:
    from .leases import Run

__all__ = ["ignored", "left"]

log = get_logger("kitium_queue.worker")

_BY = {"timeout": "its timeout", "cancelled": "cancel_job()"}


def left(run: Run, queue_name: str, thread: Future[Any], pool: Executor) -> None:
    """``run``'s task was cancelled while its processor ran in a thread of ``pool``
    (``thread``: that call): when the thread still runs, wind ``pool`` down (it ends as
    its threads return) and, when its timeout or ``cancel_job()`` ended the run, say so."""
    if thread.done():
        return
    pool.shutdown(wait=False)
    if run.reason not in FAILING_CANCELS or run.abandoned:
        return  # a stop or a lost lease: said where they happen
    job = run.job
    log.warning(
        "queue %s: job %s (%s) was ended by %s while its plain `def` processor still runs "
        "in its thread (a thread cannot be stopped): its outcome is recorded and its slot "
        "freed, so a retry may run beside this thread, here or on another worker, and what "
        'the thread returns is ignored. Use mode="process" for a hard timeout',
        printable(queue_name),
        printable(job.id),
        printable(job.name),
        _BY[run.reason],
    )


def ignored(run: Run, queue_name: str, now: float) -> None:
    """``run``'s processor returned at loop time ``now`` although its task was cancelled
    by its timeout or ``cancel_job()``: it caught the cancellation. Say so (its result is
    kept by the caller)."""
    if run.reason not in FAILING_CANCELS or run.abandoned:
        return
    job = run.job
    log.warning(
        "queue %s: job %s (%s) caught the cancellation of %s and returned %s s after its "
        "start; it held its slot and lease until then, and its result is kept (completed). "
        "Let CancelledError propagate in an async processor",
        printable(queue_name),
        printable(job.id),
        printable(job.name),
        _BY[run.reason],
        f"{max(now - run.started, 0.0):.3f}".rstrip("0").rstrip("."),
    )
