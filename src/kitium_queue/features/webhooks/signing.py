"""Signing and verifying webhook requests (the Standard Webhooks convention).

Every request carries three headers:

* ``webhook-id``: the event id (the same on every retry: receivers dedupe on it);
* ``webhook-timestamp``: when this attempt was signed, integer seconds since the epoch;
* ``webhook-signature``: ``v1,<base64 HMAC-SHA256>`` over ``"<id>.<timestamp>.<body>"``,
  one per secret the endpoint currently has, separated by spaces (two during a secret
  rotation, so a receiver holding either secret accepts the request).

A secret is ``whsec_`` followed by the base64 of 24 to 64 random bytes
(``generate_secret()``); the HMAC key is those bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import secrets as _random
import time
from collections.abc import Iterable, Mapping
from typing import Any

from ...errors import ConfigurationError, KitiumQueueError
from ...options import shown

__all__ = [
    "DEFAULT_TOLERANCE_S",
    "SECRET_PREFIX",
    "WebhookVerificationError",
    "generate_secret",
    "secret_key",
    "sign",
    "signature_header",
    "verify_webhook",
]

SECRET_PREFIX = "whsec_"
#: How far a ``webhook-timestamp`` may be from the receiver's clock (either way).
#: Largest tolerance ``verify_webhook`` takes (a day).
MAX_TOLERANCE_S = 86_400
DEFAULT_TOLERANCE_S = 300
_MIN_KEY, _MAX_KEY = 24, 64
_MAX_SIGNATURES = 8


class WebhookVerificationError(KitiumQueueError):
    """A webhook request failed verification: missing headers, a stale or future
    timestamp, or no signature made with any of the receiver's secrets."""


def generate_secret(nbytes: int = 32) -> str:
    """A new random endpoint secret, ``whsec_<base64>`` (``nbytes`` random bytes)."""
    if not isinstance(nbytes, int) or not _MIN_KEY <= nbytes <= _MAX_KEY:
        raise ConfigurationError(f"a secret has {_MIN_KEY} to {_MAX_KEY} bytes, got {nbytes!r}")
    return SECRET_PREFIX + base64.b64encode(_random.token_bytes(nbytes)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of ``secret`` (``whsec_<base64>``). Raises ConfigurationError for a
    malformed secret; the message never quotes it."""
    if not isinstance(secret, str) or not secret.startswith(SECRET_PREFIX):
        raise ConfigurationError(
            "a webhook secret is 'whsec_' followed by base64 (make one with "
            "generate_secret()); the value given is not in that form"
        )
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ConfigurationError(
            "a webhook secret's part after 'whsec_' is not valid base64"
        ) from None
    if not _MIN_KEY <= len(key) <= _MAX_KEY:
        raise ConfigurationError(
            f"a webhook secret must decode to {_MIN_KEY}-{_MAX_KEY} bytes, this one has "
            f"{len(key)}; make one with generate_secret()"
        )
    return key


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """One signature, ``v1,<base64 HMAC-SHA256(key, "id.timestamp.body")>``."""
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def signature_header(keys: Iterable[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: one signature per key, space-separated."""
    return " ".join(sign(k, msg_id, timestamp, body) for k in keys)


def _header(headers: Mapping[Any, Any], name: str) -> str:
    for k, v in headers.items():
        if isinstance(k, bytes):
            k = k.decode("latin-1")
        if k.lower() == name:
            return v.decode("latin-1") if isinstance(v, bytes) else str(v)
    raise WebhookVerificationError(f"missing header {name}")


def check_seconds(value: Any, what: str, most: float) -> None:
    """``value`` is a number of seconds from 0 to ``most`` (not a bool, NaN or
    infinite), else ``ConfigurationError`` naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= most:
        raise ConfigurationError(
            f"{what} must be a number of seconds from 0 to {most:,}, got {shown(value)}"
        )


def verify_webhook(
    payload: bytes | str,
    headers: Mapping[Any, Any],
    secret: str | Iterable[str],
    *,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> None:
    """Check a received webhook; raises ``WebhookVerificationError`` if it fails.

    ``payload``: the raw request body, exactly as received (not re-serialized JSON).
    ``headers``: the request headers (any mapping; names compared case-insensitively).
    ``secret``: the endpoint secret, or several (during a rotation, accept both the old
    and the new one). The request passes when its timestamp is within ``tolerance_s``
    seconds of ``now`` (default: the current time) and one of its signatures matches one
    of the secrets (constant-time comparison). Deduplicate on ``webhook-id`` afterwards:
    delivery is at-least-once.
    """
    # NaN or inf would pass every timestamp: no replay protection at all.
    check_seconds(tolerance_s, "verify_webhook tolerance_s", MAX_TOLERANCE_S)
    if now is not None and (
        isinstance(now, bool) or not isinstance(now, (int, float)) or not math.isfinite(now)
    ):
        raise ConfigurationError(f"verify_webhook now must be a finite time, got {now!r}")
    body = payload.encode() if isinstance(payload, str) else bytes(payload)
    msg_id = _header(headers, "webhook-id")
    ts_text = _header(headers, "webhook-timestamp")
    sig_text = _header(headers, "webhook-signature")
    if not ts_text.isascii() or not ts_text.isdigit() or len(ts_text) > 12:
        raise WebhookVerificationError("webhook-timestamp is not an integer number of seconds")
    timestamp = int(ts_text)
    current = time.time() if now is None else now
    if timestamp < current - tolerance_s:
        raise WebhookVerificationError("webhook-timestamp is too old (a replayed request?)")
    if timestamp > current + tolerance_s:
        raise WebhookVerificationError("webhook-timestamp is in the future")
    secrets = [secret] if isinstance(secret, str) else list(secret)
    if not secrets:
        raise ConfigurationError("verify_webhook needs at least one secret")
    keys = [secret_key(s) for s in secrets]
    offered = [s for s in sig_text.split(" ") if s][:_MAX_SIGNATURES]
    ok = False
    for key in keys:
        expected = sign(key, msg_id, timestamp, body).encode()
        for candidate in offered:
            # Every pair is compared (no early exit): timing says nothing about which.
            ok |= hmac.compare_digest(expected, candidate.encode("utf-8", "replace"))
    if not ok:
        raise WebhookVerificationError("no valid signature for the given secret(s)")
