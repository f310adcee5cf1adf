"""Delivery: the service every worker runs, and the in-memory dispatcher.

* **Guaranteed** events reach the outbox atomically with the job's transition (or
  through ``Outbox.add``). Every worker of the queue runs ``DeliveryService``: one
  consumer of the outbox group ``webhooks`` (the group spreads the entries over the
  workers and hands a dead worker's unacknowledged entries to another one), which fans
  each entry out to the endpoints that want it and makes the first attempts; and a retry
  loop that claims due retries from ``wh:retry`` under a lease. Results, retry schedule
  and the acknowledgement of the outbox entries are written in one script
  (``webhooks_done``): an entry is acknowledged only once each of its deliveries is
  recorded as delivered, scheduled for a retry, or dead-lettered.
* **Reliable** and **best-effort** deliveries run in ``LocalDispatcher``: tasks of the
  process that saw the event, with retries in memory (lost if the process dies).

Nothing here runs on a job's path: the worker only ever hands events over.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from ...damage import DamagedKeys, is_damage_error
from ...events import EventData
from ...hooks import FeatureEvent
from ...leader import NET_ERRORS, OutageLog
from ...limits import get_logger
from ...outbox import Outbox, OutboxEntry
from .delivery import AttemptResult, Target, history_json
from .models import MAX_RETRIES, event_body, feature_event_data
from .registry import webhook_damage

if TYPE_CHECKING:
    from .manager import WebhookManager

__all__ = ["DELIVERY_EVENT", "FEATURE", "GROUP", "Delivery", "DeliveryService", "LocalDispatcher"]

log = get_logger(__name__)

#: The feature's name (its option, its slots, its feature events).
FEATURE = "webhooks"
#: The outbox consumer group of webhook delivery.
GROUP = "webhooks"
#: The feature event of each delivery result recorded (``subject``: the webhook id;
#: ``fields``: webhook, event_id, event_type, outcome, attempts, status), reported by the
#: process that made the attempt, once the result is in Redis.
DELIVERY_EVENT = "webhook-delivery"
_OUTCOMES = {"ok": "delivered", "retry": "retrying", "dead": "dead-lettered", "failed": "failed"}
_OUTBOX_MAX_DELIVERIES = 50
#: Longest sleep of an idle retry loop (ms): how late another process's retry may be.
IDLE_WAIT_MS = 2_000


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


def _consumer_name() -> str:
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(3)}"


class _Base:
    def __init__(self, mgr: WebhookManager) -> None:
        self.mgr = mgr

    async def _script(self, script: str, args: Sequence[Any]) -> Any:
        """``ctx.run``: a damaged webhook key comes out named, with its repair."""
        try:
            return await self.mgr.queue.ctx.run(script, args)
        except Exception as exc:
            raise webhook_damage(exc) from exc

    async def attempt(self, d: Delivery) -> AttemptResult:
        if d.target is None:
            return AttemptResult(False, None, d.missing or "webhook removed", 0, True, False)
        return await self.mgr.sender.attempt(d.target, d.event_id, d.body)

    def record(self, d: Delivery, res: AttemptResult, *, durable: bool) -> list[Any]:
        """The 13 ``webhooks_done`` fields for the result of one attempt."""
        n = d.attempts + 1
        now = int(time.time() * 1000)
        entry = [now, n, res.status, res.error, res.duration_ms]
        due = 0
        if res.ok:
            kind = "ok"
        elif durable and not res.permanent and n <= d.max_retries:
            kind, due = "retry", now + max(self.mgr.backoff.delay_ms(n), res.wait_ms)
        else:
            kind = "dead" if durable else "failed"
        return [
            d.member,
            kind,
            n,
            due,
            history_json(d.history, entry),
            "" if res.status is None else res.status,
            res.error or "",
            self.mgr.history_ttl_s,
            d.body if d.new else b"",
            d.event_type,
            d.strategy,
            d.url,
            d.max_retries,
        ]

    async def write(self, fields: Sequence[Any], acks: Sequence[str] = ()) -> None:
        """Record results (and acknowledge entries) in Redis, then tell this process's
        ``queue.on("webhook-dlq" | "webhook-failed")`` handlers about the given-up ones."""
        q = self.mgr.queue
        for i in range(0, max(len(fields), 1), 13 * 200):
            chunk = list(fields[i : i + 13 * 200])
            ack = list(acks) if i == 0 else []
            if not chunk and not ack:
                return
            got = await self._script("webhooks_done", (GROUP, len(ack), *ack, *chunk))
            damaged, replaced = (got[1], got[2]) if isinstance(got, list) else ([], [])
            for key in damaged:
                _warn_damaged(
                    _text(key),
                    "a delivery record there is kept in the webhook DLQ, an index is left "
                    "out; delete it to repair",
                )
            for key, found in zip(replaced[::2], replaced[1::2], strict=True):
                _warn_damaged(
                    _text(key),
                    f"it held a {_text(found)}, never a delivery record (always a hash under "
                    "its own delivery's name): replaced by the record of the new delivery "
                    "it names, whose event was at hand",
                )
        if q.hooks.feature_event:
            self._report(fields)
        emitter = q.emitter
        for i in range(0, len(fields), 13):
            kind = fields[i + 1]
            if kind in ("dead", "failed"):
                event = "webhook-dlq" if kind == "dead" else "webhook-failed"
                if emitter.wants(event):
                    wid, eid = str(fields[i]).split("/", 1)
                    emitter.emit(
                        EventData(
                            event,
                            q.name,
                            extra={
                                "webhook_id": wid,
                                "event_id": eid,
                                "event_type": fields[i + 9],
                                "attempts": fields[i + 2],
                                "reason": fields[i + 6],
                            },
                        )
                    )

    def _report(self, fields: Sequence[Any]) -> None:
        """The ``feature_event`` hook for each result just recorded."""
        q = self.mgr.queue
        now = int(time.time() * 1000)
        for i in range(0, len(fields), 13):
            wid, eid = str(fields[i]).split("/", 1)
            attempts, status = fields[i + 2], fields[i + 5]
            q.hooks.emit_feature_event(
                FeatureEvent(
                    queue=q.name,
                    feature=FEATURE,
                    name=DELIVERY_EVENT,
                    subject=wid,
                    fields={
                        "webhook": wid,
                        "event_id": eid,
                        "event_type": str(fields[i + 9]),
                        "outcome": _OUTCOMES.get(str(fields[i + 1]), str(fields[i + 1])),
                        "attempts": str(attempts),
                        "status": str(status),
                    },
                    event_id=f"{fields[i]}#{attempts}",
                    at_ms=now,
                )
            )


class DeliveryService(_Base):
    """The guaranteed delivery loops of one worker process (a queue ``Service``)."""

    name = "webhooks"

    def __init__(self, mgr: WebhookManager) -> None:
        super().__init__(mgr)
        self._tasks: list[asyncio.Task[None]] = []
        self.consumer_name = _consumer_name()
        self.delivered = 0

    async def start(self, queue: Any) -> None:
        if any(not t.done() for t in self._tasks):
            return
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._outbox_loop(), name=f"kq-webhooks-outbox-{queue.name}"),
            loop.create_task(self._retry_loop(), name=f"kq-webhooks-retry-{queue.name}"),
        ]

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        pending = set(tasks)
        for _ in range(25):  # a client may swallow a cancellation (memory://): cancel again
            if not pending:
                break
            for t in pending:
                t.cancel()
            _done, pending = await asyncio.wait(pending, timeout=0.2)
        for t in tasks:
            if t.done() and not t.cancelled():
                with contextlib.suppress(Exception):
                    t.result()
        await self.mgr.local.drain(timeout=2.0)
        await self.mgr.sender.close()

    async def _pace(self, spent_s: float) -> None:
        pause = self.pause_after(spent_s)
        if pause > 0:
            await asyncio.sleep(pause)

    def pause_after(self, spent_s: float) -> float:
        """Seconds to sleep after a batch that took ``spent_s``. Delivery gives way to the
        jobs of this process: while its worker runs jobs, it takes about ``busy_share``
        of the time (it sleeps after each batch); an idle worker, or none, lets it run
        at full speed. The backlog waits in Redis.

        Busy means jobs running or being claimed (``Worker.busy``), not slots taken: an
        idle worker keeps slots reserved for the claim that rides on its wake-up wait,
        and counting those paced delivery to ``batch`` per second for as long as the
        worker had nothing to do."""
        share = self.mgr.busy_share
        worker = self.mgr.queue.worker
        if share >= 1 or worker is None or not worker.busy():
            return 0.0
        return min(spent_s * (1 - share) / share, 1.0)

    async def _forever(self, what: str, step: Callable[[], Awaitable[float]]) -> None:
        """Run ``step`` (returns how long to idle, s) until cancelled: through Redis
        outages (logged once each) and unexpected errors (logged, then a pause)."""
        mgr = self.mgr
        outage = OutageLog(f"webhook {what} of queue {mgr.queue.name}")
        damaged = DamagedKeys(mgr.queue.name)  # a damaged key: named, once a minute
        while True:
            try:
                idle = await step()
                outage.ok()
                if damaged.damaged:
                    damaged.ok(await mgr.queue.client(), ())
                if idle > 0:
                    await asyncio.sleep(idle)
            except asyncio.CancelledError:
                raise
            except NET_ERRORS as exc:
                await outage.pause(exc)
            except Exception as exc:
                # A damaged key, or Redis refusing writes: reported at a bounded rate.
                if damaged.failed(webhook_damage(exc) if is_damage_error(exc) else exc):
                    await asyncio.sleep(1.0)
                    continue
                log.exception("webhook %s of queue %s failed; retrying", what, mgr.queue.name)
                await asyncio.sleep(1.0)

    async def _paced(self, work: Callable[[], Awaitable[int]]) -> int:
        started = time.monotonic()
        n = await work()
        if n:
            await self._pace(time.monotonic() - started)
        return n

    # ------------------------------------------------------------------ outbox
    async def _outbox_loop(self) -> None:
        mgr = self.mgr
        # The memory:// backend cannot cancel a blocking read: poll it instead.
        memory = mgr.queue.connection.is_memory
        consumer = Outbox(mgr.queue).consumer(
            GROUP,
            self.consumer_name,
            count=mgr.batch,
            block_ms=0 if memory else 1000,
            claim_idle_ms=mgr.claim_idle_ms,
            max_deliveries=_OUTBOX_MAX_DELIVERIES,
        )

        async def read_and_handle() -> int:
            entries = await consumer.read()
            if entries:
                await self.handle(entries)
            return len(entries)

        async def step() -> float:
            n = await self._paced(read_and_handle)
            return mgr.poll_ms / 1000 if memory and not n else 0.0

        await self._forever("delivery (outbox)", step)

    async def handle(self, entries: Sequence[OutboxEntry]) -> None:
        """Fan entries out, make the first attempts, record them and acknowledge."""
        await self.mgr.registry.refresh()
        work: list[Delivery] = []
        reloaded = False
        for e in entries:
            if e.topic != "webhook":
                continue
            got = self.expand(e)
            if not got and not reloaded:
                # The transition wrote it because an endpoint wanted it: a cache that
                # knows none is stale (registered elsewhere a moment ago). Reload once.
                await self.mgr.registry.refresh(force=True)
                reloaded = True
                got = self.expand(e)
            work.extend(got)
        results = await self._attempt_all(work)
        fields: list[Any] = []
        for d, res in zip(work, results, strict=True):
            fields += self.record(d, res, durable=True)
            self.delivered += res.ok
        await self.write(fields, [e.id for e in entries])

    def expand(self, e: OutboxEntry) -> list[Delivery]:
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
            data = feature_event_data(
                self.mgr.queue.name, f["s"].decode("utf-8", "replace"), fields
            )
            body = event_body(etype, _int(f.get("ts")) or int(time.time() * 1000), data)
        else:  # written by a transition script
            eid = "evt_" + e.id
            data = {
                "queue": self.mgr.queue.name,
                "job_id": f.get("j", b"").decode("utf-8", "replace"),
                "job_name": f.get("n", b"").decode("utf-8", "replace")[:512],
                "attempts": _int(f.get("a")),
            }
            body = event_body(etype, _int(f.get("ts")) or int(time.time() * 1000), data)
        out: list[Delivery] = []
        only = f.get("w", b"").decode("utf-8", "replace")
        for hook in self.mgr.registry.wanting(etype, guaranteed=True):
            if only and hook.id != only:
                continue
            out.append(
                Delivery(
                    f"{hook.id}/{eid}",
                    self.mgr.target_of(hook),
                    etype,
                    body,
                    "guaranteed",
                    hook.max_retries,
                )
            )
        url = f.get("u", b"").decode("utf-8", "replace")
        if url and not only:
            jw = self.mgr.job_webhook
            out.append(
                Delivery(
                    f"job/{eid}",
                    self.mgr.job_target(url),
                    etype,
                    body,
                    "guaranteed",
                    jw.max_retries,
                    url=url,
                )
            )
        return out

    async def _attempt_all(self, work: Sequence[Delivery]) -> list[AttemptResult]:
        sem = self.mgr.limit

        async def one(d: Delivery) -> AttemptResult:
            async with sem:
                return await self.attempt(d)

        return list(await asyncio.gather(*(one(d) for d in work)))

    # ------------------------------------------------------------------ retries
    async def _retry_loop(self) -> None:
        mgr = self.mgr

        async def step() -> float:
            n = await self._paced(self.retry_once)
            return 0.0 if n >= mgr.batch else mgr.poll_ms / 1000 if n else await self.idle_wait()

        await self._forever("delivery (retries)", step)

    async def idle_wait(self) -> float:
        """Seconds the retry loop sleeps when nothing was due: until the earliest retry
        is due, within ``poll_ms`` and ``IDLE_WAIT_MS`` (or 80 % of the first retry delay,
        the earliest a retry scheduled meanwhile can come due)."""
        mgr = self.mgr
        floor = mgr.poll_ms
        b = mgr.backoff
        cap = max(floor, min(IDLE_WAIT_MS, int(min(b.base_ms, b.max_ms) * 0.8)))
        client = await mgr.queue.client()
        first = await client.zrange(mgr.queue.keys.extra("wh:retry"), 0, 0, withscores=True)
        if not first:
            return cap / 1000
        due_in = float(first[0][1]) - time.time() * 1000
        return min(max(due_in, floor), cap) / 1000

    async def retry_once(self) -> int:
        """Claim the due retries (up to ``batch``), attempt and record them; the count."""
        mgr = self.mgr
        claimed = await self._script("webhooks_claim", (mgr.batch, mgr.lease_ms))
        if not claimed:
            return 0
        for row in claimed:
            if len(row) == 1:  # its record holds another type: moved to the DLQ
                _warn_damaged(
                    mgr.queue.keys.extra("wh:d:" + _text(row[0])),
                    "not attempted, kept in the webhook DLQ; delete the key to repair",
                )
        await mgr.registry.refresh()
        work = [self._claimed(row) for row in claimed if len(row) > 1]
        results = await self._attempt_all(work)
        fields: list[Any] = []
        for d, res in zip(work, results, strict=True):
            fields += self.record(d, res, durable=True)
            self.delivered += res.ok
        await self.write(fields)
        return len(claimed)

    def _claimed(self, row: Sequence[Any]) -> Delivery:
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
            target = self.mgr.job_target(url) if url else None
            max_retries = (
                min(_int(max_r), MAX_RETRIES)
                if _int(max_r) or max_r == "0"
                else self.mgr.job_webhook.max_retries
            )
            missing = "no URL recorded for this job's webhook"
        else:
            hook = self.mgr.registry.get(wid)
            target = self.mgr.target_of(hook) if hook and hook.active else None
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


class LocalDispatcher(_Base):
    """Reliable and best-effort deliveries: tasks of this process (see module doc).

    At most ``max_backlog`` deliveries are held at a time; beyond that new ones are
    dropped (counted in ``dropped``, logged once a minute) rather than ever slowing the
    worker down.
    """

    def __init__(self, mgr: WebhookManager, max_backlog: int = 10_000) -> None:
        super().__init__(mgr)
        self.max_backlog = max_backlog
        self.dropped = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._warned = 0.0

    def submit(self, d: Delivery) -> None:
        if len(self._tasks) >= self.max_backlog:
            self.dropped += 1
            now = time.monotonic()
            if now - self._warned > 60:
                self._warned = now
                log.warning(
                    "webhook deliveries of queue %s: %d in flight in this process, "
                    "new ones dropped (%d so far)",
                    self.mgr.queue.name,
                    len(self._tasks),
                    self.dropped,
                )
            return
        task = asyncio.get_running_loop().create_task(self._run(d))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, d: Delivery) -> None:
        mgr = self.mgr
        budget = d.max_retries if d.strategy == "reliable" else 0
        while True:
            async with mgr.limit:
                res = await self.attempt(d)
            if res.ok or res.permanent or d.attempts >= budget:
                break
            d.attempts += 1
            d.history = orjson.loads(
                history_json(
                    d.history,
                    [int(time.time() * 1000), d.attempts, res.status, res.error, res.duration_ms],
                )
            )
            await asyncio.sleep(max(mgr.backoff.delay_ms(d.attempts), res.wait_ms) / 1000)
        # The history of an in-memory delivery is best effort too.
        with contextlib.suppress(*NET_ERRORS):
            await self.write(self.record(d, res, durable=False))

    async def drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for deliveries in flight, then cancel the rest."""
        if not self._tasks:
            return
        _done, pending = await asyncio.wait(list(self._tasks), timeout=timeout)
        for t in pending:
            t.cancel()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)


# When each damaged webhook key was last reported (at most once a minute each).
_WARNED: dict[str, float] = {}


def _warn_damaged(key: str, what: str) -> None:
    now = time.monotonic()
    if now - _WARNED.get(key, -1e9) < 60:
        return
    if len(_WARNED) > 1000:
        _WARNED.clear()
    _WARNED[key] = now
    log.warning(
        "webhook key %s holds another type (damaged outside kitium-queue): %s",
        key[:300],
        what,
    )


def _text(v: Any) -> str:
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).decode("utf-8", "replace")
    return "" if v is None else str(v)


def _int(v: Any) -> int:
    """A stored count or time: ASCII digits, below 10**17; anything else (damaged) 0."""
    t = _text(v)
    return int(t) if t.isascii() and t.isdigit() and len(t) < 18 else 0
