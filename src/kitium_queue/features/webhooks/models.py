"""The webhook feature's data: endpoint configurations, events, deliveries.

Everything read back from Redis is treated as untrusted: ``Webhook.from_json`` and
``DeliveryRecord.from_hash`` check types and bound sizes, and a damaged entry is reported
instead of crashing a listing.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

import orjson

from ...enums import WebhookDeliveryStrategy, WebhookEventType
from ...errors import ConfigurationError, KitiumQueueError
from ...events import check_event_name

__all__ = [
    "DeliveryAttempt",
    "DeliveryInFlightError",
    "DeliveryRecord",
    "Webhook",
    "WebhookConfig",
    "WebhookEvent",
    "check_event_type",
    "check_strategy",
    "check_url",
    "new_event_id",
    "shown_url",
]

MAX_URL = 2048
MAX_HEADERS, MAX_HEADER_BYTES = 32, 4096
MAX_EVENTS = 64
MAX_RETRIES = 50
MAX_TIMEOUT_MS = 120_000
#: Most ``max_in_flight`` of an endpoint may be.
MAX_IN_FLIGHT = 1000
MAX_EVENT_DATA_BYTES = 60_000
_ID = re.compile(r"[A-Za-z0-9_.:-]{1,100}")
_EVENT = re.compile(r"[a-z0-9][a-z0-9._:-]{0,63}")
_WEBHOOK_EVENTS = frozenset(e.value for e in WebhookEventType)
_HOST_CHARS = re.compile(r"[A-Za-z0-9._-]+")
_HEADER = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}")
#: Headers the sender sets itself (a configured header may not replace them).
RESERVED_HEADERS = frozenset(
    {
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "host",
        "content-length",
        "content-type",
        "transfer-encoding",
        "connection",
        "user-agent",
        "expect",
        "te",
        "trailer",
        "upgrade",
        "keep-alive",
    }
)
#: Header name prefixes reserved the same way (the signature's, the body's, proxies').
RESERVED_PREFIXES = ("webhook-", "content-", "proxy-")


def check_url(url: Any) -> str:
    """An http(s) URL with a host and no credentials; raises ConfigurationError."""
    if (
        not isinstance(url, str)
        or not url
        or len(url) > MAX_URL
        or not url.isprintable()
        or any(c.isspace() for c in url)
    ):
        raise ConfigurationError(
            f"a webhook URL is a str of 1-{MAX_URL} printable characters without spaces"
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigurationError(f"webhook URL is not valid: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise ConfigurationError("a webhook URL must start with https:// (or http://)")
    if not parts.hostname:
        raise ConfigurationError("a webhook URL must name a host")
    if parts.username is not None or parts.password is not None:
        raise ConfigurationError(
            "a webhook URL must not carry credentials (user:password@); receivers "
            "authenticate requests by their signature"
        )
    if port == 0:
        raise ConfigurationError("a webhook URL's port must be 1-65535")
    _check_host(url, parts.hostname)
    return url


class DeliveryInFlightError(KitiumQueueError):
    """``retry_delivery`` of a delivery whose attempt a delivery worker is making now
    (claimed under its lease): scheduling it again would send it twice."""


def in_flight(member: str, lease_left_ms: int) -> DeliveryInFlightError:
    """The refusal of ``retry_delivery`` for ``member`` (``<webhook>/<event>``)."""
    return DeliveryInFlightError(
        f"delivery {member[:220]!r} is pending and being attempted now by a delivery "
        f"worker (claimed under a lease that runs {max(lease_left_ms, 0) / 1000:.1f} s more, "
        "renewed while the attempt lasts): retrying it now would send it twice. Wait for "
        "the attempt's result "
        "(get_delivery_history, kitium-queue webhooks history --event) and retry it then if "
        "it is still wanted"
    )


def shown_url(url: Any) -> str:
    """What a reader who is not an admin sees of an endpoint URL: its scheme, host and
    port, the rest elided (``https://hooks.slack.com/…``). For many receivers the path
    is the credential (``/services/T0/B0/<secret>``); a query may hold a token too.
    Anything that does not parse as such a URL: ``<redacted>``."""
    try:
        parts = urlsplit(str(url))
        host, port = parts.hostname, parts.port
        scheme = parts.scheme.lower()
        if not host or not scheme.isalpha() or not host.isprintable() or " " in host:
            raise ValueError(url)
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}{'' if port is None else f':{port}'}/…"
    except Exception:
        return "<redacted>"


def _check_host(url: str, hostname: str) -> None:
    """Refuse a host no request could be sent to (as httpx encodes it: IDNA for a
    name, dotted decimal for IPv4): empty or over-long labels, invalid IDNA, an IPv4
    address written another way (``0177.0.0.1``). Such a URL would fail only when a
    delivery is attempted."""
    try:
        import httpx
    except ImportError:  # without the webhooks extra: the standard library's IDNA
        try:
            raw = hostname.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise ConfigurationError(f"webhook URL host is not valid: {exc}") from None
    else:
        try:
            # A request, not only a URL: building one also checks an ASCII label
            # that claims to be IDNA (xn--...).
            raw = httpx.Request("POST", url).url.raw_host.decode("ascii")
        except Exception as exc:  # httpx.InvalidURL, idna.IDNAError (a UnicodeError)
            raise ConfigurationError(f"webhook URL host is not valid: {exc}") from None
    try:
        ipaddress.ip_address(raw.strip("[]").split("%", 1)[0])
        return
    except ValueError:
        pass
    labels = raw[:-1].split(".") if raw.endswith(".") else raw.split(".")
    if not _HOST_CHARS.fullmatch(raw):  # '%31%32%37.0.0.1': no resolver takes it
        raise ConfigurationError(
            f"webhook URL host {hostname!r:.300} is not a valid host name: letters, digits, "
            "'-', '_' and '.' only (IDNA for others)"
        )
    if len(raw) > 253 or any(not 1 <= len(label) <= 63 for label in labels):
        raise ConfigurationError(
            f"webhook URL host {hostname!r} is not a valid host name: each dot-separated "
            "label must be 1-63 characters, 253 in all"
        )


def url_host(url: str) -> str:
    """The host of a URL, for messages and breaker keys (never the path or query)."""
    try:
        return urlsplit(url).hostname or "?"
    except ValueError:
        return "?"


def check_event_type(value: Any, *, stored: bool = False) -> str:
    """An event name: a ``WebhookEventType``, an event known in this process (the core's,
    those features declare: ``events.declare_events``) or a lowercase name of your own of
    up to 64 characters that does not look like a misspelt known one (``job-complete``,
    ``completed``: ``ConfigurationError`` with the likely name, ``events.check_event_name``).
    ``stored``: a name read back from Redis or sent (``send_event``): its form only."""
    if isinstance(value, WebhookEventType):
        return value.value
    if not stored:
        return check_event_name(value, "webhook event", _WEBHOOK_EVENTS, "it would never be sent")
    if isinstance(value, str) and _EVENT.fullmatch(value):
        return value
    raise ConfigurationError(
        f"webhook event {value!r} is not an event name: use a WebhookEventType "
        f"({', '.join(e.value for e in WebhookEventType)}) or a lowercase name"
    )


def check_id(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise ConfigurationError(
            f"{what} must be 1-100 characters of letters, digits and _ . : -, got {value!r}"
        )
    return value


def new_event_id() -> str:
    return "evt_" + secrets.token_hex(12)


def check_strategy(value: Any) -> WebhookDeliveryStrategy:
    """A ``WebhookDeliveryStrategy`` from one or from its value; ConfigurationError."""
    return _strategy(value)


def _strategy(value: Any) -> WebhookDeliveryStrategy:
    try:
        return WebhookDeliveryStrategy(value)
    except ValueError:
        raise ConfigurationError(
            f"delivery_strategy {value!r}: use one of "
            f"{', '.join(s.value for s in WebhookDeliveryStrategy)}"
        ) from None


def _int(value: Any, what: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigurationError(f"{what} must be an int from {lo} to {hi}, got {value!r}")
    return value


def _headers(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise ConfigurationError("webhook headers must be a mapping of names to values")
    if len(value) > MAX_HEADERS:
        raise ConfigurationError(f"at most {MAX_HEADERS} webhook headers")
    out: dict[str, str] = {}
    size = 0
    for k, v in value.items():
        if not isinstance(k, str) or not _HEADER.fullmatch(k):
            raise ConfigurationError(f"webhook header name {k!r} is not a valid header name")
        if k.lower() in RESERVED_HEADERS or k.lower().startswith(RESERVED_PREFIXES):
            raise ConfigurationError(
                f"webhook header {k!r} is set by the sender or the HTTP protocol itself "
                f"(reserved: {', '.join(sorted(RESERVED_HEADERS))} and every "
                f"{'*, '.join(RESERVED_PREFIXES)}* header)"
            )
        if not isinstance(v, str) or not v.isprintable() or not v.isascii() or v != v.strip():
            raise ConfigurationError(
                f"webhook header {k!r}: the value must be printable ASCII without leading "
                "or trailing spaces"
            )
        size += len(k) + len(v)
        out[k] = v
    if size > MAX_HEADER_BYTES:
        raise ConfigurationError(f"webhook headers exceed {MAX_HEADER_BYTES} bytes")
    return out


@dataclass(frozen=True)
class WebhookConfig:
    """What ``register_webhook`` takes.

    Attributes:
        url: the endpoint, ``https://...`` (``http://`` is accepted too).
        events: the events it receives (``WebhookEventType`` members or event names).
        delivery_strategy: ``guaranteed`` (outbox, retries until delivered or
            dead-lettered), ``reliable`` (retries in the sending process's memory) or
            ``best-effort`` (one try). None (default): the manager's
            ``default_delivery_strategy``, itself ``guaranteed`` unless set.
        max_retries: retries after the first attempt (guaranteed and reliable).
        active: an inactive endpoint receives nothing (events are not kept for it).
        secret: the signing secret (``whsec_...``), kept in this process only — never
            written to Redis. Other processes get it from ``WebhookManager(secrets=...)``.
        timeout_ms: per-request timeout.
        headers: extra request headers (not ``webhook-*``, ``host``, ...).
        id: the endpoint's id (default: a random ``wh_...``).
        description: free text shown by the CLI.
        max_in_flight: requests to this endpoint in flight at once, per delivering
            process (1 to 1,000); None (default): half the manager's ``concurrency``, at
            least 1. A slow endpoint then holds only these of the process's delivery
            slots; its other deliveries wait for one of them (they are not failed). A
            quarter of the process's slots are kept for endpoints with none in flight.
    """

    url: str
    events: Sequence[WebhookEventType | str] = (
        WebhookEventType.JOB_COMPLETED,
        WebhookEventType.JOB_FAILED,
    )
    delivery_strategy: WebhookDeliveryStrategy | str | None = None
    max_retries: int = 8
    active: bool = True
    secret: str | None = field(default=None, repr=False)
    timeout_ms: int = 10_000
    headers: Mapping[str, str] = field(default_factory=dict)
    id: str | None = None
    description: str = ""
    max_in_flight: int | None = None


@dataclass(frozen=True)
class Webhook:
    """A registered endpoint, as stored in Redis (no secret)."""

    id: str
    url: str
    events: tuple[str, ...]
    delivery_strategy: WebhookDeliveryStrategy
    max_retries: int
    active: bool
    timeout_ms: int
    headers: dict[str, str]
    description: str = ""
    created_at: int = 0
    updated_at: int = 0
    max_in_flight: int | None = None  # None: the manager's default

    @classmethod
    def from_config(
        cls,
        config: WebhookConfig,
        now_ms: int,
        default_strategy: WebhookDeliveryStrategy = WebhookDeliveryStrategy.GUARANTEED,
        *,
        stored: bool = False,
    ) -> Webhook:
        if not isinstance(config, WebhookConfig):
            raise ConfigurationError("register_webhook takes a WebhookConfig")
        events = config.events
        if isinstance(events, (str, WebhookEventType)) or not isinstance(events, Iterable):
            raise ConfigurationError("webhook events must be a list of event names")
        evs = tuple(dict.fromkeys(check_event_type(e, stored=stored) for e in events))
        if not evs or len(evs) > MAX_EVENTS:
            raise ConfigurationError(f"a webhook subscribes to 1-{MAX_EVENTS} events")
        if not isinstance(config.active, bool):
            raise ConfigurationError("webhook active must be True or False")
        desc = config.description
        if not isinstance(desc, str) or len(desc) > 500 or not desc.isprintable():
            raise ConfigurationError("webhook description: printable text of 500 characters")
        return cls(
            id=check_id(config.id, "webhook id")
            if config.id is not None
            else "wh_" + secrets.token_hex(8),
            url=check_url(config.url),
            events=evs,
            delivery_strategy=_strategy(
                default_strategy if config.delivery_strategy is None else config.delivery_strategy
            ),
            max_retries=_int(config.max_retries, "max_retries", 0, MAX_RETRIES),
            active=config.active,
            timeout_ms=_int(config.timeout_ms, "timeout_ms", 100, MAX_TIMEOUT_MS),
            headers=_headers(config.headers),
            description=desc,
            created_at=now_ms,
            updated_at=now_ms,
            max_in_flight=None
            if config.max_in_flight is None
            else _int(config.max_in_flight, "max_in_flight", 1, MAX_IN_FLIGHT),
        )

    def updated(self, changes: Mapping[str, Any], now_ms: int) -> Webhook:
        allowed = {
            "url",
            "events",
            "delivery_strategy",
            "max_retries",
            "active",
            "timeout_ms",
            "headers",
            "description",
            "max_in_flight",
        }
        unknown = set(changes) - allowed
        if unknown:
            raise ConfigurationError(
                f"cannot update {', '.join(sorted(unknown))}; updatable: "
                f"{', '.join(sorted(allowed))} (secrets: set_secret / rotate_secret)"
            )
        base = {k: getattr(self, k) for k in allowed}
        base.update(changes)
        kept = "events" not in changes  # unchanged names: checked when registered
        checked = Webhook.from_config(WebhookConfig(id=self.id, **base), now_ms, stored=kept)
        return replace(checked, created_at=self.created_at)

    @property
    def guaranteed(self) -> bool:
        return self.delivery_strategy is WebhookDeliveryStrategy.GUARANTEED

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "id": self.id,
                "url": self.url,
                "events": list(self.events),
                "strategy": self.delivery_strategy.value,
                "max_retries": self.max_retries,
                "active": self.active,
                "timeout_ms": self.timeout_ms,
                "headers": self.headers,
                "description": self.description,
                "created_at": self.created_at,
                "updated_at": self.updated_at,
                "max_in_flight": self.max_in_flight,
            }
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = orjson.loads(self.to_json())
        return out

    @classmethod
    def from_json(cls, raw: bytes | str) -> Webhook:
        """Parse a stored registration; ConfigurationError when it is damaged."""
        try:
            d = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise ConfigurationError("stored webhook registration is not JSON") from None
        if not isinstance(d, dict):
            raise ConfigurationError("stored webhook registration is not an object")
        try:
            cfg = WebhookConfig(
                url=d["url"],
                events=d["events"],
                delivery_strategy=d["strategy"],
                max_retries=d["max_retries"],
                active=d["active"],
                timeout_ms=d["timeout_ms"],
                headers=d.get("headers") or {},
                id=d["id"],
                description=d.get("description") or "",
                max_in_flight=d.get("max_in_flight"),
            )
        except (KeyError, TypeError):
            raise ConfigurationError("stored webhook registration lacks fields") from None
        hook = cls.from_config(cfg, 0, stored=True)
        return replace(
            hook, created_at=_num(d.get("created_at")), updated_at=_num(d.get("updated_at"))
        )


def _num(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


@dataclass(frozen=True)
class WebhookEvent:
    """One event: ``type`` (an event name), ``data`` (JSON-able), ``id`` (default: a
    random ``evt_...``; it is the ``webhook-id`` header, the receivers' dedupe key),
    ``timestamp_ms`` (default: now)."""

    type: WebhookEventType | str
    data: Mapping[str, Any] = field(default_factory=dict)
    id: str | None = None
    timestamp_ms: int | None = None

    def body(self) -> tuple[str, str, bytes]:
        """(event id, event type, JSON body ``{"type", "timestamp", "data"}``)."""
        etype = check_event_type(self.type, stored=True)
        eid = check_id(self.id, "event id") if self.id is not None else new_event_id()
        ts = self.timestamp_ms if self.timestamp_ms is not None else int(time.time() * 1000)
        _int(ts, "timestamp_ms", 0, 2**50)
        try:
            body = event_body(etype, ts, dict(self.data))
        except TypeError as exc:
            raise ConfigurationError(f"webhook event data is not JSON-able: {exc}") from None
        if len(body) > MAX_EVENT_DATA_BYTES:
            raise ConfigurationError(
                f"webhook event body is {len(body)} bytes, above {MAX_EVENT_DATA_BYTES}: send "
                "a reference to the data instead"
            )
        return eid, etype, body


#: Bounds of a feature event's data in a webhook body: fields, name and value lengths.
_FEATURE_FIELDS, _FIELD_NAME, _FIELD_VALUE = 32, 64, 512


def feature_event_data(queue: str, subject: str, fields: Any) -> dict[str, Any]:
    """The ``data`` of a feature event's body (a workflow's end, a breaker's change):
    the event's own text fields (at most 32, names and values cut short), then
    ``queue`` and ``subject`` (what it is about). ``fields``: a mapping, or the flat
    ``[name, value, ...]`` list the ``event`` Lua slot receives."""
    if isinstance(fields, Mapping):
        pairs = list(fields.items())
    elif isinstance(fields, list):
        pairs = list(zip(fields[0::2], fields[1::2], strict=False))
    else:
        pairs = []
    data: dict[str, Any] = {}
    for k, v in pairs[:_FEATURE_FIELDS]:
        if isinstance(k, str) and isinstance(v, str) and k:
            data[k[:_FIELD_NAME]] = v[:_FIELD_VALUE]
    data["queue"] = queue
    data["subject"] = str(subject)[:_FIELD_VALUE]
    return data


#: The latest timestamp a body carries (9999-12-31): a later one read back from Redis
#: (damaged by hand) would fail the whole batch it came in; the time of sending is used.
_MAX_TS_MS = 253_402_300_799_000


def event_body(etype: str, ts_ms: int, data: Mapping[str, Any]) -> bytes:
    """The request body: ``{"type", "timestamp" (ISO 8601, UTC), "data"}``. A timestamp
    outside 1970..9999 (a damaged record) is replaced by the time of sending."""
    if not 0 <= ts_ms <= _MAX_TS_MS:
        ts_ms = int(time.time() * 1000)
    stamp = datetime.fromtimestamp(ts_ms / 1000, tz=timezone.utc)
    return orjson.dumps(
        {"type": etype, "timestamp": stamp.isoformat(timespec="milliseconds"), "data": data}
    )


@dataclass(frozen=True)
class DeliveryAttempt:
    """One try: when (ms), its number, the HTTP status (None: no response), the error."""

    at: int
    attempt: int
    status: int | None
    error: str | None
    duration_ms: int

    def to_list(self) -> list[Any]:
        return [self.at, self.attempt, self.status, self.error, self.duration_ms]

    @classmethod
    def from_list(cls, v: Any) -> DeliveryAttempt | None:
        if not isinstance(v, list) or len(v) != 5:
            return None
        at, n, status, error, dur = v
        if not all(isinstance(x, int) and 0 <= x < 2**53 for x in (at, n, dur)):
            return None
        return cls(
            at,
            n,
            status if isinstance(status, int) else None,
            error[:500] if isinstance(error, str) else None,
            dur,
        )


@dataclass(frozen=True)
class DeliveryRecord:
    """The delivery of one event to one endpoint.

    ``state``: ``pending`` (retry scheduled), ``delivered``, ``failed`` (best-effort or
    reliable gave up), ``dead`` (guaranteed gave up: in the webhook DLQ).
    """

    webhook_id: str
    event_id: str
    event_type: str
    state: str
    attempts: int
    created_at: int
    strategy: str
    last_error: str | None = None
    last_status: int | None = None
    history: tuple[DeliveryAttempt, ...] = ()

    @classmethod
    def from_hash(cls, webhook_id: str, event_id: str, h: Mapping[bytes, bytes]) -> DeliveryRecord:
        def s(k: bytes) -> str:
            return h.get(k, b"").decode("utf-8", "replace")[:500]

        def i(k: bytes) -> int:
            v = s(k)  # damaged (not ASCII digits, absurdly long): 0
            return int(v) if v.isascii() and v.isdigit() and len(v) < 18 else 0

        try:
            raw = orjson.loads(h.get(b"h") or b"[]")
        except orjson.JSONDecodeError:
            raw = []
        hist = tuple(
            a
            for a in (DeliveryAttempt.from_list(x) for x in (raw if isinstance(raw, list) else []))
            if a
        )
        status = i(b"sc")
        return cls(
            webhook_id,
            event_id,
            s(b"ty"),
            s(b"st") or "pending",
            i(b"a"),
            i(b"c"),
            s(b"sg"),
            s(b"e") or None,
            status or None,
            hist,
        )
