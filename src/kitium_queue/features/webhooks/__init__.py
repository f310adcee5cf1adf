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

from ...enums import WebhookDeliveryStrategy, WebhookEventType
from .delivery import Backoff, EndpointBreaker, SecretStore
from .manager import JOB_WEBHOOK_ID, JobWebhookConfig, WebhookManager
from .models import DeliveryAttempt, DeliveryRecord, Webhook, WebhookConfig, WebhookEvent
from .signing import (
    DEFAULT_TOLERANCE_S,
    WebhookVerificationError,
    generate_secret,
    signature_header,
    verify_webhook,
)
from .ssrf import AddressPolicy, BlockedAddressError, GuardedBackend, GuardedTransport

#: The brief's name for the strategies (the same enum).
DeliveryStrategy = WebhookDeliveryStrategy

__all__ = [
    "DEFAULT_TOLERANCE_S",
    "JOB_WEBHOOK_ID",
    "AddressPolicy",
    "Backoff",
    "BlockedAddressError",
    "DeliveryAttempt",
    "DeliveryRecord",
    "DeliveryStrategy",
    "EndpointBreaker",
    "GuardedBackend",
    "GuardedTransport",
    "JobWebhookConfig",
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
