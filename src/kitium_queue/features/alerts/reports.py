"""Reporting the recorded changes of alert rules (``AlertManager``), in the order they
were recorded: the ``feature_event`` hook, the webhook and an info log line.

A change is recorded in Redis first (``alerts_state.lua``), its ``alerts:log`` entry id
put in ``alerts:unreported``; the id is removed from there once the change is reported
whole: the hook called and the webhook handed to the queue's ``WebhookManager`` (when
it has one and ``webhook_event`` is set). When the webhook cannot be handed over (Redis
unreachable at that moment, a webhook key damaged by hand), or the id cannot be removed,
the change stays in ``alerts:unreported`` and the reporter is *behind*: later changes
get their hook at once but their webhook only after the older ones (a receiver must not
get a ``cleared`` before the ``fired`` it follows), and every evaluation first sends what
is left, oldest first, until it goes through. In one process the hook is called once
per change and the webhook handed over once (both remembered for the last
``_REMEMBERED`` changes); a change left by a leader that died is reported whole by the
next one, at the start of its term, under its recorded id (``event_id``, webhook id
``alert_<entry id>``, on which receivers deduplicate).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from ...events import declare_events
from ...hooks import FeatureEvent
from ...limits import get_logger, printable

if TYPE_CHECKING:
    from ...queue import JobQueue
    from .manager import AlertTransition

__all__ = ["CATCH_UP", "FEATURE", "AlertReporter", "transition"]

log = get_logger("kitium_queue.features.alerts.manager")

#: The feature's name (``FeatureEvent.feature``).
FEATURE = "alerts"
#: Its events (``queue.on``), and the default name of its webhook event.
declare_events(FEATURE, "alert-fired", "alert-cleared", "queue-alert")
#: Changes left unreported, reported per call at most.
CATCH_UP = 100
#: Changes whose hook was called (and whether their webhook went out) remembered per
#: process: as many as ``alerts:unreported`` keeps.
_REMEMBERED = 1000
_ENTRY_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")


def text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def wrong_type(exc: ResponseError) -> bool:
    return "WRONGTYPE" in str(exc)


def entry_id(value: str) -> bool:
    """``value`` is a stream id Redis takes (``<ms>-<seq>``, each below 2**64): one it
    refuses ("Invalid stream ID") would stop every catch-up, and every evaluation."""
    m = _ENTRY_ID.fullmatch(value)
    return m is not None and max(int(m.group(1)), int(m.group(2))) < 2**64


def transition(eid: Any, f: Mapping[Any, Any]) -> AlertTransition:
    """An ``AlertTransition`` from an entry of ``alerts:log``."""
    from .manager import AlertTransition

    g = {text(k): text(v) for k, v in f.items()}
    return AlertTransition(
        text(eid),
        g.get("rule", ""),
        g.get("state", ""),
        g.get("metric", ""),
        g.get("value", ""),
        g.get("threshold", ""),
        g.get("reason", ""),
    )


class AlertReporter:
    """Reports the changes of one queue's alert rules (see the module docstring).

    Args:
        queue: the queue.
        webhook_event: the webhook event name (None: no webhook).
        damaged: called with the name of an alert key found holding another type.
    """

    def __init__(
        self, queue: JobQueue, webhook_event: str | None, damaged: Callable[[str], None]
    ) -> None:
        self.queue = queue
        self.webhook_event = webhook_event
        self._damaged = damaged
        #: Changes wait in ``alerts:unreported`` (sent by ``catch_up`` first).
        self.behind = False
        # id -> whether its webhook was handed over (its hook was called).
        self._seen: OrderedDict[str, bool] = OrderedDict()
        self._failing = False

    async def recorded(self, t: AlertTransition) -> None:
        """Report a change this process has just recorded (its id in
        ``alerts:unreported``)."""
        self._hook(t)
        if self.behind:
            return  # its webhook goes after the older ones still waiting (catch_up)
        self.behind = True  # until its report is whole
        if await self._send(t):
            await self._forget(t.id)
            self.behind = False

    async def catch_up(self) -> list[AlertTransition]:
        """Report what ``alerts:unreported`` holds, oldest first, at most ``CATCH_UP``;
        stops at a webhook that cannot be handed over (tried again next time). Returns
        the changes reported whole by this call."""
        client = await self.queue.client()
        key = self.queue.keys.extra("alerts:unreported")
        log_key = self.queue.keys.extra("alerts:log")
        try:
            ids = await client.zrange(key, 0, CATCH_UP - 1)
        except ResponseError as exc:
            if not wrong_type(exc):
                raise
            self._damaged("alerts:unreported")
            return []
        out: list[AlertTransition] = []
        for raw in ids:
            eid, found = text(raw), []
            if entry_id(eid):  # read back: untrusted
                try:
                    found = await client.xrevrange(log_key, eid, eid, count=1)
                except ResponseError as exc:
                    if not wrong_type(exc):
                        raise
                    self._damaged("alerts:log")
                    return out
            if found:  # else trimmed from the log long ago, or written by hand
                t = transition(*found[0])
                self._hook(t)
                if not await self._send(t):
                    return out  # still behind: tried again at the next evaluation
                out.append(t)
            await client.zrem(key, raw)
        self.behind = len(ids) >= CATCH_UP  # a full page: there may be more
        return out

    def _hook(self, t: AlertTransition) -> None:
        """The log line and the ``feature_event`` hook of ``t``, once per process."""
        if t.id in self._seen:
            return
        self._seen[t.id] = False
        while len(self._seen) > _REMEMBERED:
            self._seen.popitem(last=False)
        q = self.queue
        fired = t.state == "firing"
        # Info, not warning: the alert itself is the event and the webhook; the log line
        # is a trace of it. Its fields may be read back from Redis: escaped.
        log.info(
            "queue %s: alert %s %s (%s = %s, threshold %s)%s",
            q.name,
            printable(t.rule[:100]),
            "fired" if fired else "cleared",
            printable(t.metric[:100]),
            printable(t.value[:100]) or "-",
            printable(t.threshold[:100]),
            f": {printable(t.reason[:100])}" if t.reason else "",
        )
        if q.hooks.feature_event:
            q.hooks.emit_feature_event(
                FeatureEvent(
                    q.name,
                    FEATURE,
                    "alert-fired" if fired else "alert-cleared",
                    t.rule,
                    _fields(t),
                    t.id,
                    _at_ms(t),
                )
            )

    async def _send(self, t: AlertTransition) -> bool:
        """Hand ``t``'s webhook over (once per process); False when that failed (logged
        with its traceback the first time in a row)."""
        if self.webhook_event is None or self._seen.get(t.id):
            return True
        try:
            from ..webhooks.manager import WebhookManager
            from ..webhooks.models import WebhookEvent
        except ImportError:  # the optional extra "webhooks" is not installed
            return True
        mgr = WebhookManager.of(self.queue)
        if mgr is None:
            return True
        q = self.queue
        try:
            await mgr.send_event(
                WebhookEvent(
                    self.webhook_event,
                    {"rule": t.rule, "queue": q.name, **_fields(t)},
                    id=f"alert_{t.id}",
                    timestamp_ms=_at_ms(t) or None,
                )
            )
        except Exception as exc:
            log.warning(
                "queue %s: alert %s: webhook event not sent (%s): it is kept with the "
                "changes after it and sent first at the next evaluation",
                q.name,
                printable(t.rule[:100]),
                type(exc).__name__,
                exc_info=None if self._failing else exc,
            )
            self._failing = True
            return False
        self._failing = False
        if t.id in self._seen:
            self._seen[t.id] = True
        return True

    async def _forget(self, eid: str) -> None:
        client = await self.queue.client()
        await client.zrem(self.queue.keys.extra("alerts:unreported"), eid)


def _fields(t: AlertTransition) -> dict[str, str]:
    """The fields of ``t``'s event and webhook; ``reason`` only on a change that has one
    (``rule-removed``: a clearing because no running process has the rule)."""
    out = {"metric": t.metric, "value": t.value, "threshold": t.threshold, "state": t.state}
    if t.reason:
        out["reason"] = t.reason
    return out


def _at_ms(t: AlertTransition) -> int:
    head = t.id.split("-", 1)[0]
    return int(head) if head.isdigit() else 0
