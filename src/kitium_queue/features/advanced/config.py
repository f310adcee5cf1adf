"""``AdvancedQueueConfig``: every enterprise feature of a queue in one typed object.

``AdvancedQueueConfig`` with its thirteen sections, as frozen dataclasses.
Each section is also accepted as a plain dict with snake_case keys, and so is the whole
configuration; an unknown section or key is refused with the closest valid name::

    AdvancedQueueConfig(fifo={"enabled": True, "high_throughput": True})
    AdvancedQueueConfig.parse({"fifo": {"enabeld": True}})
    # ConfigurationError: unknown advanced.fifo option: 'enabeld' (did you mean 'enabled'?)

A section does nothing until ``enabled=True``; every other field has the default
documented on its class. Values are checked when the section is built (a bad value
fails at construction, naming the section and field), and once more against the queue
when ``JobQueue(..., advanced=...)`` enables the sections (``switchboard.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...options import coerce, unknown_options_error
from ...queueconfig import keywords_checked
from .base import Section
from .operations import (
    ComplianceConfig,
    CompressionConfig,
    CostOptimizationConfig,
    MonitoringConfig,
    RetentionLimits,
    RetentionPeriods,
    StateLimit,
)
from .sections import (
    BatchingConfig,
    CircuitBreakerConfig,
    EncryptionConfig,
    ExactlyOnceConfig,
    FifoConfig,
    GlobalQueueConfig,
    MultiTenancyConfig,
    RateLimitingConfig,
    RateLimitRule,
    RegionConfig,
    WebhooksConfig,
    WorkflowsConfig,
)

__all__ = [
    "SECTIONS",
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
    "Section",
    "StateLimit",
    "WebhooksConfig",
    "WorkflowsConfig",
]


#: The sections, in their order: name -> class.
SECTIONS: dict[str, type[Section]] = {
    "exactly_once": ExactlyOnceConfig,
    "fifo": FifoConfig,
    "encryption": EncryptionConfig,
    "workflows": WorkflowsConfig,
    "circuit_breaker": CircuitBreakerConfig,
    "webhooks": WebhooksConfig,
    "global_queue": GlobalQueueConfig,
    "multi_tenancy": MultiTenancyConfig,
    "batching": BatchingConfig,
    "rate_limiting": RateLimitingConfig,
    "cost_optimization": CostOptimizationConfig,
    "monitoring": MonitoringConfig,
    "compliance": ComplianceConfig,
}


@dataclass(frozen=True)
class AdvancedQueueConfig:
    """The configuration of every enterprise feature of a queue: pass it as
    ``JobQueue(..., advanced=...)``.

    Each section is a dataclass of its own (or a dict of its fields) and does nothing
    until ``enabled=True``. See each section's class for its fields and defaults, and
    docs/advanced-config.md for the whole picture.

    Example::

        queue = JobQueue("orders", redis="redis://localhost:6379/0", advanced={
            "exactly_once": {"enabled": True, "ttl_ms": 3_600_000},
            "fifo": {"enabled": True},
            "cost_optimization": {"enabled": True, "retention": {"dlq": {"count": 10_000}}},
            "compliance": {"enabled": True, "redact_fields": ["user.email"]},
        })
    """

    exactly_once: Any = None
    fifo: Any = None
    encryption: Any = None
    workflows: Any = None
    circuit_breaker: Any = None
    webhooks: Any = None
    global_queue: Any = None
    multi_tenancy: Any = None
    batching: Any = None
    rate_limiting: Any = None
    cost_optimization: Any = None
    monitoring: Any = None
    compliance: Any = None

    def __post_init__(self) -> None:
        for name, cls in SECTIONS.items():
            object.__setattr__(self, name, cls.parse(getattr(self, name), f"advanced.{name}"))

    @classmethod
    def parse(cls, value: Any) -> AdvancedQueueConfig:
        """An ``AdvancedQueueConfig`` from one, from a dict of sections (unknown sections
        refused with a suggestion) or None."""
        return coerce(cls, value, "advanced", "section")

    def section(self, name: str) -> Section:
        """The section ``name`` (``"fifo"``, ...)."""
        if name not in SECTIONS:
            raise unknown_options_error("advanced", [name], list(SECTIONS), "section")
        out: Section = getattr(self, name)
        return out

    def enabled_sections(self) -> list[str]:
        """The names of the enabled sections, in the order of ``SECTIONS``."""
        return [n for n in SECTIONS if getattr(self, n).enabled]

    def to_dict(self) -> dict[str, Any]:
        """Every section as plain data (secrets hidden)."""
        return {n: getattr(self, n).to_dict() for n in SECTIONS}


# An unknown keyword of a section's constructor (FifoConfig(enabeld=True)) is refused as
# the same key in a dict is (unknown advanced.fifo option: 'enabeld' (did you mean
# 'enabled'?)), not with a bare TypeError.
keywords_checked(AdvancedQueueConfig, "advanced", "section")
for _cls in SECTIONS.values():
    keywords_checked(_cls, _cls.PATH, "option")
for _part in (RateLimitRule, RegionConfig, RetentionLimits, RetentionPeriods, StateLimit):
    keywords_checked(_part)
