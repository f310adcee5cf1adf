"""Delivery: the service every worker runs, and the in-memory dispatcher.

* **Guaranteed** events reach the outbox atomically with the job's transition (or
  through ``Outbox.add``). Every worker of the queue runs ``DeliveryService``: one
  consumer of the outbox group ``webhooks`` (the group spreads the entries over the
  workers and hands a dead worker's unacknowledged entries to another one), which fans
  each entry out to the endpoints that want it and makes the first attempts; and a retry
  loop that claims due retries from ``wh:retry`` under a lease. Results, retry schedule
  and the acknowledgement of the outbox entries are written in one script
  (``webhooks_done``), in waves while a batch runs (``waves.py``): an entry is
  acknowledged only once each of its deliveries is recorded as delivered, scheduled for
  a retry, or dead-lettered.
* **Reliable** and **best-effort** deliveries run in ``LocalDispatcher`` (``local.py``):
  tasks of the process that saw the event, with retries in memory (lost if it dies).

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
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from ...connection import outage
from ...connerrors import refused
from ...damage import DamagedKeys, is_damage_error
from ...events import EventData, declare_events
from ...hooks import FeatureEvent
from ...leader import NET_ERRORS, OutageLog
from ...lifecycle import stop_budget
from ...limits import get_logger
from ...outbox import Outbox, OutboxConsumer, OutboxEntry
from ...runends import wait_unless
from .delivery import AttemptResult, history_json
from .dlq import index_earlier, note_dropped
from .fanout import Delivery, _text, claimed, expand
from .registry import webhook_damage
from .waves import Waves

if TYPE_CHECKING:
    from .manager import WebhookManager

__all__ = ["DELIVERY_EVENT", "FEATURE", "GROUP", "Delivery", "DeliveryService"]

log = get_logger(__name__)
T = TypeVar("T")

#: The feature's name (its option, its slots, its feature events).
FEATURE = "webhooks"
#: The outbox consumer group of webhook delivery.
GROUP = "webhooks"
#: The feature event of each delivery result recorded (``subject``: the webhook id;
#: ``fields``: webhook, event_id, event_type, outcome, attempts, status), reported by the
#: process that made the attempt, once the result is in Redis.
DELIVERY_EVENT = "webhook-delivery"
#: Events of this feature for ``queue.on``: the above, and a delivery that gave up.
declare_events(FEATURE, DELIVERY_EVENT, "webhook-dlq", "webhook-failed")
_OUTCOMES = {"ok": "delivered", "retry": "retrying", "dead": "dead-lettered", "failed": "failed"}
_OUTBOX_MAX_DELIVERIES = 50
#: What a stop waits for a batch's results to be recorded, beyond its requests' timeouts.
STOP_RECORD_S = 5.0
#: Longest sleep of an idle retry loop (ms): how late another process's retry may be.
IDLE_WAIT_MS = 2_000


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
        return self._fields(d, kind, n, due, history_json(d.history, entry), res.status, res.error)

    def _fields(
        self, d: Delivery, kind: str, n: int, due: int, history: Any, status: Any, error: Any
    ) -> list[Any]:
        """The 13 ``webhooks_done`` fields of delivery ``d``."""
        return [
            d.member,
            kind,
            n,
            due,
            history,
            "" if status is None else status,
            error or "",
            self.mgr.history_ttl_s,
            d.body if d.new else b"",
            d.event_type,
            d.strategy,
            d.url,
            d.max_retries,
        ]

    async def write(
        self, fields: Sequence[Any], acks: Sequence[str] = (), back: Sequence[Any] = ()
    ) -> None:
        """Record results (and acknowledge entries) in Redis, then tell this process's
        ``queue.on("webhook-dlq" | "webhook-failed")`` handlers about the given-up ones.
        ``back``: more records, of deliveries handed back unattempted (not reported)."""
        q = self.mgr.queue
        rows = [*fields, *back]
        for i in range(0, max(len(rows), 1), 13 * 200):
            chunk = list(rows[i : i + 13 * 200])
            ack = list(acks) if i == 0 else []
            if not chunk and not ack:
                return
            got = await self._script("webhooks_done", (GROUP, len(ack), *ack, *chunk))
            damaged, replaced = (got[1], got[2]) if isinstance(got, list) else ([], [])
            if isinstance(got, list) and len(got) > 3 and got[3]:
                note_dropped(self.mgr, got[3])  # past the DLQ's bound: said once
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
        self._stopping = False
        self._batches: set[asyncio.Task[Any]] = set()  # under way (see _whole)
        self._longest_s = 0.0  # the longest request timeout of a batch so far

    async def start(self, queue: Any) -> None:
        if any(not t.done() for t in self._tasks):
            return
        self._stopping = False
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._outbox_loop(), name=f"kq-webhooks-outbox-{queue.name}"),
            loop.create_task(self._retry_loop(), name=f"kq-webhooks-retry-{queue.name}"),
        ]

    async def stop(self) -> None:
        """Stop the loops at once (a read, a pause), but let a batch under way end: its
        requests in flight are answered (each within its endpoint's timeout) and every
        result is recorded; its deliveries not yet begun are scheduled as retries due now
        (``_handed_back``), for another worker. A batch cut short between a request and
        its record would be sent again by another worker: a duplicate after a graceful
        stop. Only one still running past its timeouts and ``STOP_RECORD_S``, past what
        is left of the stopping worker's ``shutdown_timeout``, or once its stop is forced
        (``Worker.force``: a second SIGTERM) is cut."""
        self._stopping = True
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
        batches = set(self._batches)
        if batches:
            # Within the stopping worker's grace (shutdown_timeout), and not at all once
            # its stop is forced (a second SIGTERM).
            wait_s, forced = stop_budget(self.mgr.queue, self._longest_s + STOP_RECORD_S)
            cut = await wait_unless(batches, wait_s, forced)
            done = batches - cut
            for b in cut:
                b.cancel()
            failed = [b.exception() for b in done if not b.cancelled() and b.exception()]
            if cut or failed:
                log.warning(
                    "webhook delivery of queue %s stopped with %d batch(es) unrecorded (%s): "
                    "their outbox entries and retries are sent again by another worker",
                    self.mgr.queue.name,
                    len(cut) + len(failed),
                    "cut short" if cut else type(failed[0]).__name__,
                )
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

    async def _forever(self, what: str, step: Callable[[], Awaitable[tuple[float, int]]]) -> None:
        """Run ``step`` (returns how long to idle, s, and how many it handled) until
        cancelled: through Redis outages (logged once each) and unexpected errors
        (logged, then a pause)."""
        mgr = self.mgr
        down = OutageLog(f"webhook {what} of queue {mgr.queue.name}")
        damaged = DamagedKeys(mgr.queue.name)  # a damaged key: named, once a minute
        while True:
            try:
                idle, handled = await step()
                # A refusal (the Redis ACL) is over only once a step recorded something:
                # one that found nothing ran none of what was refused.
                if handled:
                    down.ok()
                else:
                    down.reached()
                if damaged.damaged:
                    damaged.ok(await mgr.queue.client(), ())
                if idle > 0:
                    await asyncio.sleep(idle)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if isinstance(exc, NET_ERRORS) or refused(exc):  # or the Redis ACL's NOPERM
                    await down.pause(exc)  # said once, and when it ends
                    continue
                # A damaged key, or Redis refusing writes: reported at a bounded rate.
                if damaged.failed(webhook_damage(exc) if is_damage_error(exc) else exc):
                    await asyncio.sleep(1.0)
                    continue
                log.exception("webhook %s of queue %s failed; retrying", what, mgr.queue.name)
                await asyncio.sleep(1.0)

    async def _whole(self, work: Awaitable[T]) -> T:
        """Run one batch so that a stop (which cancels this loop) lets it end: see stop."""
        task = asyncio.ensure_future(work)
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)
        return await asyncio.shield(task)

    async def _paced(self, work: Callable[[], Awaitable[int]]) -> int:
        started = time.monotonic()
        n = await self._whole(work())
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

        async def handle() -> int:
            entries = await consumer.read()
            if entries:  # a stop lets it end: the outbox loop (and so the read) is cancelled
                await self._whole(self.handle(entries, consumer))
            return len(entries)

        async def step() -> tuple[float, int]:
            started = time.monotonic()
            n = await handle()
            if n:
                await self._pace(time.monotonic() - started)
            return (mgr.poll_ms / 1000 if memory and not n else 0.0), n

        await self._forever("delivery (outbox)", step)

    async def handle(
        self, entries: Sequence[OutboxEntry], consumer: OutboxConsumer | None = None
    ) -> None:
        """Fan entries out, make the first attempts, record them and acknowledge. With
        the ``consumer`` that read them, it keeps them meanwhile (``OutboxConsumer.touch``)."""
        await self.mgr.registry.refresh()
        work: list[Delivery] = []
        owners: list[str | None] = []
        reloaded = False
        for e in entries:
            if e.topic != "webhook":
                continue
            got = expand(self.mgr, e)
            if not got and not reloaded:
                # The transition wrote it because an endpoint wanted it: a cache that
                # knows none is stale (registered elsewhere a moment ago). Reload once.
                await self.mgr.registry.refresh(force=True)
                reloaded = True
                got = expand(self.mgr, e)
            work.extend(got)
            owners += [e.id] * len(got)
        ids = [e.id for e in entries]

        async def keep(waves: Waves) -> None:  # the entries not yet acknowledged
            assert consumer is not None
            await consumer.touch(waves.unacked())

        await self._attempt_and_write(
            work, ids, keep if consumer else None, self.mgr.claim_idle_ms, owners
        )

    async def _attempt_and_write(
        self,
        work: Sequence[Delivery],
        acks: Sequence[str],
        keep: Callable[[Waves], Awaitable[Any]] | None,
        hold_ms: int,
        owners: Sequence[str | None] | None = None,
    ) -> None:
        """Attempt ``work`` and record the results in waves while it runs (``waves.py``):
        each wave, one script, records what is ready and acknowledges the entries of
        ``acks`` whose deliveries are all recorded (``owners``: the entry of each).

        While the attempts run, ``keep(waves)`` every third of ``hold_ms`` keeps what is
        not yet recorded this worker's (its outbox entries, or its retries' leases, last
        ``hold_ms``): a batch of slow answers outlasting them was taken over and sent
        again by a live worker. Once the service stops, attempts not yet begun are not
        made: those deliveries are recorded as retries due now, their attempts and
        history unchanged. So is a delivery that waited for its endpoint's slot
        (``EndpointSlots``) for its request timeout: an endpoint whose requests hang
        would otherwise hold the batch, and so its loop and the events of every other
        endpoint behind it, for as many rounds of timeouts as its backlog makes, with
        the process's other slots free. While Redis is unreachable a wave's record is
        tried again (the results are only here; a dropped record is sent again by the
        worker that takes the batch over)."""
        sem = self.mgr.limit
        timeouts = [d.target.timeout_ms for d in work if d.target is not None]
        self._longest_s = max(self._longest_s, max(timeouts, default=0) / 1000)
        waves = Waves(
            self._write_wave,
            [d.member for d in work],
            [None] * len(work) if owners is None else owners,
            acks,
            self.mgr.concurrency,
        )

        async def one(i: int, d: Delivery) -> None:
            # Its endpoint's slot first: waiting for it holds none of the process's. For
            # one request timeout at most (see the docstring): then it is handed back.
            res = None
            wait_s = None if d.target is None else d.target.timeout_ms / 1000
            async with self.mgr.slots.hold(d.target, wait_s) as got:
                if got:
                    async with sem.hold(d.target):
                        res = None if self._stopping else await self.attempt(d)
            if res is None:
                waves.add(i, d.member, self._handed_back(d), back=True, ok=False)
            else:
                waves.add(i, d.member, self.record(d, res, durable=True), back=False, ok=res.ok)

        kept = asyncio.Event()
        beat = asyncio.ensure_future(_keep(keep, waves, hold_ms / 3000, kept)) if keep else None
        writer: asyncio.Future[Any] = asyncio.ensure_future(waves.run())
        runs: asyncio.Future[Any] = asyncio.gather(*(one(i, d) for i, d in enumerate(work)))
        try:
            await asyncio.wait({writer, runs}, return_when=asyncio.FIRST_COMPLETED)
            if writer.done():
                writer.result()  # a record refused: raised (the rest is sent again)
            await runs
            await writer
        finally:
            for t in (runs, writer):
                t.cancel()
            runs.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved
            kept.set()
            if beat is not None and not (await asyncio.wait({beat}, timeout=2.0))[0]:
                beat.cancel()

    async def _write_wave(
        self, fields: list[Any], acks: list[str], back: list[Any], delivered: int
    ) -> None:
        """Record one wave; while Redis is unreachable, try again."""
        pause = 0.05
        while True:
            try:
                await self.write(fields, acks, back)
                self.delivered += delivered
                return
            except NET_ERRORS as exc:
                if not outage(exc):
                    raise  # refused (the Redis ACL): the loop says so and tries again
                await asyncio.sleep(pause)  # a stop cuts it after its wait (see stop)
                pause = min(pause * 2, 1.0)

    def _handed_back(self, d: Delivery) -> list[Any]:
        """The ``webhooks_done`` fields of a delivery a stop left unattempted."""
        last = d.history[-1] if d.history and isinstance(d.history[-1], list) else []
        status, error = [*last[2:4], None, None][:2]
        now = int(time.time() * 1000)
        return self._fields(d, "retry", d.attempts, now, orjson.dumps(d.history), status, error)

    # ------------------------------------------------------------------ retries
    async def _retry_loop(self) -> None:
        mgr = self.mgr
        try:  # the DLQ of an earlier release, listed per endpoint too (once per queue)
            await index_earlier(mgr)
        except Exception as exc:  # Redis away, a damaged wh:dlq: the next start again
            log.warning("webhook DLQ of queue %s not indexed: %s", mgr.queue.name, exc)

        async def step() -> tuple[float, int]:
            n = await self._paced(self.retry_once)
            idle = 0.0 if n >= mgr.batch else mgr.poll_ms / 1000 if n else await self.idle_wait()
            return idle, n

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
        if self._stopping:
            return 0
        claimed_rows = await self._script("webhooks_claim", (mgr.batch, mgr.lease_ms))
        if not claimed_rows:
            return 0
        for row in claimed_rows:
            if len(row) == 1:  # its record holds another type: moved to the DLQ
                _warn_damaged(
                    mgr.queue.keys.extra("wh:d:" + _text(row[0])),
                    "not attempted, kept in the webhook DLQ; delete the key to repair",
                )
        await mgr.registry.refresh()
        work = [claimed(mgr, r) for r in claimed_rows if len(r) > 1]
        client, key = await mgr.queue.client(), mgr.queue.keys.extra("wh:retry")

        async def keep(waves: Waves) -> None:  # the leases not yet recorded, pushed on
            # (never shortened, never re-added)
            until = int(time.time() * 1000) + mgr.lease_ms
            if members := waves.unrecorded():
                await client.zadd(key, dict.fromkeys(members, until), xx=True, gt=True)

        await self._attempt_and_write(work, (), keep if work else None, mgr.lease_ms)
        return len(claimed_rows)


async def _keep(
    keep: Callable[[Waves], Awaitable[Any]], waves: Waves, every_s: float, done: asyncio.Event
) -> None:
    while True:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(done.wait(), every_s)
            return
        with contextlib.suppress(Exception):  # Redis away: the record waits for it too
            async with waves.lock:  # never across a record (see Waves)
                await keep(waves)


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
