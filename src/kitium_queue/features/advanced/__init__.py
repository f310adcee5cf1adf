"""``AdvancedQueueConfig``: every enterprise feature of a queue in one typed
configuration, and the switchboard that enables them (``queue.advanced``); see
``docs/advanced-config.md``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import load_lazily

if TYPE_CHECKING:
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

#: Public names, each imported on first use from the module that defines it.
_LAZY = {
    "SECTIONS": "config",
    "AdvancedQueueConfig": "config",
    "BatchingConfig": "config",
    "CircuitBreakerConfig": "config",
    "ComplianceConfig": "config",
    "CompressionConfig": "config",
    "CostOptimizationConfig": "config",
    "EncryptionConfig": "config",
    "ExactlyOnceConfig": "config",
    "FifoConfig": "config",
    "GlobalQueueConfig": "config",
    "MonitoringConfig": "config",
    "MultiTenancyConfig": "config",
    "RateLimitingConfig": "config",
    "RateLimitRule": "config",
    "RegionConfig": "config",
    "RetentionLimits": "config",
    "RetentionPeriods": "config",
    "StateLimit": "config",
    "WebhooksConfig": "config",
    "WorkflowsConfig": "config",
    "AdvancedFeatures": "switchboard",
}

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


if not TYPE_CHECKING:  # a type checker sees the names above, and flags any other

    def __getattr__(name: str) -> Any:
        return load_lazily(__name__, __path__, _LAZY, name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
