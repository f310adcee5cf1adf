"""The built-in lifecycle subscriber: ``queue.on(...)`` events, the metrics adapter, logs
and the DLQ notification handler, expressed on the lifecycle hooks (``hooks.py``).

Every queue has one ``Observer`` as its first subscriber, so the order users see is the
same as when this code was written inline: metrics first, then the in-process event.
Further subscribers (Prometheus, OpenTelemetry, webhooks, audit) are added after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .events import EventData
from .hooks import Subscriber

if TYPE_CHECKING:
    from .adapters import MetricsAdapter
    from .events import EventEmitter

__all__ = ["Observer"]


class Observer(Subscriber):
    """Events, metrics and logs of one queue.

    Args:
        queue: the queue name.
        emitter: the queue's ``EventEmitter`` (``queue.on``).
        metrics: the queue's metrics adapter, or None.
    """

    def __init__(self, queue: str, emitter: EventEmitter, metrics: MetricsAdapter | None) -> None:
        self.queue = queue
        self.emitter = emitter
        self.metrics = metrics

    def enqueued(self, queue: str, job_ids: Sequence[str], names: Sequence[str]) -> None:
        if self.metrics is not None:
            # One increment per call: a batch of one name is tagged with it, a mixed
            # batch with "*".
            first = names[0] if names else "*"
            name = first if all(n == first for n in names) else "*"
            self.metrics.increment("jobs.added", len(job_ids), {"queue": queue, "job_name": name})
        if self.emitter.wants("job-added"):
            for job_id, job_name in zip(job_ids, names, strict=False):
                self.emitter.emit(EventData("job-added", queue, job_id, extra={"name": job_name}))
