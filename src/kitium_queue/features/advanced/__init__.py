"""``AdvancedQueueConfig``: every enterprise feature of a queue in one typed
configuration, and the switchboard that enables them (``queue.advanced``); see
``docs/advanced-config.md``."""

from __future__ import annotations

from .config import (
    SECTIONS,
    AdvancedQueueConfig,
    BatchingConfig,
    CircuitBreakerConfig,
    ComplianceConfig,
    CompressionConfig,
    CostOptimizationConfig,
    EncryptionConfig,
    ExactlyOnceConfig,
    FifoConfig,
    GlobalQueueConfig,
    MonitoringConfig,
    MultiTenancyConfig,
    RateLimitingConfig,
    RateLimitRule,
    RegionConfig,
    RetentionLimits,
    RetentionPeriods,
    StateLimit,
    WebhooksConfig,
    WorkflowsConfig,
)
from .switchboard import AdvancedFeatures

__all__ = [
    "SECTIONS",
    "AdvancedFeatures",
    "AdvancedQueueConfig",
    "BatchingConfig",
    "CircuitBreakerConfig",
    "ComplianceConfig",
    "CompressionConfig",
    "CostOptimizationConfig",
    "EncryptionConfig",
    "ExactlyOnceConfig",
    "FifoConfig",
    "GlobalQueueConfig",
    "MonitoringConfig",
    "MultiTenancyConfig",
    "RateLimitRule",
    "RateLimitingConfig",
    "RegionConfig",
    "RetentionLimits",
    "RetentionPeriods",
    "StateLimit",
    "WebhooksConfig",
    "WorkflowsConfig",
]
