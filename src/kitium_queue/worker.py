"""The worker: claims jobs under leases, runs processors, records outcomes in batches.

How one worker runs (one asyncio task each, plus one task per running job):

1. **pump** — the only tasks that claim and acknowledge. Each round a pump sends one
   pipeline: ``finish`` for the outcomes collected since the last round (fenced by lease
   token) and ``claim`` for free slots. Claim also promotes due delayed jobs and recovers
   expired leases. With two or more slots there are two pump lanes, each claiming at
   most half the slots: while one waits for Redis, the other runs its jobs, so Python and
   Redis work at the same time (slots reserved by a claim in flight count as taken, so
   the lanes together never run more than ``concurrency`` jobs at once; the active set may
   also count finished jobs whose outcomes are on their way; batch processors and shared
   budgets keep one lane). When nothing could be claimed a lane sleeps until a
   completion, a wake-up from the waker, or the moment the next delayed job / lease
   deadline / limiter window is due (a local timer, so delays are precise to ~1 ms).
   After a claim that came back short, a lane with no outcomes to send does not claim
   again until a wake-up or that moment (``leases.Drained``): the waker's wait stands
   for it, and an idle worker spends two claims per job (the one riding on its wake-up,
   the one riding on the job's outcome), not one more from each lane.
2. **waker** — blocks on the queue's marker key (BZPOPMIN on a dedicated connection) while
   the pump is idle; producers add the marker, so a new job starts within ~1 ms without
   polling. The claim rides in the same exchange, right behind the BZPOPMIN: Redis runs
   it the moment the pop returns (a marker, or the timeout: the moment the next delayed
   job, lease deadline or limiter window is due), so a new job costs its idle worker one
   round trip, not two. The slots that claim asks for are reserved while it waits.
   (Workers sharing a slot budget, a client that is not a plain redis-py one, and a
   worker just back from an outage pop the marker alone and let a pump lane claim — before
   the lane's next idle wait, even when the pop landed while it was mid-round; a
   marker taken while such a worker has no free slot is put back for others.) A stop
   ends a wait a claim rides on through the worker's own wake key (``end_waker``): the
   claim runs and its jobs are handed back at once; any other wait is cancelled.
3. **renew** and 4. **sweep** — lease renewal (a run whose lease was lost is abandoned,
   its outcome never recorded) and the stalled-job sweep: ``leases.py``.
5. **presence** — a heartbeat record of the worker (id, processors, running jobs) with a
   TTL, so operators and ``explain`` see who is alive: ``presence.py``.

The parts, one job each: this module starts and stops, pumps and wakes;
``runner.Runner`` runs one job to an outcome; ``outcomes.Outcomes`` batches outcomes,
splits refused finish calls and reports recorded outcomes on the lifecycle hooks;
``leases.Leases`` holds the leases (renew, sweep, abandon); ``observe.Observer`` turns
the hooks into events, metrics, logs and the DLQ notification.

Outcomes are durable only once flushed (a few ms). A crash before the flush leaves the
job leased; it runs again after its lease expires (at-least-once, never lost, never two
recorded outcomes). ``job-completed`` and other outcome events fire after the flush.
One job's outcome never costs another job its own (``outcomes.py``).

Graceful stop: claim nothing more, let running jobs finish within ``shutdown_timeout``,
hand the rest back to the queue at once (no attempt spent; a plain ``def`` job still in
its thread is left leased instead: ``runends.py``), flush every outcome (``force()``, a
second SIGTERM/SIGINT, ends both waits), delete its presence record within 2 s (on a
Redis that took no flush, none: it expires; ``presence.py``). The stop runs in a task
of its own (``lifecycle.py``): a caller cancelled part-way leaves it to finish, and a
job of this worker that asks for it does not wait for itself.
Every loop survives Redis going away: it logs, backs off (50 ms → 1 s) and carries on
with what it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from . import lifecycle, rounds
from .aclcheck import WORKER_SCRIPTS, check_commands
from .barrier import UnconfirmedOutcomes
from .connection import TRANSIENT_ERRORS
from .features.batches import BatchProcessor
from .leader import OutageCauses
from .leases import Drained, Leases, SharedSlots
from .lifecycle import detached, end_tasks, inside, mark_inside, start_services, stop_services
from .limits import get_logger
from .options import MAX_CONCURRENCY, to_int
from .outcomes import Batch, Outcomes
from .presence import Presence
from .runends import grace_period, wait_event, wait_unless
from .runner import Runner
from .scripts import RawCall
from .wire import CLAIM_HEAD

if TYPE_CHECKING:
    from .hooks import HookBus
    from .leases import Run
    from .queue import JobQueue
    from .scripts import Call

__all__ = ["SharedSlots", "Worker"]

log = get_logger(__name__)

# Connection loss, and the CLUSTERDOWN / TRYAGAIN / READONLY replies of a failover.
_NET_ERRORS = TRANSIENT_ERRORS
_MAX_IDLE_S = 5.0
_NEVER_S = 3600.0  # Drained: nothing due at all (the waker's claims look every 5 s)
_MIN_BACKOFF_S = 0.05
_FLUSH_MIN_S = 5.0  # the least a stop offers held outcomes to Redis for (unless told)
# Positions in the claim reply (wire.CLAIM_HEAD).
_WAKE_IN, _TOKEN, _RECOVERED, _DEAD = (
    CLAIM_HEAD.index(f) for f in ("wake_in", "token", "recovered", "dead")
)
_JOBS = len(CLAIM_HEAD)


class Worker:
    """Consumes one queue in this process. Created by ``JobQueue.start()``.

    ``slots``: a ``SharedSlots`` budget this worker shares with others (optional).
    """

    def __init__(
        self,
        queue: JobQueue,
        *,
        concurrency: int | None = None,
        slots: SharedSlots | None = None,
    ) -> None:
        self.queue = queue
        # Every entry point (start(), run_worker(), the CLI's -c) goes through the same
        # check as worker={"concurrency": ...}: 0, negative, bool or text is refused.
        self.concurrency = (
            queue.worker_config.concurrency
            if concurrency is None
            else to_int(concurrency, "concurrency", minimum=1, maximum=MAX_CONCURRENCY)
        )
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.wake_key = queue.keys.extra(f"wake:{self.id}")  # its waker's own (end_waker)
        self.running = False
        self.stopped = asyncio.Event()
        #: The queue's lifecycle hooks (``queue.hooks``; the built-in ``Observer`` first).
        self.hooks: HookBus = queue.hooks
        self._stopping = False
        self._signal = asyncio.Event()
        self._want_block = asyncio.Event()
        # The waker popped a wake-up (without claiming) and no claim has been sent since:
        # the pump must claim before it waits again. A wake-up popped while the pump was
        # mid-round would otherwise be lost with the signal its next idle wait clears,
        # and the new jobs would wait for the next timer (up to _MAX_IDLE_S).
        self._woken = False
        # How long the waker may block (s): the shortest idle_for of the lanes waiting.
        self._block_s, self._claim_seen = _MAX_IDLE_S, 0.0  # (a claim reply's loop time)
        self._drained = Drained()  # whether a claim with nothing to send is worth it
        self.claim_cap = 1
        self._waker_claiming = 0  # of _claiming: the slots the waker's wait holds
        self._waker_task: asyncio.Task[None] | None = None
        self._stop_task: asyncio.Task[None] | None = None
        self._forced = asyncio.Event()  # force(): the stop waits no more
        self.stop_ends: float | None = None  # loop time a stop's grace ends (services too)
        self._client: Any = None
        self._bclient: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._pumps: list[asyncio.Task[None]] = []
        self._outage = False
        self._causes = OutageCauses(f"worker {self.id}", log, queue.connection, queue.name)
        self._claim_args: list[Any] = []
        self._claiming = 0  # slots asked for by the claims in flight
        self._fused = False  # the waker's claims ride on its wait (set when it starts)
        self._unconfirmed = UnconfirmedOutcomes(self.id, queue.name, queue.hooks)
        self._slots = slots
        self._presence: Presence | None = None
        self.leases = Leases(
            queue, self.id, self.hooks, wake=self._signal.set, on_outage=self.report_outage,
            slots=slots,
        )  # fmt: skip
        self.outcomes = Outcomes(
            queue, self.id, self.hooks, forget=self.leases.forget, wake=self._signal.set
        )
        self.runner = Runner(queue, self.concurrency, self.hooks, self.outcomes, self.leases)
        self._handoff = self.runner.handoff
        if slots is not None:
            slots.join(self)

    @property
    def processed(self) -> int:
        """Outcomes of this worker that Redis recorded."""
        return self.outcomes.recorded

    def slots_taken(self) -> int:
        """Running jobs plus slots reserved by claims in flight (``SharedSlots``)."""
        return len(self.leases.runs) + self._claiming

    def busy(self) -> bool:
        """Jobs running or being claimed (an idle worker's wake-up wait reserves slots)."""
        return bool(self.leases.runs) or self._claiming > self._waker_claiming

    @property
    def stopping(self) -> bool:
        """Whether a stop has begun (its presence record says so)."""
        return self._stopping

    def announce_soon(self) -> None:
        """Write this worker's presence record now, in a task (a processor registered
        while it runs is listed at once); a failure waits for the next heartbeat."""
        if self._presence is not None:
            self._presence.beat_soon()

    def presence(self, q: JobQueue) -> Presence:
        """This worker's heartbeat record (``presence.py``): who it is, what it runs."""
        if self._presence is None:
            needs = self.runner.handoff.note_needs
            self._presence = Presence(q.keys, self._client, self, q.processors, needs)
        return self._presence

    def wake(self) -> None:
        """Wake the pump to claim (a slot of a shared budget freed)."""
        self._drained.clear()
        self._signal.set()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        q, loop = lifecycle.startable(self), asyncio.get_running_loop()  # a worker starts once
        # Counted as running from now on: the queue refuses new processors (lifecycle.py).
        q.lifecycle.running.add(self)
        try:
            await self._start(q, loop)
        except BaseException:
            if not self.running:
                q.lifecycle.running.discard(self)
            raise

    async def _start(self, q: JobQueue, loop: asyncio.AbstractEventLoop) -> None:
        self._client = await q.client()
        await check_commands(self._client, q, WORKER_SCRIPTS)  # before any claim: aclcheck.py
        self._bclient = q.connection.client(blocking=True)
        self.runner.start(loop)
        lim = q.limiter
        self._claim_args = [
            0,  # N, filled per call
            q.lock_duration_ms,
            lim.max if lim else 0,
            lim.duration if lim else 0,
            q.settings.max_stalled_count,
            "1" if q.dlq.enabled else "0",
            self.id,
            max(1000, self.concurrency * 4),
        ]
        await self.presence(q).announce()  # listed alive (explain) once start() returns
        self.running = True
        # Pump lanes (module docstring). A batch processor's queue keeps one lane claiming
        # every free slot; workers sharing a budget (partitions) keep one for fair turns.
        batching = any(isinstance(fn, BatchProcessor) for fn in q.processors.values())
        single = batching or self._slots is not None
        lanes = 2 if self.concurrency >= 2 and not single else 1
        #: The most jobs one claim asks for (halved when a reply was too big: rounds.py).
        self.claim_cap = -(-self.concurrency // lanes)
        self._pumps = [
            loop.create_task(self._pump(), name=f"kq-pump{i}-{q.name}") for i in range(lanes)
        ]
        self._waker_task = loop.create_task(self._waker(), name=f"kq-waker-{q.name}")
        self._tasks = [
            *self._pumps,
            self._waker_task,
            loop.create_task(self.leases.renew(self._client), name=f"kq-renew-{q.name}"),
            loop.create_task(self.leases.sweep(lambda: self._stopping), name=f"kq-sweep-{q.name}"),
            loop.create_task(self.presence(q).run(announced=True), name=f"kq-presence-{q.name}"),
        ]
        await start_services(q, self.id)
        log.info(
            "worker %s started on queue %s (concurrency=%d)", self.id, q.name, self.concurrency
        )

    async def stop(
        self, timeout_ms: int | None = None, *, flush_timeout_ms: int | None = None
    ) -> None:
        """Graceful stop; see the module docstring. ``timeout_ms``: how long running jobs
        may take to finish (default ``shutdown_timeout``); ``flush_timeout_ms``: how long
        to keep offering the outcomes and hand-backs this worker holds to an unreachable
        Redis (those jobs run again after their leases expire; a caller that knows the
        server is gone, e.g. a region given up by a failover, passes a short one).
        Default: what is left of ``timeout_ms`` since the stop began, at least 5 s.
        ``force()`` (a second SIGTERM/SIGINT) ends both waits at once.

        The stop runs in a task of its own: a later call joins it (the first call's
        timeouts apply), and a caller cancelled while it waits leaves it to finish (a
        worker that is not running returns at once). Awaited from inside
        one of this worker's jobs (or a task started from one), it starts the stop and
        returns at once: the stop waits for that job, which cannot wait for the stop."""
        if self._stop_task is None:
            if not self.running:
                return
            self._stopping = True
            if self._waker_task is not None and not self._waker_claiming:
                self._waker_task.cancel()  # no claim rides on it (else: end_waker, below)
            self._signal.set()
            lifecycle.STOPPING.add(self)  # a second SIGTERM/SIGINT may force it
            self.announce_soon()  # its record says it stops: peers hand it no job
            name = f"kq-stop-{self.queue.name}"
            self._stop_task = detached(self._stop(timeout_ms, flush_timeout_ms), name)
        if not inside(self):
            await asyncio.shield(self._stop_task)

    def force(self) -> None:
        """End the waits of a stop under way: running jobs are handed back at once, and
        outcomes Redis has not taken yet are left (the log says how many)."""
        self._forced.set()

    async def _stop(self, timeout_ms: int | None, flush_timeout_ms: int | None) -> None:
        loop, forced = asyncio.get_running_loop(), self._forced
        try:
            grace = (self.queue.shutdown_timeout_ms if timeout_ms is None else timeout_ms) / 1000
            ends = self.stop_ends = loop.time() + grace  # the services' stop takes from it
            await lifecycle.end_waker(self)  # its claim's jobs handed back, never stranded
            await stop_services(self.queue, self.id)
            told = None if flush_timeout_ms is None else max(flush_timeout_ms, 0) / 1000
            self.leases.flush_s = _FLUSH_MIN_S if told is None else told  # see wind_down
            await grace_period(self.leases, max(0.0, ends - loop.time()), forced)
            self._signal.set()
            since = self.leases.cancelled_at or loop.time()  # wind_down waited from there
            flush_s = max(_FLUSH_MIN_S, ends - since) if told is None else told
            unflushed = bool(await wait_unless(self._pumps, since + flush_s - loop.time(), forced))
            cut = forced.is_set() or flush_s <= 0  # the caller chose not to wait: no outage
            self.outcomes.report_unflushed(unflushed, loop.time() - since, self._causes.down, cut)
            unanswered = unflushed and not cut  # no reply in flush_s
            await end_tasks(self._tasks)
            await self.leases.end_missing_check()
            await self.runner.close()
            if self._presence is not None:  # presence.py: within LEAVE_WAIT_S, or left
                await self._presence.leave(unanswered=unanswered)
            if self._bclient is not None and self.queue.connection.owns(self._bclient):
                with contextlib.suppress(Exception):  # closing a broken connection
                    await self._bclient.aclose()
        finally:
            # Whatever failed above, the worker counts as stopped: nothing waits for ever.
            for t in self._tasks:
                t.cancel()
            self.running = False
            self.queue.lifecycle.running.discard(self)
            lifecycle.STOPPING.discard(self)
            self.stopped.set()
        log.info("worker %s stopped (%d outcomes recorded)", self.id, self.processed)

    # ------------------------------------------------------------------ pump
    async def _pump(self) -> None:
        mark_inside(self)  # the jobs it launches, and their tasks, inherit the mark
        outcomes, leases = self.outcomes, self.leases
        backoff = _MIN_BACKOFF_S
        idle_for: float | None = None
        while True:
            free = 0 if self._stopping else min(self._free(), self.claim_cap)
            if not outcomes.pending():
                if self._stopping and not leases.runs and not self._waker_claiming:
                    return  # (a claim riding on the waker's wait may hand jobs back)
                if free <= 0 or idle_for is not None:
                    await self._idle(free, idle_for)
                    idle_for = None
                    continue
                drained = None if self._woken else self._drained.left()
                if drained is not None:
                    # The waker's wait stands for this lane until then (a wake-up, a due
                    # delayed job or lease deadline ends it): no claim that finds nothing.
                    await self._idle(free, drained)
                    continue
            batch = outcomes.take()
            calls, extending, n_ext = self._round_calls(batch, free)
            barrier = self.queue.write_barrier
            n_out = len(batch[1]) + len(batch[2])
            after = barrier.for_outcomes() if barrier is not None and n_out else None
            if after is not None:
                # Last, on the same connection: it follows every write of the round.
                calls.append(RawCall(after))
            sent = asyncio.get_running_loop().time()  # no lease of this round starts sooner
            try:
                replies = await self.queue.scripts.pipeline(self._client, calls)
                for r in replies:
                    if isinstance(r, _NET_ERRORS):
                        raise r
            except Exception as exc:
                # Keep the outcomes and give back the slots, then retry. Finish is fenced,
                # so re-sending an outcome Redis may already have recorded is refused,
                # never doubled.
                self._unreserve(free, 0)
                outcomes.give_back(batch)
                if not await rounds.reply_too_big(self, exc, free, self._client):
                    backoff = await rounds.round_failed(self, exc, backoff)
                continue
            if self._outage:
                self._outage = False
                log.warning("worker %s: %s; resuming", self.id, self._causes.back())
            if after is not None and barrier is not None:
                self._unconfirmed.judge(barrier, after, replies.pop(), n_out)
            if n_ext:
                leases.after_extend(replies[:n_ext], extending, sent)
            refused = outcomes.settle(replies[n_ext : len(replies) - (free > 0)], batch)
            if refused is None:
                backoff = _MIN_BACKOFF_S
            claim_failed = False
            if free > 0:
                idle_for, claim_failed = self._claimed(replies[-1], free, idle_for, sent)
            if outcomes.gone:  # jobs gone after an outage: one read says why (leases.py)
                await leases.report_gone(self._client, outcomes.gone)
            if refused is not None:
                backoff = await rounds.refused(self, refused, backoff)
                continue
            if claim_failed:
                continue
            # Let completions that are ready run before the next round.
            await asyncio.sleep(0)

    async def _idle(self, free: int, idle_for: float | None) -> None:
        """Wait for a completion, a wake-up or ``idle_for`` seconds (None: no limit)."""
        if free > 0 and self._woken:
            return  # a wake-up arrived since the last claim was sent: claim first
        self._signal.clear()
        if free > 0:
            block = _MAX_IDLE_S if idle_for is None else idle_for
            if not self._want_block.is_set() or block < self._block_s:
                self._block_s = block
            self._want_block.set()
        elif self._slots is not None:
            self._slots.wait(self)
        down = self._handoff.down_left() if free <= 0 else 0.0
        if down:
            idle_for = down if idle_for is None else min(idle_for, down)
        await wait_event(self._signal, idle_for)  # runends.py: never swallows a cancel

    def _round_calls(self, batch: Batch, free: int) -> tuple[list[Call], dict[str, Run], int]:
        """The calls of one round: lease renewals after an outage, the finish calls of
        ``batch``, a claim for ``free`` slots; plus the runs renewed and how many calls
        renew."""
        # After an outage, renew our own leases first in the same pipeline, so the claim
        # below does not recover (and re-run) jobs that are still running here.
        ext, extending = self.leases.extend_calls() if self._outage else ([], {})
        calls: list[Call] = [*ext]
        n_ext = len(calls)
        calls += self.outcomes.calls(batch)
        if free > 0:
            self._woken = False  # this claim sees every job a wake-up announced so far
            claim_args = self._claim_args.copy()
            claim_args[0] = free
            calls.append(self.queue.call("claim", claim_args))
            self._claiming += free
        return calls, extending, n_ext

    def _held(self) -> int:  # outcomes this worker holds that Redis has not recorded yet
        return self.outcomes.held()

    def _free(self) -> int:
        if self._handoff.down_until and self._handoff.down_left():
            return 0  # it lacks a feature every job needs, which a live worker has
        free = self.concurrency - len(self.leases.runs) - self._claiming
        if self._slots is not None:
            free = min(free, self._slots.free())
        return free

    def _unreserve(self, asked: int, got: int) -> None:
        # A claim that asked for ``asked`` slots came back with ``got`` jobs.
        if asked <= 0:
            return
        self._claiming -= asked
        if got < asked and self._slots is not None:
            self._slots.released()

    def report_outage(self, exc: BaseException) -> None:
        """An outage: said once (with its causes), and the queue_error hook."""
        self._drained.clear()  # what the last claim saw may no longer hold
        first, self._outage = not self._outage, True
        self._causes.report(exc, first, self.outcomes.held(exc))  # unreachable: marked
        if first and self.hooks.queue_error:
            self.hooks.emit_queue_error(self.queue.name, exc)

    # ------------------------------------------------------------------ claimed jobs
    def _claimed(
        self, reply: Any, asked: int, idle_for: float | None, sent: float
    ) -> tuple[float | None, bool]:
        """The reply of a claim for ``asked`` slots sent at loop time ``sent``: how long the
        lane may sleep when it next idles (``idle_for`` if it got jobs); whether it failed."""
        q = self.queue
        if isinstance(reply, Exception):
            if not q.ctx.damaged.failed(reply, self._client, q.keys.all):  # at a bounded rate
                log.error("worker %s: claim failed: %s", self.id, q.connection.redact(reply))
            self._unreserve(asked, 0)
            self._drained.clear()  # the retry after 1 s claims, whatever came before
            return 1.0, True
        q.ctx.damaged.ok(self._client, q.keys.all)
        got = self._after_claim(reply, sent)
        self._unreserve(asked, got)
        wake_in = int(reply[_WAKE_IN])
        wait_s = _MAX_IDLE_S if wake_in < 0 else min(_MAX_IDLE_S, wake_in / 1000)
        # Short: nothing to find until the next delayed job / lease deadline / limiter
        # window (-1: none; at most _MAX_IDLE_S). Nothing got: the lane sleeps until then.
        # None at all: the waker's wait (its claim runs when it times out) stands for the
        # lanes until a wake-up. A claim sent before another's reply was handled may have
        # run first: it must not undo that one's news (a delayed job's wake-up, Drained).
        none, older = wake_in < 0 and self._fused and not self._outage, sent < self._claim_seen
        self._drained.after_claim(got < asked, _NEVER_S if none else wait_s, older)
        self._claim_seen = asyncio.get_running_loop().time()
        return ((self._drained.left() if older else wait_s) if got == 0 else idle_for), False

    def _after_claim(self, reply: list[Any], sent: float) -> int:
        back, dead = reply[_RECOVERED], reply[_DEAD]
        if back or dead:
            self.leases.recovered(back, dead)
        if dead and self.queue.ctx.missing.due():
            # Some of them may have lost their record (evicted): the queue's count says.
            self.leases.check_missing(self._client)
        jobs = reply[_JOBS:]
        if not jobs:
            return 0
        token, self.runner.claim_sent = reply[_TOKEN], sent  # the start check (leases.py)
        token = token.decode() if isinstance(token, bytes) else str(token)
        for entry in jobs:
            try:
                self.runner.launch(entry, token, self._stopping)
            except Exception:
                # A record damaged in a way the claim could not clean up: never let it
                # stop the pump. The job stays leased, stalls, and is dead-lettered after
                # max_stalled_count claims like any job that keeps losing its worker.
                log.exception(
                    "worker %s: cannot start job %r of queue %s (damaged job record?)",
                    self.id, entry[0] if entry else None, self.queue.name,  # CLAIM_JOB: id
                )  # fmt: skip
        return len(jobs)

    # ------------------------------------------------------------------ waker
    async def _waker(self) -> None:
        mark_inside(self)  # it launches jobs too (the claim riding on its wait)
        q = self.queue
        backoff = _MIN_BACKOFF_S
        fusable = self._fused = self._slots is None and q.scripts.fusable(self._bclient)
        while not self._stopping:
            await self._want_block.wait()
            asked = 0
            if fusable and not self._outage and not self._stopping:
                asked = min(self._free(), self.claim_cap)
            try:
                if asked > 0:
                    popped_error = await self._wait_and_claim(asked)
                    asked = 0  # the claim's reply gave the slots back
                    if popped_error is not None:
                        raise popped_error
                else:
                    popped = await self._bclient.bzpopmin(q.keys.marker, timeout=_MAX_IDLE_S)
                    if popped and (self._stopping or self._free() <= 0):
                        # Not ours to use: hand the wake-up on to another worker.
                        with contextlib.suppress(*_NET_ERRORS):
                            await self._client.zadd(q.keys.marker, {"0": 0})
                    elif popped:
                        self._woken = True
            except asyncio.CancelledError:
                self._unreserve(asked, 0)
                raise
            except _NET_ERRORS as exc:
                self._unreserve(asked, 0)
                await rounds.wait_failed(self, exc, asked)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                self._signal.set()
                continue
            except ResponseError as exc:
                # e.g. UNBLOCKED: the primary was demoted while we waited (failover).
                self._unreserve(asked, 0)
                if not q.ctx.damaged.failed(exc, self._client, q.keys.all):  # the marker
                    log.warning(
                        "worker %s: wake-up wait interrupted: %s", self.id, q.connection.redact(exc)
                    )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                self._signal.set()
                continue
            except Exception:
                # Never let the wake-up loop die: without it an idle worker would only
                # look for work on its own timers.
                self._unreserve(asked, 0)
                log.exception("worker %s: wake-up wait failed; retrying", self.id)
                await asyncio.sleep(1.0)
                self._signal.set()
                continue
            backoff = _MIN_BACKOFF_S
            self._want_block.clear()
            self._signal.set()

    async def _wait_and_claim(self, asked: int) -> Exception | None:
        """Wait for the marker and claim ``asked`` slots in one exchange (module docstring,
        waker), the slots reserved until its reply; the wait's error, if any (claim ran)."""
        q = self.queue
        claim_args = self._claim_args.copy()
        claim_args[0] = asked
        # Redis reads the timeout in seconds (decimals allowed); 0 would block for ever.
        timeout = b"%.3f" % max(0.001, min(self._block_s, _MAX_IDLE_S))
        self._claiming += asked
        self._waker_claiming = asked
        sent = asyncio.get_running_loop().time()  # (+ the timeout when the wait timed out)
        try:
            popped, reply = await q.scripts.after_block(
                self._bclient,
                ("BZPOPMIN", q.keys.marker, self.wake_key, timeout),
                q.call("claim", claim_args),
            )
        finally:
            self._waker_claiming = 0
        if isinstance(reply, _NET_ERRORS):
            raise reply
        idle_for, _ = self._claimed(reply, asked, None, sent + (0 if popped else float(timeout)))
        self._block_s = _MAX_IDLE_S if idle_for is None else idle_for
        return popped if isinstance(popped, Exception) else None
