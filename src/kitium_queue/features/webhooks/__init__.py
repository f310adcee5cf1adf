"""Signed webhooks with delivery guarantees (docs/webhooks.md).

``WebhookManager(queue)`` registers endpoints (stored in Redis, secrets kept in the
application's processes), signs every request per the Standard Webhooks convention
(``verify_webhook`` checks them on the receiving side), delivers job events best-effort,
reliably (retries in memory) or guaranteed (through the outbox, written in the same
atomic step as the job's transition; retried with backoff until delivered or
dead-lettered), and refuses targets on private, loopback, link-local or metadata
addresses (the SSRF guard).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...enums import WebhookDeliveryStrategy, WebhookEventType
from .. import load_lazily

if TYPE_CHECKING:
    from .delivery import Backoff, EndpointBreaker
    from .manager import JOB_WEBHOOK_ID, JobWebhookConfig, WebhookManager
    from .models import (
        DeliveryAttempt,
        DeliveryInFlightError,
        DeliveryRecord,
        Webhook,
        WebhookConfig,
        WebhookEvent,
    )
    from .secretstore import SecretSourceError, SecretStore
    from .signing import (
        DEFAULT_TOLERANCE_S,
        WebhookVerificationError,
        generate_secret,
        signature_header,
        verify_webhook,
    )
    from .ssrf import AddressPolicy, BlockedAddressError
    from .transport import GuardedBackend, GuardedTransport

#: Public names, each imported on first use from the module that defines it.
_LAZY = {
    "Backoff": "delivery",
    "EndpointBreaker": "delivery",
    "JOB_WEBHOOK_ID": "manager",
    "JobWebhookConfig": "manager",
    "WebhookManager": "manager",
    "DeliveryAttempt": "models",
    "DeliveryInFlightError": "models",
    "DeliveryRecord": "models",
    "Webhook": "models",
    "WebhookConfig": "models",
    "WebhookEvent": "models",
    "SecretSourceError": "secretstore",
    "SecretStore": "secretstore",
    "DEFAULT_TOLERANCE_S": "signing",
    "WebhookVerificationError": "signing",
    "generate_secret": "signing",
    "signature_header": "signing",
    "verify_webhook": "signing",
    "AddressPolicy": "ssrf",
    "BlockedAddressError": "ssrf",
    "GuardedBackend": "transport",
    "GuardedTransport": "transport",
}

#: Another name for the strategies (the same enum).
DeliveryStrategy = WebhookDeliveryStrategy

__all__ = [
    "DEFAULT_TOLERANCE_S",
    "JOB_WEBHOOK_ID",
    "AddressPolicy",
    "Backoff",
    "BlockedAddressError",
    "DeliveryAttempt",
    "DeliveryInFlightError",
    "DeliveryRecord",
    "DeliveryStrategy",
    "EndpointBreaker",
    "GuardedBackend",
    "GuardedTransport",
    "JobWebhookConfig",
    "SecretSourceError",
    "SecretStore",
    "Webhook",
    "WebhookConfig",
    "WebhookDeliveryStrategy",
    "WebhookEvent",
    "WebhookEventType",
    "WebhookManager",
    "WebhookVerificationError",
    "generate_secret",
    "signature_header",
    "verify_webhook",
]


if not TYPE_CHECKING:  # a type checker sees the names above, and flags any other

    def __getattr__(name: str) -> Any:
        return load_lazily(__name__, __path__, _LAZY, name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
