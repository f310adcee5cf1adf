"""The checks of the ``worker`` section (``options.WorkerConfig``), run when it is built:
its flag and count, and what a plain ``def`` processor's run past its timeout does while
its thread runs on (``thread_overrun``, ``thread_overrun_max``; ``overruns.hold``).

A value out of its range raises ``ConfigurationError`` naming the field and the range,
as every option does (``options.py``, README "Limits and ranges").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import ConfigurationError
from .options import MAX_COUNT, shown, to_int, to_ms

if TYPE_CHECKING:
    from .options import WorkerConfig

__all__ = ["THREAD_OVERRUNS", "check_worker"]

#: The values of ``worker.thread_overrun``: ``release`` (the default) records a timed-out
#: plain ``def`` run's timeout and frees its slot at once while its thread runs on;
#: ``hold`` keeps its job leased and its slot taken until the thread returns.
THREAD_OVERRUNS = ("release", "hold")


def check_worker(config: WorkerConfig) -> None:
    """Refuse a field of ``config`` out of its range; ``thread_overrun_max`` becomes
    whole ms (None stays None: as long as the job's own timeout)."""
    if not isinstance(config.scheduler, bool):
        raise ConfigurationError(
            f"worker.scheduler must be True or False, got {shown(config.scheduler)}"
        )
    if config.max_jobs_per_child is not None:
        what = "worker.max_jobs_per_child"
        to_int(config.max_jobs_per_child, what, minimum=1, maximum=MAX_COUNT)
    mode = config.thread_overrun
    if not isinstance(mode, str) or mode not in THREAD_OVERRUNS:
        raise ConfigurationError(
            "worker.thread_overrun must be 'release' (a plain def processor past its "
            "timeout frees its slot while its thread runs on) or 'hold' (its job stays "
            f"leased and its slot taken until the thread returns), got {shown(mode)}"
        )
    cap = to_ms(config.thread_overrun_max, "worker.thread_overrun_max", allow_none=True, minimum=1)
    object.__setattr__(config, "thread_overrun_max", cap)
