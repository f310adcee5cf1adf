"""The feature options the core knows by name only, for a clear refusal while their
feature is not enabled on a queue (``jobspec.JobSpec.check_names``).

* ``FEATURE_OPTION_NAMES``: the enterprise features' options (the fields of
  ``ExtendedJobOptions`` beyond the core's: ``message_group_id``, ``tenant_id``, ...);
* ``FEATURE_HOWTO``: for each of them, the feature that owns it and how to enable that
  feature on a queue (presence and the regions' copies read it too);
* ``OTHER_FEATURE_OPTIONS``: options a feature declares beyond those
  (``idempotency_window``, ``wait_replicas``, ``on_failure``...), with the same two
  texts: given to a queue without their feature they are refused by what they need, not
  as unknown (``unknown job option: 'idempotency_conflict' (did you mean
  'idempotency_key'?)`` sent a user looking at the wrong option);
* ``KNOWN_FEATURE_OPTIONS``: both;
* ``feature_needed(option, queue)``: the error.

The core never declares these options: the features do (``JobQueue.declare_option``).
"""

from __future__ import annotations

from dataclasses import fields

from .errors import ConfigurationError
from .options import ExtendedJobOptions, JobOptions

__all__ = [
    "FEATURE_HOWTO",
    "FEATURE_OPTION_NAMES",
    "KNOWN_FEATURE_OPTIONS",
    "OTHER_FEATURE_OPTIONS",
    "feature_needed",
]

#: Options of the enterprise features (FIFO groups, encryption, breakers, webhooks,
#: workflows, regions, tenants, flow control), known by name only: while no feature
#: declared one, it is refused as "needs <feature> (not enabled on queue ...)" with how to
#: enable it (``FEATURE_HOWTO``) rather than as unknown. The core never declares them.
FEATURE_OPTION_NAMES = frozenset(f.name for f in fields(ExtendedJobOptions)) - {
    "delivery_guarantee",
    "idempotency_key",
    *(f.name for f in fields(JobOptions)),
}


#: For each feature option: the feature that owns it and how to enable that feature on a
#: queue, quoted when the option is given to a queue without it. An option with no entry
#: here gets a generic message.
FEATURE_HOWTO: dict[str, tuple[str, str]] = {
    "message_group_id": ("FIFO groups", "create FIFOQueueManager(queue)"),
    "encrypted": ("payload encryption", "create EncryptionManager(queue) and add a key"),
    "circuit_breaker_id": ("circuit breakers", "create CircuitBreakerManager(queue)"),
    "webhook_url": ("webhooks", "create WebhookManager(queue)"),
    "workflow_id": ("workflows", "create JobChainManager(queue)"),
    "depends_on": ("job dependencies (workflows)", "create JobChainManager(queue)"),
    "region": ("global queues", "add the job through GlobalQueueManager.add_job"),
    "tenant_id": (
        "multi-tenancy",
        "enable it with TenantRegistry(queue) (or registry.enable(queue))",
    ),
    "rate_limit_key": ("flow control", "declare a limit: queue.set_rate_limit('key:*', ...)"),
    "concurrency_key": ("flow control", "declare a limit: queue.set_concurrency_limit('key:*', n)"),
    "subject_id": (
        "compliance (erasure by subject)",
        "create ComplianceManager(queue) or enable the compliance section of AdvancedQueueConfig",
    ),
}


_EFFECTIVELY_ONCE = ("effectively-once processing", "create IdempotencyManager(queue)")
_WORKFLOWS = FEATURE_HOWTO["workflow_id"]

#: Options features declare beyond ``FEATURE_OPTION_NAMES`` (module docstring).
OTHER_FEATURE_OPTIONS: dict[str, tuple[str, str]] = {
    "idempotency_window": _EFFECTIVELY_ONCE,
    "idempotency_conflict": _EFFECTIVELY_ONCE,
    "workflow_step": _WORKFLOWS,
    "on_failure": _WORKFLOWS,
    "data_transformer": _WORKFLOWS,
    "wait_replicas": ("replica-acknowledged writes", "create ReplicaAcks(queue, replicas=n)"),
    "wait_timeout_ms": ("replica-acknowledged writes", "create ReplicaAcks(queue, replicas=n)"),
}

KNOWN_FEATURE_OPTIONS = FEATURE_OPTION_NAMES | frozenset(OTHER_FEATURE_OPTIONS)


def feature_needed(option: str, queue_name: str) -> ConfigurationError:
    """The error for feature option ``option`` given to a queue without its feature."""
    known = FEATURE_HOWTO.get(option) or OTHER_FEATURE_OPTIONS.get(option)
    feature, how = known or ("a feature", "enable the feature that owns it")
    return ConfigurationError(
        f"option {option!r} needs {feature} (not enabled on queue {queue_name!r}): {how} "
        "before adding such jobs, or drop the option"
    )
