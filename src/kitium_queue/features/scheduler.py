"""The leaderless scheduler: a service every worker runs; each tick is enqueued once.

How it works (one asyncio task per worker, plus a pub/sub listener):

1. Read what is due (``schedule_due.lua``): the schedules whose next tick has come, their
   definitions, and the Redis clock.
2. For each, compute in Python (croniter / interval arithmetic) which ticks to enqueue
   now — the misfire policy decides what happens to ticks missed during downtime — with
   each run's jittered start time, and the schedule's next tick.
3. Claim them with ``schedule_fire.lua``: a compare-and-set on the schedule's next tick
   and version, and the enqueue of one job per tick (id ``sched:<id>:<tick ms>``) in the
   same atomic step. When N schedulers race for a tick, one call wins and the others see
   ``stale`` and re-read. A scheduler that dies at any point leaves either nothing or a
   complete claim behind, so the others carry on.
4. Sleep until the next tick is due (a local timer set from the Redis clock, so no
   polling and no clock agreement needed), or until a schedule is created, changed or
   removed (pub/sub message on ``<prefix>schedules:changed``).

Misfires: a tick handled more than ``misfire_grace_ms`` after its time is *missed*
(workers were down or stalled). ``skip`` drops missed ticks, ``run_once`` (default)
enqueues one run for them (the latest), ``catch_up`` enqueues up to N of them (the latest
N). Ticks within the grace period always run.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import ConfigurationError, FencedError
from ..events import EventData, declare_events
from ..hooks import FeatureEvent
from ..leader import REFUSED_RETRY_S, Refusals
from ..limits import clip, get_logger, printable
from ..options import shown
from ..pools import drop_connections
from ..scripts import ScriptCall
from ..serverclock import execute_with_clock
from .schedule_records import timing_problems
from .schedules import MIN_MISFIRE_GRACE_MS, timing_of

if TYPE_CHECKING:
    from ..queue import JobQueue

__all__ = ["FEATURE", "LAG_EVENT", "MAX_TICKS_PER_FIRE", "Scheduler", "overdue_ms", "plan_ticks"]

#: The feature name of the scheduler's feature events.
FEATURE = "schedules"
#: The feature event of every tick enqueued: ``fields`` schedule_id, job_id, tick (ms)
#: and lag_ms (how long after its tick the scheduler enqueued it; jitter not counted).
LAG_EVENT = "schedule-lag"
declare_events(FEATURE, "schedule-fired", LAG_EVENT)  # queue.on knows them

log = get_logger(__name__)

_NET_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError)
_MAX_IDLE_S = 30.0
_NO_FEED_IDLE_S = 1.0
_BATCH = 100
MAX_TICKS_PER_FIRE = 1000
_BROKEN_RETRY_MS = 60_000
# A cron schedule due longer ago than this is planned in a thread (run_due).
_LATE_MS = 1000
# Most damaged schedules a round reads past (beyond _BATCH) to reach sound ones.
_MAX_BROKEN_ROOM = 1000


def plan_ticks(
    defn: Mapping[str, Any], due: int, now: int, rng: random.Random
) -> tuple[list[tuple[int, int]], int | None]:
    """Ticks of one due schedule to enqueue at ``now``, and its next tick.

    Returns ``([(tick, start), ...], next_tick)`` in tick order; ``start`` is the tick plus
    its jitter, capped below the following tick. ``next_tick`` is None when the schedule
    has ended (end date or no further match).
    """
    problems = timing_problems(defn)
    if problems:
        raise ConfigurationError(
            f"its record is damaged ({clip(printable('; '.join(problems)), 300)}): remove "
            "the schedule and declare it again"
        )
    timing = timing_of(defn)
    # A grace stored below the floor (an earlier release took 0) would drop ticks that a
    # scheduler handles a few ms late: with misfire='skip', all of them.
    grace = max(int(defn.get("misfire_grace_ms") or 0), MIN_MISFIRE_GRACE_MS)
    on_time: list[int] = []
    t = timing.prev_at_or_before(now)
    while t is not None and t >= due and now - t <= grace and len(on_time) < MAX_TICKS_PER_FIRE:
        on_time.append(t)
        t = timing.prev_at_or_before(t - 1)
    missed: list[int] = []
    if t is not None and t >= due:  # t: the latest missed tick
        policy = defn.get("misfire", "run_once")
        if policy == "run_once":
            missed.append(t)
        elif policy == "catch_up":
            limit = min(int(defn.get("catch_up_limit") or 1), MAX_TICKS_PER_FIRE)
            while t is not None and t >= due and len(missed) < limit:
                missed.append(t)
                t = timing.prev_at_or_before(t - 1)
    # At most MAX_TICKS_PER_FIRE in all (the latest): schedule_fire refuses more, and a
    # fast schedule with a long grace would otherwise be refused on every round.
    ticks = sorted(set(missed + on_time))[-MAX_TICKS_PER_FIRE:]
    nxt = timing.next_after(now)
    jitter = int(defn.get("jitter_ms") or 0)
    out: list[tuple[int, int]] = []
    for i, tick in enumerate(ticks):
        start = tick
        if jitter > 0:
            following = ticks[i + 1] if i + 1 < len(ticks) else nxt
            cap = jitter if following is None else min(jitter, following - tick - 1)
            if cap > 0:
                start += rng.randint(0, cap)
        out.append((tick, start))
    return out, nxt


def _due(raw: Any) -> int:
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise ConfigurationError(
            f"its record is damaged (due is not a time: {shown(raw)}): remove the schedule "
            "and declare it again"
        ) from None


class Scheduler:
    """Fires the queue's schedules; started and stopped with each worker.

    Any number may run at once (one per worker process); see the module docstring.
    ``run_due(now_ms)`` does one round and is usable on its own (tests, cron-less hosts).
    """

    name = "scheduler"
    #: Its subscription to schedule changes holds a connection of its own.
    connections = 1

    def __init__(self, *, rng: random.Random | None = None) -> None:
        self.queue: JobQueue | None = None
        self.rng = rng or random.Random()
        self.fired = 0
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._broken: dict[bytes, int] = {}
        self._outage = False
        self._stopping = False
        self._feed = True  # the change feed (pub/sub) is up; False: poll for changes
        #: The event loop and client of the subscription under way (``forget_loops``).
        self._subscriber: tuple[asyncio.AbstractEventLoop, Any] | None = None

    # ------------------------------------------------------------------ service
    async def start(self, queue: JobQueue) -> None:
        self.queue = queue
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._stopping = False
        self._tasks = [
            loop.create_task(self._listen(), name=f"kq-sched-listen-{queue.name}"),
            loop.create_task(self._loop(), name=f"kq-scheduler-{queue.name}"),
        ]

    async def stop(self) -> None:
        self._stopping = True
        pending = set(self._tasks)
        # Cancel until done: a client library may swallow one cancellation (seen with
        # pub/sub subscribe), and a stop must never hang the worker's shutdown.
        for _ in range(20):
            if not pending:
                break
            for t in pending:
                t.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.25)
        if pending:
            log.warning(
                "scheduler of queue %s: %d task(s) did not stop", self._q.name, len(pending)
            )
        self._tasks = []

    def forget_loops(self, loops: set[asyncio.AbstractEventLoop]) -> None:
        """Its worker's loop ended without ``close()`` (``leftover.py``): the sockets of
        the subscription's client of that loop are closed here (its teardown never runs:
        the connection stayed open, subscribed, until the process ended)."""
        held = self._subscriber
        if held is not None and held[0] in loops:
            self._subscriber = None
            drop_connections(held[1])

    # ------------------------------------------------------------------ loops
    async def _loop(self) -> None:
        backoff = 0.05
        loop = asyncio.get_running_loop()
        refusals = Refusals(f"scheduler of queue {self._q.name}", log)  # by the Redis ACL
        while not self._stopping:
            self._wake.clear()
            try:
                wait_ms = await self.run_due()
            except Exception as exc:
                if refusals.failed(exc):  # by the Redis ACL (said once): no outage
                    await asyncio.sleep(REFUSED_RETRY_S)
                    continue
                if isinstance(exc, _NET_ERRORS):
                    if not self._outage:
                        self._outage = True
                        log.warning(
                            "scheduler of queue %s: Redis unreachable (%s); retrying",
                            self._q.name,
                            self._q.connection.redact(exc),
                        )
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 1.0)
                    continue
                # Redis refusing writes, a damaged key of the queue: at a bounded rate.
                if not self._q.ctx.damaged.failed(exc):
                    log.exception(
                        "scheduler of queue %s: round failed; retrying in 1 s", self._q.name
                    )
                wait_ms = 1000
            else:
                refusals.ok()
            if self._outage:
                self._outage = False
                log.warning("scheduler of queue %s: Redis is reachable again", self._q.name)
            backoff = 0.05
            idle = _MAX_IDLE_S if self._feed else _NO_FEED_IDLE_S
            timeout = idle if wait_ms is None else min(wait_ms / 1000, idle)
            if timeout > 0:
                # A timer that sets the event, not wait_for: cancellation-safe, and the
                # loop wakes at the tick (asyncio timers are ~1 ms precise).
                timer = loop.call_later(timeout, self._wake.set)
                try:
                    await self._wake.wait()
                finally:
                    timer.cancel()

    async def _listen(self) -> None:
        q = self._q
        backoff = 0.05
        while not self._stopping:
            client = q.connection.client(blocking=True)
            if q.connection.owns(client):
                self._subscriber = (asyncio.get_running_loop(), client)
            pubsub = None
            try:
                if hasattr(client, "initialize"):
                    await client.initialize()  # a cluster client must learn its slots first
                pubsub = client.pubsub()
                await pubsub.subscribe(q.keys.schedules_channel)
                backoff = 0.05
                self._feed = True
                self._wake.set()  # changes may have happened while not subscribed
                while True:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                    if msg is not None:
                        self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._feed:
                    log.info(
                        "scheduler of queue %s: change feed lost (%s: %s); checking for "
                        "schedule changes every %.0f s until it is back",
                        q.name,
                        type(exc).__name__,
                        q.connection.redact(exc),
                        _NO_FEED_IDLE_S,
                    )
                self._feed = False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                if self._subscriber is not None and self._subscriber[1] is client:
                    self._subscriber = None
                try:
                    if pubsub is not None:
                        await pubsub.aclose()
                    if q.connection.owns(client):
                        await client.aclose()
                except Exception:  # pragma: no cover - closing a broken connection
                    pass

    @property
    def _q(self) -> JobQueue:
        assert self.queue is not None, "scheduler not started"
        return self.queue

    # ------------------------------------------------------------------ one round
    async def run_due(self, now_ms: int | None = None) -> int | None:
        """Fire every due schedule once. Returns ms until the next tick (None: none).

        ``now_ms`` replaces the Redis clock (tests); by default the Redis server's time
        is used for both the due check and the tick computation.
        """
        q = self._q
        client = await q.client()
        head = list(q.argv_head())
        if now_ms is not None:
            head[1] = str(now_ms)
        # Room for the damaged schedules this scheduler skips as well: they stay due (so
        # they are reported until removed) and would otherwise fill every batch ahead of
        # sound schedules due later.
        batch = _BATCH + min(len(self._broken), _MAX_BROKEN_ROOM)
        reply = await q.scripts.call(client, "schedule_due", q.keys.all, (*head, batch))
        now, after = int(reply[0]), int(reply[1])
        self._broken = {m: until for m, until in self._broken.items() if until > now}
        calls: list[ScriptCall] = []
        plans: list[tuple[str, dict[str, Any]]] = []
        for i in range(2, len(reply), 5):
            member = bytes(reply[i])
            due_raw, version, raw_def = reply[i + 1], reply[i + 2], reply[i + 3]
            if self._broken.get(member, 0) > now:
                continue
            try:
                sid = member.decode()
            except UnicodeDecodeError:
                sid = member.decode("utf-8", "backslashreplace")
            try:
                if sid.encode() != member:
                    raise ConfigurationError("its id is not valid UTF-8: remove it")
                if not version:  # schedule_due.lua: a key of another type, no version
                    raise ConfigurationError(
                        "its record is damaged (its key holds another type, or its hash "
                        "has no version): remove the schedule and declare it again"
                    )
                try:
                    defn = orjson.loads(raw_def)
                except orjson.JSONDecodeError:
                    defn = None
                due = _due(due_raw)
                if isinstance(defn, dict) and defn.get("cron") and now - due > _LATE_MS:
                    # Late cron ticks (after an outage) are walked back one croniter call
                    # each, ~1 ms: 1,000 of them (catch_up) would hold the worker's event
                    # loop, its lease renewals included, for a second per schedule.
                    ticks, nxt = await asyncio.to_thread(plan_ticks, defn, due, now, self.rng)
                else:
                    ticks, nxt = plan_ticks(defn, due, now, self.rng)
                if nxt is not None and nxt <= due:
                    raise RuntimeError(f"next tick {nxt} is not after the due tick {due}")
            except ConfigurationError as exc:
                log.error(
                    "queue %s: schedule %s does not fire: %s (looking again in %d s)",
                    q.name,
                    shown(sid),
                    exc,
                    _BROKEN_RETRY_MS // 1000,
                )
                self._broken[member] = now + _BROKEN_RETRY_MS
                continue
            except Exception:
                log.exception(
                    "queue %s: cannot compute the ticks of schedule %s; skipping it for %d s",
                    q.name,
                    shown(sid),
                    _BROKEN_RETRY_MS // 1000,
                )
                self._broken[member] = now + _BROKEN_RETRY_MS
                continue
            args: list[Any] = [
                sid,
                due_raw,
                version,
                "" if nxt is None else nxt,
                "1" if defn.get("overlap") == "skip" else "0",
            ]
            for tick, start in ticks:
                args.append(tick)
                args.append(start)
            calls.append(ScriptCall("schedule_fire", q.keys.all, (*head, *args)))
            plans.append((sid, defn))
        wait: int | None = None if after < 0 else max(0, after - now)
        if not calls:
            # A full batch of schedules that are all damaged says "more due now": there is
            # nothing this round could fire, so look again in a second, not at once.
            return None if wait is None else (max(wait, 1000) if after <= now else wait)
        replies = await q.scripts.pipeline(client, calls)
        for (sid, defn), r in zip(plans, replies, strict=True):
            if isinstance(r, _NET_ERRORS):
                raise r
            if isinstance(r, FencedError):
                # The queue takes no new work here (a fence, e.g. a region that is not the
                # primary): nothing was written; look again in a second.
                log.debug("queue %s: schedule %s not fired: %s", q.name, printable(sid), r)
                wait = 1000 if wait is None else min(wait, 1000)
                continue
            if isinstance(r, Exception):
                # Nothing was written: it is still due. Look again in a second (else an
                # only schedule waited for the idle timeout); a refusal of writes or a
                # damaged key is reported at a bounded rate.
                if not q.ctx.damaged.failed(r):
                    log.error("queue %s: firing schedule %s failed: %s", q.name, printable(sid), r)
                wait = 1000 if wait is None else min(wait, 1000)
                continue
            status = r[0]
            if status == b"stale":
                wait = 0  # another scheduler moved it: re-read at once
                continue
            fired = [j.decode() for j in r[1]]
            new_next = r[3].decode() if isinstance(r[3], bytes) else str(r[3])
            if new_next:
                n = int(new_next) - now
                wait = n if wait is None else min(wait, n)
            refused = int(r[4]) if len(r) > 5 else 0
            self._note_fired(sid, defn, fired, int(r[2]), now, refused)
            if refused:
                # A feature refused the tick's job (a full group, a quota): that run is
                # lost, not retried (docs/scheduling.md, Refused runs).
                log.warning(
                    "queue %s: schedule %s: %d tick(s) refused, their runs are not enqueued: %s",
                    q.name,
                    printable(sid),
                    refused,
                    clip(printable(bytes(r[5]).decode("utf-8", "replace")), 200),
                )
        return None if wait is None else max(0, wait)

    def _note_fired(
        self,
        sid: str,
        defn: Mapping[str, Any],
        fired: list[str],
        skipped: int,
        now: int,
        refused: int = 0,
    ) -> None:
        q = self._q
        self.fired += len(fired)
        for jid in fired:
            log.debug(
                "queue %s: schedule %s enqueued job %s", q.name, printable(sid), printable(jid)
            )
            if q.emitter.wants("schedule-fired"):
                q.emitter.emit(
                    EventData(
                        "schedule-fired",
                        q.name,
                        jid,
                        extra={"schedule_id": sid, "tick": int(jid.rsplit(":", 1)[1])},
                    )
                )
        if fired and q.hooks.feature_event:
            for jid in fired:
                tick = int(jid.rsplit(":", 1)[1])
                fields = {
                    "schedule_id": sid,
                    "job_id": jid,
                    "tick": str(tick),
                    "lag_ms": str(max(0, now - tick)),
                }
                q.hooks.emit_feature_event(
                    FeatureEvent(
                        queue=q.name,
                        feature=FEATURE,
                        name=LAG_EVENT,
                        subject=sid,
                        fields=fields,
                        event_id=jid,
                        at_ms=now,
                    )
                )
        skipped -= refused  # logged by run_due, counted apart
        if skipped:
            log.info(
                "queue %s: schedule %s skipped %d tick(s): its previous run is still "
                "going (overlap='skip')",
                q.name,
                printable(sid),
                skipped,
            )
        if q.metrics is not None:
            tags = {"queue": q.name, "job_name": str(defn.get("job_name", ""))}
            if fired:
                q.metrics.increment("schedules.fired", len(fired), tags)
            if skipped:
                q.metrics.increment("schedules.skipped", skipped, tags)
            if refused:
                q.metrics.increment("schedules.refused", refused, tags)


async def overdue_ms(queue: JobQueue) -> int | None:
    """How long ago the earliest tick of the queue's active schedules was due, by the
    Redis clock (0 while none is late); None when no schedule is active. A value that
    keeps growing means no scheduler is firing (no worker runs one)."""
    client = await queue.client()
    pipe = client.pipeline(transaction=False)
    pipe.zrange(queue.keys.schedules_due, 0, 0, withscores=True)
    (first,), (sec, usec) = await execute_with_clock(
        client, pipe, cluster=queue.connection.is_cluster
    )
    if not first:
        return None
    now = int(sec) * 1000 + int(usec) // 1000
    return max(0, now - int(first[0][1]))
