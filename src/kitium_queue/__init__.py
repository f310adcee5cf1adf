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
    IdempotencyConflictError,
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
from .features import load_lazily
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
from .queue import HealthStatus, JobQueue, QueueStats
from .queueconfig import QueueConfig

if TYPE_CHECKING:
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
    from .features.webhooks import (
        WebhookConfig,
        WebhookEvent,
        WebhookManager,
        WebhookVerificationError,
        generate_secret,
        verify_webhook,
    )
    from .features.workflows import JobChainManager, WorkflowStatus, WorkflowStep
    from .outbox import DeadEntry, GroupStats, Outbox, OutboxConsumer, OutboxEntry, OutboxStats
    from .sync import SyncJobQueue, SyncPartitionedQueue

#: Names imported on first use, by the module that defines them. A feature registers
#: nothing when imported: what it plugs into a queue (options, hooks, Lua slots,
#: services) it installs when it is built for that queue, so loading it on first use
#: changes nothing but when its modules are read.
_LAZY = {
    name: module
    for module, names in {
        "features.access": "AccessControlManager AccessEntry Permission QueuePermissions",
        "features.advanced": "AdvancedQueueConfig",
        "features.alerts": "AlertManager AlertRule",
        "features.audit": "AuditEntry AuditLog AuditReport",
        "features.breakers": (
            "BreakerConfig BreakerStats CircuitBreaker CircuitBreakerManager FailureThreshold"
        ),
        "features.compliance": "ComplianceManager ErasureReport",
        "features.encryption": (
            "DecryptionError EncryptionError EncryptionManager KeyConfig RotationStatus"
        ),
        "features.groups": "FIFOQueueManager GroupConfig GroupRateLimit MessageGroupStats",
        "features.idempotency": "ExecutionResult IdempotencyManager",
        "features.partitioned": "PartitionedQueue",
        "features.regions": (
            "FailoverError GlobalQueueConfig GlobalQueueManager GlobalStats RegionConfig "
            "RegionNotAllowedError RegionStats RegionUnavailableError "
            "ReplicationTimeoutError TenantRegionMap"
        ),
        "features.replicas": "ReplicaAcks",
        "features.schedules": "Schedule",
        "features.tenancy": "TenantConfig TenantQuota TenantRegistry TenantUsage",
        "features.webhooks": (
            "WebhookConfig WebhookEvent WebhookManager WebhookVerificationError "
            "generate_secret verify_webhook"
        ),
        "features.workflows": "JobChainManager WorkflowStatus WorkflowStep",
        "outbox": "DeadEntry GroupStats Outbox OutboxConsumer OutboxEntry OutboxStats",
        "sync": "SyncJobQueue SyncPartitionedQueue",
    }.items()
    for name in names.split()
}
#: Modules of the package that an attribute does not import (entry points, optional
#: extras); any other (``kitium_queue.worker``) is imported on first use.
_NOT_ATTRIBUTES = frozenset({"__main__", "_child", "cli", "dashboard", "demo"})


if not TYPE_CHECKING:  # a type checker sees the names above, and flags any other

    def __getattr__(name: str) -> Any:
        return load_lazily(__name__, __path__, _LAZY, name, _NOT_ATTRIBUTES)


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


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
    "IdempotencyConflictError",
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
