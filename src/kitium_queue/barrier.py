"""Write barriers: a command run right after a write, before the write is acknowledged.

A queue acknowledges two kinds of writes: an enqueue (``add_job`` / ``add_jobs`` return
the ids) and an outcome (the worker reports it on the lifecycle hooks). A *write
barrier* (``queue.set_write_barrier(barrier)``; one per queue) may ask for a plain
command to follow such a write on the same connection, in the same exchange, and judges
its reply before the write is acknowledged. Replica-acknowledged writes
(``features/replicas``: ``WAIT``) are built on it; the core never knows what the
command means.

The protocol:

* ``for_enqueue(options)``: the command to run after writing jobs added with these
  options (one mapping per job, as given to ``add_job``, after the enqueue
  middleware), or None for no command. Called per script call of an enqueue (a chunk of
  ``add_jobs``, or the ``add_job`` calls that share one round trip), and once per
  ``add_job`` with that call's options alone, to put it in the batch of the calls a
  command follows or of those it does not (``coalesce.py``): it must have no side
  effects.
* ``check_enqueue(command, reply, options)``: one entry per job: None when its write is
  acknowledged, or the exception its caller gets instead (the job *was* written).
* ``for_outcomes()``: the command to run after a worker's finish calls, or None.
* ``check_outcomes(command, reply, count)``: None, or the error reported (log and
  ``queue_error`` hook) for ``count`` outcomes recorded but not confirmed by the
  command. Outcomes stay recorded either way: a recorded outcome cannot be taken back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from .limits import get_logger, safe_text

if TYPE_CHECKING:
    from .hooks import HookBus

__all__ = ["UnconfirmedOutcomes", "WriteBarrier"]

log = get_logger(__name__)


class WriteBarrier(Protocol):
    """What ``queue.set_write_barrier`` takes (see the module docstring)."""

    def for_enqueue(self, options: Sequence[Mapping[str, Any]]) -> Sequence[Any] | None: ...

    def check_enqueue(
        self, command: Sequence[Any], reply: Any, options: Sequence[Mapping[str, Any]]
    ) -> list[BaseException | None]: ...

    def for_outcomes(self) -> Sequence[Any] | None: ...

    def check_outcomes(
        self, command: Sequence[Any], reply: Any, count: int
    ) -> BaseException | None: ...


class UnconfirmedOutcomes:
    """A worker's outcomes that its queue's write barrier did not confirm: they stay
    recorded (a recorded outcome cannot be taken back); each round's are reported on the
    ``queue_error`` hook, and in the log at most once per ``LOG_S``."""

    #: At most one log line per this many seconds.
    LOG_S = 10.0

    def __init__(self, worker_id: str, queue_name: str, hooks: HookBus) -> None:
        self.worker_id, self.queue_name, self.hooks = worker_id, queue_name, hooks
        self.count = 0  # since the worker started
        self._logged = -self.LOG_S

    def judge(self, barrier: WriteBarrier, command: Any, reply: Any, count: int) -> None:
        """Judge ``barrier``'s ``reply`` to ``command``, run after ``count`` outcomes."""
        err = barrier.check_outcomes(command, reply, count)
        if err is None:
            return
        self.count += count
        now = asyncio.get_running_loop().time()
        if now - self._logged >= self.LOG_S:
            self._logged = now
            log.warning(
                "worker %s: %d outcome(s) on queue %s recorded but not confirmed (%d "
                "since start): %s",
                self.worker_id,
                count,
                self.queue_name,
                self.count,
                safe_text(err),
            )
        if self.hooks.queue_error:
            self.hooks.emit_queue_error(self.queue_name, err)
