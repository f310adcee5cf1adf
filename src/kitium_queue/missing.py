"""Job records found missing (evicted under an ``allkeys-*`` policy accepted with
``allow_eviction``, or deleted by hand), reported at a bounded rate: ``MissingRecords``.

The scripts count what they find (``QueueStats.missing_records``); the worker and the
queries report it here, in a warning at most every ``MISSING_LOG_S`` seconds per queue
and process, never per record.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from .limits import get_logger

__all__ = ["MISSING_LOG_S", "MissingRecords"]

log = get_logger(__name__)

#: At most one warning about missing job records per this many seconds (queue, process).
MISSING_LOG_S = 30.0


class MissingRecords:
    """Reports job records found missing, at a bounded rate (one per queue).

    The scripts count what they find (meta field ``missing``: a waiting, delayed or
    running job whose hash is gone is dead-lettered with the reason "job record
    missing", a finished one is dropped from its list); the worker and the queries call
    ``seen(n)`` when they meet some, and ``counted(total)`` with the total in Redis when
    they read it. A warning goes out when the total grew (or records were seen) and the
    last one is ``MISSING_LOG_S`` seconds old: it says how many, the total, and why
    records go missing. Never raises.
    """

    def __init__(self, queue: str, *, clock: Callable[[], float] | None = None) -> None:
        self.queue = queue
        self._clock = clock or time.monotonic
        self._logged_at: float | None = None
        self._total_logged = 0
        self._flush: asyncio.TimerHandle | None = None
        self._pending_total: int | None = None  # a total read while the window held
        self._seen = 0
        #: Records seen missing by this process since it started.
        self.seen_total = 0

    def seen(self, n: int = 1, where: str = "") -> None:
        """``n`` records found missing by this process (``where``: in which state)."""
        if n <= 0:
            return
        self._seen += n
        self.seen_total += n
        if not self.due():  # said once the window ends, even if nothing else is seen
            self._flush_later(where)
        self._maybe_log(None, where)

    def _flush_later(self, where: str) -> None:
        if self._flush is not None or self._logged_at is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a sync caller): said with the next record seen
            return
        wait = max(0.0, MISSING_LOG_S - (self._clock() - self._logged_at))

        def flush() -> None:
            self._flush, total, self._pending_total = None, self._pending_total, None
            self._maybe_log(total, where)

        self._flush = loop.call_later(wait, flush)

    def counted(self, total: int) -> None:
        """The queue's total of missing records, as read from Redis."""
        if total > self._total_logged:
            if not self.due():  # said once the window ends, with the latest total
                self._pending_total = max(self._pending_total or 0, total)
                self._flush_later("")
            self._maybe_log(total, "")

    def due(self) -> bool:
        """Whether a warning could go out now (a caller reads the total only then)."""
        return self._logged_at is None or self._clock() - self._logged_at >= MISSING_LOG_S

    def _maybe_log(self, total: int | None, where: str) -> None:
        if not self.due():
            return
        new = self._seen
        if total is not None:
            new = max(new, total - self._total_logged)
            self._total_logged = total
        if new <= 0:
            return
        self._logged_at = self._clock()
        self._seen = 0
        log.warning(
            "queue %s: %d job record(s) found missing%s%s: their hashes were evicted "
            "(a maxmemory-policy allkeys-*/volatile-*: accepted with allow_eviction=True, "
            "or set on the server while the workers ran), "
            "deleted by hand, or lost by Redis with its latest writes (a failover to a "
            "replica that had not received them). Waiting, delayed and running ones "
            "are dead-lettered with the reason 'job record missing' (their data is "
            "gone); see QueueStats.missing_records. Give Redis more memory or use "
            "noeviction",
            self.queue,
            new,
            f" ({where})" if where else "",
            "" if total is None else f", {total} since the queue was cleared",
        )
