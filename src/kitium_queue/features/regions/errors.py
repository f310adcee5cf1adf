"""Errors of the regions feature (all ``KitiumQueueError``\\ s)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...errors import JobRefusedError, KitiumQueueError

__all__ = [
    "FailoverError",
    "RegionNotAllowedError",
    "RegionUnavailableError",
    "ReplicationTimeoutError",
]


class RegionUnavailableError(KitiumQueueError, ConnectionError):
    """No region can take the call now: the primary is unreachable (or has no lease) and
    no other region has been promoted yet. Add the job again (with the same ``job_id``)
    once a primary serves (``get_global_stats()`` shows when)."""

    @classmethod
    def primary_gone(
        cls, queue: str, primary: str | None, topo: Any, exc: BaseException
    ) -> RegionUnavailableError:
        """The error of an ``add_job`` whose primary could not be reached (or answered
        nothing for ``failover.timeout_ms``); ``topo``: the regions as this process
        knows them now (their configuration, the current primary)."""
        failover, view = topo.cfg.failover, topo.view
        if view.primary is not None and view.primary != primary:
            now = f"region {view.primary} has taken over as the primary (epoch {view.epoch})"
        elif failover.enabled:
            now = (
                f"automatic failover replaces it once it has been unreachable for "
                f"{failover.timeout_ms} ms"
            )
        else:
            now = "automatic failover is off: use failover_to(region)"
        return cls(
            f"the primary region {primary} of queue {queue!r} is unreachable "
            f"({type(exc).__name__}: {exc}); {now}. The job may or may not have been "
            "stored there: add it again with the same job_id (or idempotency_key), which "
            "never adds it twice in one region (a former primary's copy of a job the new "
            "primary has is not reported stranded)"
        )


class ReplicationTimeoutError(KitiumQueueError):
    """Synchronous replication: a job was stored by the primary, but fewer than
    ``min_acks`` other regions confirmed it within ``ack_timeout_ms``.

    The job is not acknowledged as replicated: it stays queued at the primary and
    reaches the other regions asynchronously, so it may be lost if the primary fails
    before that. Adding it again with the same ``job_id`` (``job_ids``) or idempotency key
    is safe: it is not added twice.

    Attributes:
        job_ids: the ids of the jobs of the call (full ids of the global queue).
        acked: per job id, the regions that confirmed it.
    """

    def __init__(
        self, message: str, job_ids: Sequence[str] = (), acked: dict[str, list[str]] | None = None
    ) -> None:
        super().__init__(message)
        self.job_ids = list(job_ids)
        self.acked = dict(acked or {})


class RegionNotAllowedError(JobRefusedError):
    """The job's tenant may not place jobs in the region asked for (or in none of the
    configured regions): nothing was written."""


class FailoverError(KitiumQueueError):
    """A failover could not be carried out (no majority of regions reachable, the votes
    went to another candidate, the region is not eligible); the message says which and
    what to do. The previous primary, if any, is still the primary."""
