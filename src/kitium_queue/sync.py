"""``SyncJobQueue`` and ``SyncPartitionedQueue``: the producer and query methods for
synchronous code (Django, Flask, scripts). Each runs a private event loop in a background
thread and delegates to a ``JobQueue`` (or ``PartitionedQueue``) living there, so the
blocking and the asyncio clients share one implementation."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterable, Mapping
from typing import Any, TypeVar

from .enums import JobStatus
from .job import JobInfo
from .options import JobOptions
from .partitioned import PartitionedQueue
from .queue import HealthStatus, JobQueue, QueueStats
from .schedules import Schedule

__all__ = ["SyncJobQueue", "SyncPartitionedQueue"]

T = TypeVar("T")
S = TypeVar("S", bound="_SyncClient")


class _SyncClient:
    """The background loop and the methods both blocking clients share."""

    queue: JobQueue | PartitionedQueue

    def __init__(self, name: str, make: Any) -> None:
        # ``make``: a coroutine function building the asyncio queue inside the loop.
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"kq-sync-{name}", daemon=True
        )
        self._thread.start()
        self._closed = False
        try:
            self.queue = self._call(make())
        except BaseException:
            # Bad configuration: do not leave the loop thread behind.
            self._stop_loop()
            raise

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise RuntimeError(f"{type(self).__name__} is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    @property
    def name(self) -> str:
        return self.queue.name

    def add_job(
        self, job_name: str, data: Any = None,
        options: JobOptions | Mapping[str, Any] | None = None, **kwargs: Any,
    ) -> str:
        """See ``JobQueue.add_job``."""
        return self._call(self.queue.add_job(job_name, data, options, **kwargs))

    def add_jobs(self, jobs: Iterable[Any]) -> list[str]:
        """See ``JobQueue.add_jobs``."""
        return self._call(self.queue.add_jobs(list(jobs)))

    def get_job_status(self, job_id: str) -> JobInfo | None:
        """See ``JobQueue.get_job_status`` (a damaged record comes back as a
        ``JobInfo`` with ``damaged`` set, never as an exception)."""
        return self._call(self.queue.get_job_status(job_id))

    def get_job_logs(self, job_id: str, start: int = 0, end: int = -1) -> list[str]:
        """See ``JobQueue.get_job_logs``."""
        return self._call(self.queue.get_job_logs(job_id, start, end))

    def get_jobs_by_status(self, status: JobStatus | str, limit: int = 100) -> list[JobInfo]:
        """See ``JobQueue.get_jobs_by_status`` (``limit``: 0 to 100,000)."""
        return self._call(self.queue.get_jobs_by_status(status, limit))

    def get_stats(self) -> QueueStats:
        return self._call(self.queue.get_stats())

    def health_check(self) -> HealthStatus:
        return self._call(self.queue.health_check())

    def get_dlq_jobs(self, limit: int = 100) -> list[JobInfo]:
        """See ``JobQueue.get_dlq_jobs`` (``limit``: 0 to 100,000)."""
        return self._call(self.queue.get_dlq_jobs(limit))

    def replay_dlq(self, limit: int = 1000) -> int:
        return self._call(self.queue.replay_dlq(limit))

    def retry_job(self, job_id: str) -> None:
        self._call(self.queue.retry_job(job_id))

    def bulk_retry(self, status: JobStatus | str = JobStatus.FAILED, limit: int = 1000) -> int:
        return self._call(self.queue.bulk_retry(status, limit))

    def remove_job(self, job_id: str) -> bool:
        return self._call(self.queue.remove_job(job_id))

    def cancel_job(self, job_id: str) -> str:
        return self._call(self.queue.cancel_job(job_id))

    def pause(self) -> None:
        self._call(self.queue.pause())

    def resume(self) -> None:
        self._call(self.queue.resume())

    def drain(self, *, delayed: bool = True) -> int:
        return self._call(self.queue.drain(delayed=delayed))

    def clear(self, *, force: bool = False) -> None:
        self._call(self.queue.clear(force=force))

    def close(self) -> None:
        """Close the connection and stop the background loop."""
        if self._closed:
            return
        self._call(self.queue.close())
        self._stop_loop()

    def _stop_loop(self) -> None:
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def __enter__(self: S) -> S:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SyncJobQueue(_SyncClient):
    """Blocking client with ``JobQueue``'s producer, query, admin and schedule methods.

    Takes the same arguments as ``JobQueue``. Thread-safe. Use ``close()`` (or a
    ``with`` block) to stop its background loop.

    Example::

        queue = SyncJobQueue("emails", redis="redis://localhost:6379/0")
        job_id = queue.add_job("send-email", {"to": "a@b.c"}, attempts=5)
        print(queue.get_job_status(job_id))
    """

    queue: JobQueue

    def __init__(self, name: str, **config: Any) -> None:
        async def make() -> JobQueue:
            return JobQueue(name, **config)

        super().__init__(name, make)

    # -- schedules (see JobQueue.schedule_job; declare them at deploy time) ------------
    def schedule_job(
        self, job_name: str, data: Any, cron_pattern: str, **options: Any
    ) -> Schedule:
        """See ``JobQueue.schedule_job``."""
        return self._call(self.queue.schedule_job(job_name, data, cron_pattern, **options))

    def schedule_every(
        self, job_name: str, data: Any, interval_ms: Any, **options: Any
    ) -> Schedule:
        """See ``JobQueue.schedule_every``."""
        return self._call(self.queue.schedule_every(job_name, data, interval_ms, **options))

    def get_schedules(self) -> list[Schedule]:
        return self._call(self.queue.get_schedules())

    def get_schedule(self, schedule_id: str) -> Schedule | None:
        return self._call(self.queue.get_schedule(schedule_id))

    def update_schedule(self, schedule_id: str, **changes: Any) -> Schedule:
        return self._call(self.queue.update_schedule(schedule_id, **changes))

    def remove_schedule(self, schedule_id: str) -> bool:
        return self._call(self.queue.remove_schedule(schedule_id))

    def pause_schedule(self, schedule_id: str) -> bool:
        return self._call(self.queue.pause_schedule(schedule_id))

    def resume_schedule(self, schedule_id: str) -> bool:
        return self._call(self.queue.resume_schedule(schedule_id))


class SyncPartitionedQueue(_SyncClient):
    """Blocking client of a ``PartitionedQueue``: its producer, query and admin methods.

    Takes the same arguments as ``PartitionedQueue``; ids are the full
    ``"<partition>:<id>"`` ones. Schedules belong on a plain queue (``SyncJobQueue``).

    Example::

        orders = SyncPartitionedQueue("orders", partitions=6, redis="redis://localhost:6379")
        job_id = orders.add_job("charge", {"order": 42}, partition_key="customer-7")
    """

    queue: PartitionedQueue

    def __init__(self, name: str, *, partitions: int, **config: Any) -> None:
        async def make() -> PartitionedQueue:
            return PartitionedQueue(name, partitions=partitions, **config)

        super().__init__(name, make)

    @property
    def partitions(self) -> int:
        return self.queue.partitions

    def partition_of(self, key: str) -> int:
        """The partition a key maps to (see ``PartitionedQueue.partition_of``)."""
        return self.queue.partition_of(key)

    def parse_id(self, job_id: str) -> tuple[int, str] | None:
        """``(partition, inner id)`` of a full id, or None (see ``PartitionedQueue.parse_id``)."""
        return self.queue.parse_id(job_id)

    def partition_stats(self) -> list[QueueStats]:
        return self._call(self.queue.partition_stats())
