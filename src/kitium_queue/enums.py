"""The enums of the public API; their values are the strings the API documents."""

from __future__ import annotations

from enum import Enum

__all__ = [
    "CircuitBreakerState",
    "DeliveryGuarantee",
    "EncryptionAlgorithm",
    "JobStatus",
    "QueueEvent",
    "QueueRole",
    "WebhookDeliveryStrategy",
    "WebhookEventType",
]


class _StrEnum(str, Enum):
    def __str__(self) -> str:
        return str(self.value)


class JobStatus(_StrEnum):
    """Where a job is in its lifecycle.

    ``PENDING`` is a job created but held (dependencies, group turn, quota, open breaker);
    ``PAUSED`` is a waiting job of a paused queue; ``FAILED`` a job that failed for good
    while the DLQ is disabled; ``DLQ`` a job that failed for good and was dead-lettered.
    """

    PENDING = "pending"
    WAITING = "waiting"
    ACTIVE = "active"
    COMPLETED = "completed"
    FAILED = "failed"
    DELAYED = "delayed"
    PAUSED = "paused"
    DLQ = "dlq"


class QueueEvent(_StrEnum):
    """Events a queue emits; subscribe with ``queue.on(event, handler)``."""

    JOB_ADDED = "job-added"
    JOB_STARTED = "job-started"
    JOB_COMPLETED = "job-completed"
    JOB_FAILED = "job-failed"
    JOB_RETRYING = "job-retrying"
    JOB_STALLED = "job-stalled"
    JOB_PROGRESS = "job-progress"
    JOB_DLQ = "job-dlq"
    QUEUE_ERROR = "queue-error"


class DeliveryGuarantee(_StrEnum):
    """Processing guarantee of a job.

    ``AT_LEAST_ONCE``: a job whose worker dies is run again; a completed job is never run
    again by the engine. ``EXACTLY_ONCE`` means *effectively-once processing*: duplicate
    enqueues with the same idempotency key are suppressed and completion is fenced, so one
    outcome is recorded per job. No Redis queue can deliver exactly once to code with side
    effects outside Redis; use ``job.idempotency_key`` to make those idempotent.
    """

    AT_LEAST_ONCE = "at-least-once"
    EXACTLY_ONCE = "exactly-once"


class CircuitBreakerState(_StrEnum):
    """State of a circuit breaker."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class WebhookEventType(_StrEnum):
    """Events a webhook can subscribe to (four first; the job events share
    the names of ``QueueEvent``). Features add their own events as further members;
    ``register_webhook`` also accepts any event name as a string."""

    JOB_COMPLETED = "job-completed"
    JOB_FAILED = "job-failed"
    JOB_STARTED = "job-started"
    WORKFLOW_COMPLETED = "workflow-completed"
    JOB_ADDED = "job-added"
    JOB_RETRYING = "job-retrying"
    JOB_STALLED = "job-stalled"
    JOB_PROGRESS = "job-progress"
    JOB_DEAD_LETTERED = "job-dlq"
    JOB_REMOVED = "job-removed"
    WORKFLOW_FAILED = "workflow-failed"
    WORKFLOW_CANCELLED = "workflow-cancelled"
    BREAKER_STATE = "breaker-state"


class WebhookDeliveryStrategy(_StrEnum):
    """How hard a webhook delivery is retried."""

    BEST_EFFORT = "best-effort"
    RELIABLE = "reliable"
    GUARANTEED = "guaranteed"


class QueueRole(_StrEnum):
    """Roles of the access-control model."""

    ADMIN = "admin"
    MANAGER = "manager"
    OPERATOR = "operator"
    VIEWER = "viewer"


class EncryptionAlgorithm(_StrEnum):
    """Payload encryption algorithms."""

    AES_256_GCM = "aes-256-gcm"
    AES_256_CBC = "aes-256-cbc"
