"""Fan-out: the deliveries of an outbox entry, or of a claimed retry (``service.py``)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from ...outbox import OutboxEntry
from .delivery import Target
from .models import MAX_RETRIES, event_body, feature_event_data

if TYPE_CHECKING:
    from .manager import WebhookManager

__all__ = ["Delivery", "claimed", "expand"]


@dataclass(slots=True)
class Delivery:
    """One event for one endpoint, about to be attempted."""

    member: str  # "<webhook id>/<event id>"
    target: Target | None  # None: the endpoint is gone or inactive
    event_type: str
    body: bytes
    strategy: str
    max_retries: int
    attempts: int = 0  # made before this one
    history: list[Any] = field(default_factory=list)
    new: bool = True  # its record is created with the result
    url: str = ""  # a job's own webhook_url
    missing: str = ""  # why there is no target

    @property
    def event_id(self) -> str:
        return self.member.split("/", 1)[1]


def expand(mgr: WebhookManager, e: OutboxEntry) -> list[Delivery]:
    """The deliveries of one outbox entry: one per endpoint that wants its event."""
    f = e.fields
    etype = f.get("e", b"").decode("utf-8", "replace")
    if "b" in f:  # written from Python (send_event, started, progress)
        eid = f.get("i", b"").decode("utf-8", "replace") or "evt_" + e.id
        body = f["b"]
    elif "s" in f:  # an event another feature raised in a script (the event slot)
        eid = "evt_" + e.id
        try:
            fields = orjson.loads(f.get("x") or b"[]")
        except orjson.JSONDecodeError:
            fields = []
        data = feature_event_data(mgr.queue.name, f["s"].decode("utf-8", "replace"), fields)
        body = event_body(etype, _int(f.get("ts")) or int(time.time() * 1000), data)
    else:  # written by a transition script
        eid = "evt_" + e.id
        data = {
            "queue": mgr.queue.name,
            "job_id": f.get("j", b"").decode("utf-8", "replace"),
            "job_name": f.get("n", b"").decode("utf-8", "replace")[:512],
            "attempts": _int(f.get("a")),
        }
        body = event_body(etype, _int(f.get("ts")) or int(time.time() * 1000), data)
    out: list[Delivery] = []
    only = f.get("w", b"").decode("utf-8", "replace")
    for hook in mgr.registry.wanting(etype, guaranteed=True):
        if only and hook.id != only:
            continue
        out.append(
            Delivery(
                f"{hook.id}/{eid}",
                mgr.target_of(hook),
                etype,
                body,
                "guaranteed",
                hook.max_retries,
            )
        )
    url = f.get("u", b"").decode("utf-8", "replace")
    if url and not only:
        jw = mgr.job_webhook
        out.append(
            Delivery(
                f"job/{eid}",
                mgr.job_target(url),
                etype,
                body,
                "guaranteed",
                jw.max_retries,
                url=url,
            )
        )
    return out


def claimed(mgr: WebhookManager, row: Sequence[Any]) -> Delivery:
    """A due retry claimed by ``webhooks_claim`` (a row of its record's fields)."""
    member, body, etype, attempts, url, strategy, max_r, hist = (
        _text(row[0]),
        bytes(row[1]),
        _text(row[2]),
        _int(row[3]),
        _text(row[4]),
        _text(row[5]),
        _text(row[6]),
        row[7],
    )
    try:
        history = orjson.loads(hist)
    except orjson.JSONDecodeError:
        history = []
    if not isinstance(history, list):
        history = []
    wid = member.split("/", 1)[0]
    target: Target | None
    missing = ""
    if wid == "job":
        target = mgr.job_target(url) if url else None
        max_retries = (
            min(_int(max_r), MAX_RETRIES)
            if _int(max_r) or max_r == "0"
            else mgr.job_webhook.max_retries
        )
        missing = "no URL recorded for this job's webhook"
    else:
        hook = mgr.registry.get(wid)
        target = mgr.target_of(hook) if hook and hook.active else None
        max_retries = hook.max_retries if hook else 0
        missing = "webhook inactive" if hook else "webhook removed"
    return Delivery(
        member,
        target,
        etype,
        body,
        strategy or "guaranteed",
        max_retries,
        attempts,
        history,
        new=False,
        url=url,
        missing=missing,
    )


def _text(v: Any) -> str:
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).decode("utf-8", "replace")
    return "" if v is None else str(v)


def _int(v: Any) -> int:
    """A stored count or time: ASCII digits, below 10**17; anything else (damaged) 0."""
    t = _text(v)
    return int(t) if t.isascii() and t.isdigit() and len(t) < 18 else 0
