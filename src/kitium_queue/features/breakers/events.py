"""Reporting breaker state changes in process: the ``breaker-events`` leader service.

Every state change is written, in the same atomic step as the change, to the queue's
durable event stream (``breaker-state``, read with ``queue.events()``) and to the
breaker log ``cb:log``. One worker process of the queue at a time (the leader of
``breaker-events``) reads the log and, for each change, calls the ``feature_event``
lifecycle hook (``FeatureEvent`` named ``breaker-state``: ``queue.on("breaker-state",
...)`` handlers and every subscriber) and counts it in the queue's metrics adapter
(``breaker.transitions``, tags ``queue``, ``breaker``, ``state``). Its position in the
log is kept in Redis (``cb:cursor``), so a new leader goes on where the last one
stopped: each change is reported at least once across the queue's workers (a leader
that dies between reporting and saving its position makes its successor report the
last few again; ``FeatureEvent.event_id`` tells them apart).

The leader also sweeps the breakers every few seconds (``BreakerEvents.sweep``): jobs
held by a breaker that acts closed (its record deleted or of another Redis type, its
state no state) are let go, and a held breaker whose park timer was deleted from the
shared park keys gets it again, so no damaged key holds jobs until a repair.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from ...events import declare_events, stream_entries
from ...hooks import FeatureEvent
from ...leader import NET_ERRORS, REFUSED_RETRY_S, LeaderService, Refusals
from ...limits import get_logger
from .model import BreakerTransition
from .script import SCRIPT_NAME

if TYPE_CHECKING:
    from ...queue import JobQueue

__all__ = ["EVENT_NAME", "FEATURE", "SERVICE_NAME", "BreakerEvents", "report"]

log = get_logger(__name__)

FEATURE = "circuit-breakers"
#: Name of the feature event (and of the durable stream event) of a state change.
EVENT_NAME = "breaker-state"
declare_events(FEATURE, EVENT_NAME)  # queue.on and webhooks know it
SERVICE_NAME = "breaker-events"
#: Log entries reported per read.
_BATCH = 100
#: What a stream entry id looks like (``<ms>-<seq>``).
_ENTRY_ID = re.compile(r"[0-9]{1,19}-[0-9]{1,19}")
#: Seconds between two warnings about a damaged log or cursor.
_WARN_EVERY = 60.0
#: Default ms between two sweeps of the leader.
SWEEP_MS = 5000


def report(queue: JobQueue, change: BreakerTransition) -> None:
    """Call the ``feature_event`` hook and count the change in the metrics adapter."""
    if queue.hooks.feature_event:
        queue.hooks.emit_feature_event(
            FeatureEvent(
                queue=queue.name,
                feature=FEATURE,
                name=EVENT_NAME,
                subject=change.breaker_id,
                fields={
                    "breaker": change.breaker_id,
                    "from": change.from_state,
                    "to": change.to_state,
                    "reason": change.reason,
                },
                event_id=change.entry_id,
                at_ms=change.at_ms,
            )
        )
    metrics = queue.metrics
    if metrics is not None:
        try:
            metrics.increment(
                "breaker.transitions",
                1,
                {
                    "queue": queue.name,
                    "breaker": change.breaker_id,
                    "state": change.to_state,
                },
            )
        except Exception:
            log.exception("metrics adapter failed on breaker.transitions")


class BreakerEvents(LeaderService):
    """The leader-only service that reports state changes (see the module docstring).

    Args:
        queue: the queue.
        interval_ms: how often the leader reads the log (it reads again at once while
            there is more).
        lease_ms: the leader lease (another process takes over at most this long after
            the leader died).
        sweep_ms: how often the leader sweeps the breakers (``sweep``).
    """

    def __init__(
        self,
        queue: JobQueue,
        *,
        interval_ms: int = 250,
        lease_ms: int = 10_000,
        sweep_ms: int = SWEEP_MS,
    ) -> None:
        super().__init__(SERVICE_NAME, self._body, lease_ms=lease_ms)
        self.queue = queue
        self.interval_s = max(10, interval_ms) / 1000
        self.sweep_s = max(100, sweep_ms) / 1000
        self.log_key = queue.keys.extra("cb:log")
        self.cursor_key = queue.keys.extra("cb:cursor")
        self._warned = -1e9
        # Where the sweep's walk of cb:ids goes on (read and written by each sweep).
        self.sweep_key = queue.keys.extra("cb:sweep")
        self.refusals = Refusals(f"breaker events of queue {queue.name}", log)

    def _warn(self, what: str) -> None:
        now = time.monotonic()
        if now - self._warned >= _WARN_EVERY:
            self._warned = now
            log.warning("breaker events: %s", what)

    async def _start(self, client: Any) -> str:
        """The saved position; a damaged one (another type, no entry id) starts again
        from the latest change (changes since it was saved are not reported)."""
        try:
            raw = await client.get(self.cursor_key)
        except ResponseError as exc:
            if not str(exc).startswith("WRONGTYPE"):
                raise
            raw = b"?"
        cursor = _sid(raw) if raw is not None else ""
        if cursor and _ENTRY_ID.fullmatch(cursor):
            return cursor
        if cursor:
            self._warn(
                f"{self.cursor_key} holds no log position (damaged or written by hand); "
                "reporting goes on from the latest change and the key is written again"
            )
        # First leader ever: report changes from now on.
        last = await client.xrevrange(self.log_key, count=1)
        cursor = _sid(last[0][0]) if last else "0-0"
        await client.set(self.cursor_key, cursor)
        return cursor

    async def sweep(self) -> int:
        """Let go the jobs held by breakers that act closed (record deleted or of another
        Redis type, state no state), and arm the park timer of the other breakers that
        hold jobs again. One script call over one page of at most 1,000 breakers of the
        queue (``cb:ids``, oldest first): each call goes on where the last one (of any
        process) stopped, and starts again from the first breaker after the last page, so
        every breaker is swept once every ceil(N / 1000) calls. Returns how many
        breakers let jobs go. The leader runs it every ``sweep_ms``. The walk's place is
        kept in ``cb:sweep`` ("<score> <breaker id>"), where a new leader goes on; a
        value of another shape or type starts the walk again from the first breaker."""
        client = await self.queue.client()
        place = await self._sweep_place(client)
        reply = await self.queue.run(SCRIPT_NAME, ["sweep", "*", *place])
        after, score = (_bytes(v) for v in reply[1:3]) if len(reply) > 2 else (b"", b"")
        await client.set(self.sweep_key, score + b" " + after if after else b"")
        return int(reply[0])

    async def _sweep_place(self, client: Any) -> list[Any]:
        """The sweep's saved place ([breaker id, score]); ["", ""] from the first."""
        try:
            raw = await client.get(self.sweep_key)
        except ResponseError as exc:
            if not str(exc).startswith("WRONGTYPE"):
                raise
            return ["", ""]
        score, _, after = (raw or b"").partition(b" ")
        try:
            ok = after != b"" and math.isfinite(float(score))
        except ValueError:
            ok = False
        return [after, score] if ok else ["", ""]

    async def _sweep_due(self, due: float) -> float:
        """Sweep when ``due`` (monotonic seconds) has come; the next due time."""
        now = time.monotonic()
        if now < due:
            return due
        try:
            await self.sweep()
        except Exception as exc:  # never a reason to stop reporting state changes
            if self.refusals.failed(exc, "sweep"):  # by the Redis ACL: said once
                return now + self.sweep_s
            if isinstance(exc, NET_ERRORS):
                raise
            self._warn(
                f"sweep failed ({type(exc).__name__}: {str(exc)[:200]}); held jobs still "
                "come back by their park timer"
            )
        else:
            self.refusals.ok("sweep")
        return now + self.sweep_s

    async def _body(self, term: int) -> None:
        client = await self.queue.client()
        cursor: str | None = None
        sweep_at = 0.0
        while True:
            try:
                sweep_at = await self._sweep_due(sweep_at)
                if cursor is None:
                    cursor = await self._start(client)
                got = await self.poll(client, cursor)
            except Exception as exc:
                if self.refusals.failed(exc):  # by the Redis ACL (said once): no outage
                    await asyncio.sleep(REFUSED_RETRY_S)
                    continue
                if isinstance(exc, NET_ERRORS):
                    log.warning(
                        "breaker events: Redis unreachable (%s); retrying", type(exc).__name__
                    )
                    await asyncio.sleep(1.0)
                    continue
                if not (isinstance(exc, ResponseError) and str(exc).startswith("WRONGTYPE")):
                    raise
                self._warn(
                    f"{self.log_key} holds another Redis type, not a stream: state changes "
                    "are not reported. Repair: delete that key (DEL)"
                )
                cursor = None
                await asyncio.sleep(max(self.interval_s, 1.0))
                continue
            self.refusals.ok()
            if got is not None:
                cursor = got
                continue
            await asyncio.sleep(self.interval_s)

    async def poll(self, client: Any, cursor: str) -> str | None:
        """Report the changes after ``cursor``; the new cursor, or None when none."""
        reply = await client.xread({self.log_key: cursor}, count=_BATCH)
        if not reply:
            return None
        last = cursor
        for entry_id, fields in stream_entries(reply):
            last = _sid(entry_id)
            report(self.queue, BreakerTransition.parse(last, fields))
        await client.set(self.cursor_key, last)
        return last


def _bytes(v: Any) -> bytes:
    return v if isinstance(v, bytes) else str(v).encode()


def _sid(v: Any) -> str:
    return v.decode("utf-8", "backslashreplace") if isinstance(v, bytes) else str(v)
