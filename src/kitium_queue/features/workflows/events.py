"""Reporting workflow ends in process: the ``workflow-events`` leader service.

``workflow-completed``, ``workflow-failed`` and ``workflow-cancelled`` are written, in
the atomic step that decides them, to the queue's durable event stream
(``queue.events()``) and to the log ``wf-log``. One worker process of the queue at a
time (the leader of ``workflow-events``) reads the log and calls the ``feature_event``
hook for each (``FeatureEvent``: ``queue.on("workflow-completed", ...)`` handlers and
every subscriber). Its position is kept in Redis (``wf-log-cursor``): each event is
reported at least once (``FeatureEvent.event_id`` is the log entry id).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ...events import declare_events, stream_entries
from ...hooks import FeatureEvent
from ...leader import NET_ERRORS, REFUSED_RETRY_S, LeaderService, Refusals
from ...limits import get_logger

if TYPE_CHECKING:
    from ...queue import JobQueue

__all__ = ["EVENTS", "SERVICE_NAME", "WorkflowEvents"]

log = get_logger(__name__)

SERVICE_NAME = "workflow-events"
#: The events reported.
EVENTS = ("workflow-completed", "workflow-failed", "workflow-cancelled")
declare_events("workflows", *EVENTS)  # queue.on and webhooks know them


def _s(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


class WorkflowEvents(LeaderService):
    """The leader-only service that reports workflow ends (module docstring)."""

    def __init__(self, queue: JobQueue, *, interval_ms: int = 100) -> None:
        super().__init__(SERVICE_NAME, self._run)
        self.queue = queue
        self.pause_s = max(10, interval_ms) / 1000
        self.log_key = queue.keys.extra("wf-log")
        self.cursor_key = queue.keys.extra("wf-log-cursor")
        self.refusals = Refusals(f"workflow events of queue {queue.name}", log)

    async def _run(self, term: int) -> None:
        position: str | None = None
        while True:
            try:
                client = await self.queue.client()
                if position is None:
                    position = _s(await client.get(self.cursor_key) or "0-0")
                moved = await self.step(client, position)
            except Exception as exc:
                if self.refusals.failed(exc):  # by the Redis ACL (said once): no outage
                    await asyncio.sleep(REFUSED_RETRY_S)
                    continue
                if not isinstance(exc, NET_ERRORS):
                    raise
                log.warning("workflow events: Redis unreachable (%s); retrying", type(exc).__name__)
                await asyncio.sleep(1.0)
                continue
            self.refusals.ok()
            if moved is None:
                await asyncio.sleep(self.pause_s)
            else:
                position = moved

    async def step(self, client: Any, position: str) -> str | None:
        """Report the entries after ``position``; the new position, or None when none."""
        got = await client.xread({self.log_key: position}, count=100)
        if not got:
            return None
        hooks = self.queue.hooks
        for entry_id, raw in stream_entries(got):
            position = _s(entry_id)
            fields = {_s(k): _s(v) for k, v in raw.items()}
            if hooks.feature_event:
                hooks.emit_feature_event(
                    FeatureEvent(
                        queue=self.queue.name,
                        feature="workflows",
                        name=fields.get("e", ""),
                        subject=fields.get("w", ""),
                        fields={
                            "workflow_id": fields.get("w", ""),
                            "step": fields.get("s", ""),
                        },
                        event_id=position,
                        at_ms=int(position.split("-")[0]),
                    )
                )
        await client.set(self.cursor_key, position)
        return position
