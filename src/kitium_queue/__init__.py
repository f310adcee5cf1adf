"""kitium-queue: an asyncio-first job queue on Redis with leases, fencing and a Lua engine.

Quick start::

    from kitium_queue import JobQueue

    queue = JobQueue("emails")              # memory:// by default; pass redis="redis://..."

    @queue.process("send-email")
    async def send_email(job):
        return {"sent": job.data["to"]}

    await queue.add_job("send-email", {"to": "a@b.c"})
    await queue.run_worker()
"""

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .connerrors import ConnectionLimitError
from .enums import (
    CircuitBreakerState,
    DeliveryGuarantee,
    EncryptionAlgorithm,
    JobStatus,
    QueueEvent,
    QueueRole,
    WebhookDeliveryStrategy,
    WebhookEventType,
)
from .errors import (
    AccessDeniedError,
    BreakerNotFoundError,
    CircuitOpenError,
    ConfigurationError,
    ConnectionUnavailableError,
    DamagedKeyError,
    FencedError,
    JobActiveError,
    JobNotFoundError,
    JobRefusedError,
    JobStateError,
    KitiumQueueError,
    LeaseLostError,
    NonRetryableError,
    PartialEnqueueError,
    PayloadTooLargeError,
    PermissionDeniedError,
    QueueActiveError,
    QuotaExceededError,
    RateLimited,
    ReplicaAckError,
    RetryLater,
    ScheduleNotFoundError,
    ScriptArgumentError,
    SerializationError,
    TenantNotFoundError,
    WriteNotConfirmedError,
    WriteRefusedError,
)
from .events import EventData, StreamEvent
from .features.access import (
    AccessControlManager,
    AccessEntry,
    Permission,
    QueuePermissions,
)
from .features.advanced import AdvancedQueueConfig
from .features.alerts import AlertManager, AlertRule
from .features.audit import AuditEntry, AuditLog, AuditReport
from .features.breakers import (
    BreakerConfig,
    BreakerStats,
    CircuitBreaker,
    CircuitBreakerManager,
    FailureThreshold,
)
from .features.compliance import ComplianceManager, ErasureReport
from .features.encryption import (
    DecryptionError,
    EncryptionError,
    EncryptionManager,
    KeyConfig,
    RotationStatus,
)
from .features.groups import FIFOQueueManager, GroupConfig, GroupRateLimit, MessageGroupStats
from .features.idempotency import ExecutionResult, IdempotencyManager
from .features.partitioned import PartitionedQueue
from .features.regions import (
    FailoverError,
    GlobalQueueConfig,
    GlobalQueueManager,
    GlobalStats,
    RegionConfig,
    RegionNotAllowedError,
    RegionStats,
    RegionUnavailableError,
    ReplicationTimeoutError,
    TenantRegionMap,
)
from .features.replicas import ReplicaAcks
from .features.schedules import Schedule
from .features.tenancy import TenantConfig, TenantQuota, TenantRegistry, TenantUsage
from .features.workflows import JobChainManager, WorkflowStatus, WorkflowStep
from .hooks import FeatureEvent
from .identity import acting_as, current_principal
from .job import Job, JobInfo, JobProcessor
from .leader import LeaderLease, LeaderService
from .options import (
    BackoffOptions,
    DLQConfig,
    ExtendedJobOptions,
    JobOptions,
    LimiterConfig,
    QueueSettings,
    RetryConfig,
    WorkerConfig,
)
from .outbox import DeadEntry, GroupStats, Outbox, OutboxConsumer, OutboxEntry, OutboxStats
from .queue import HealthStatus, JobQueue, QueueStats
from .queueconfig import QueueConfig
from .sync import SyncJobQueue, SyncPartitionedQueue

if TYPE_CHECKING:
    from .features.webhooks import (
        WebhookConfig,
        WebhookEvent,
        WebhookManager,
        WebhookVerificationError,
        generate_secret,
        verify_webhook,
    )

#: Names imported on first use (the webhooks feature loads httpx).
_LAZY = {
    "WebhookConfig": "features.webhooks",
    "WebhookEvent": "features.webhooks",
    "WebhookManager": "features.webhooks",
    "WebhookVerificationError": "features.webhooks",
    "generate_secret": "features.webhooks",
    "verify_webhook": "features.webhooks",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "AccessControlManager",
    "AccessDeniedError",
    "AccessEntry",
    "AdvancedQueueConfig",
    "AlertManager",
    "AlertRule",
    "AuditEntry",
    "AuditLog",
    "AuditReport",
    "BackoffOptions",
    "BreakerConfig",
    "BreakerNotFoundError",
    "BreakerStats",
    "CircuitBreaker",
    "CircuitBreakerManager",
    "CircuitBreakerState",
    "CircuitOpenError",
    "ComplianceManager",
    "ConfigurationError",
    "ConnectionLimitError",
    "ConnectionUnavailableError",
    "DLQConfig",
    "DamagedKeyError",
    "DeadEntry",
    "DecryptionError",
    "DeliveryGuarantee",
    "EncryptionAlgorithm",
    "EncryptionError",
    "EncryptionManager",
    "ErasureReport",
    "EventData",
    "ExecutionResult",
    "ExtendedJobOptions",
    "FIFOQueueManager",
    "FailoverError",
    "FailureThreshold",
    "FeatureEvent",
    "FencedError",
    "GlobalQueueConfig",
    "GlobalQueueManager",
    "GlobalStats",
    "GroupConfig",
    "GroupRateLimit",
    "GroupStats",
    "HealthStatus",
    "IdempotencyManager",
    "Job",
    "JobActiveError",
    "JobChainManager",
    "JobInfo",
    "JobNotFoundError",
    "JobOptions",
    "JobProcessor",
    "JobQueue",
    "JobRefusedError",
    "JobStateError",
    "JobStatus",
    "KeyConfig",
    "KitiumQueueError",
    "LeaderLease",
    "LeaderService",
    "LeaseLostError",
    "LimiterConfig",
    "MessageGroupStats",
    "NonRetryableError",
    "Outbox",
    "OutboxConsumer",
    "OutboxEntry",
    "OutboxStats",
    "PartialEnqueueError",
    "PartitionedQueue",
    "PayloadTooLargeError",
    "Permission",
    "PermissionDeniedError",
    "QueueActiveError",
    "QueueConfig",
    "QueueEvent",
    "QueuePermissions",
    "QueueRole",
    "QueueSettings",
    "QueueStats",
    "QuotaExceededError",
    "RateLimited",
    "RegionConfig",
    "RegionNotAllowedError",
    "RegionStats",
    "RegionUnavailableError",
    "ReplicaAckError",
    "ReplicaAcks",
    "ReplicationTimeoutError",
    "RetryConfig",
    "RetryLater",
    "RotationStatus",
    "Schedule",
    "ScheduleNotFoundError",
    "ScriptArgumentError",
    "SerializationError",
    "StreamEvent",
    "SyncJobQueue",
    "SyncPartitionedQueue",
    "TenantConfig",
    "TenantNotFoundError",
    "TenantQuota",
    "TenantRegionMap",
    "TenantRegistry",
    "TenantUsage",
    "WebhookConfig",
    "WebhookDeliveryStrategy",
    "WebhookEvent",
    "WebhookEventType",
    "WebhookManager",
    "WebhookVerificationError",
    "WorkerConfig",
    "WorkflowStatus",
    "WorkflowStep",
    "WriteNotConfirmedError",
    "WriteRefusedError",
    "__version__",
    "acting_as",
    "current_principal",
    "generate_secret",
    "verify_webhook",
]
