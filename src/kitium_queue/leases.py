"""The leases one worker holds: renewal, abandonment, the stalled-job sweep, shared slots.

* **renew** — every ``lock_renew_time`` the leases of all running jobs are renewed in one
  ``extend`` call per 500 jobs. A job whose lease was lost (this worker was frozen or cut
  off longer than ``lock_duration`` and another worker took it) is *abandoned*: its task
  is cancelled and its outcome is never recorded (fencing). A job cancelled with
  ``cancel_job()`` while it runs here has its task cancelled. Meanwhile the event loop
  is watched (``loopwatch.py``): one blocked past ``worker.loop_block_warn`` is said
  (what blocked it) and counted (``loopwatch``).
* **sweep** — every ``max_stalled_interval`` expired leases of dead workers are requeued
  (or dead-lettered after ``max_stalled_count`` stalls) even when every slot is busy.
  The claim does the same step; both report what they recovered with ``recovered``
  (and ``check_missing`` reads whether dead-lettered ones had lost their record).
* **start check** — a claimed job starts only while its lease, by this process's
  monotonic clock from the moment the claim (or the latest renewal) was *sent*, has at
  least ``min(1 s, lease / 4)`` left (``start_window``, ``Run.start_by``). A job past
  that (its process was stopped or frozen between the claim and the start) renews the
  lease first, fenced by its token (``Leases.confirm``): a job whose lease was lost
  meanwhile (recovered, run elsewhere) is dropped unstarted, with nothing written; one
  still leased here starts. Counted in ``unstarted`` / ``renewed_late``, one warning per
  burst.
* **gone after an outage** — jobs whose held outcomes found them gone once Redis answered
  again are said in one line, after one read tells whether Redis lost its data
  (``report_gone``).
* ``SharedSlots`` — a concurrency budget shared by several workers of one process.

Log lines keep the worker's logger name (``kitium_queue.worker``): it is what users
configure and filter on, and splitting the worker must not change it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from .connection import TRANSIENT_ERRORS
from .limits import get_logger, printable
from .loopwatch import LoopWatch
from .outcomes import DATA_LOST, safe_name
from .runends import FAILING_CANCELS, wait_unless
from .scripts import RawCall

if TYPE_CHECKING:
    from .hooks import HookBus
    from .job import Job
    from .options import Policy
    from .queue import JobQueue
    from .scripts import ScriptCall

__all__ = [
    "EXTEND_CHUNK",
    "Drained",
    "Leases",
    "Run",
    "SharedSlots",
    "SlotMember",
    "start_window",
]

log = get_logger("kitium_queue.worker")

#: Leases renewed by one ``extend`` call.
EXTEND_CHUNK = 500
#: Expired leases one sweep recovers at most.
_SWEEP_LIMIT = 1000
#: Unstarted jobs dropped within this many seconds of the first share one warning.
_LATE_LOG_S = 0.2
#: Renewals ``Leases.confirm`` tries before it gives up on starting a job.
_CONFIRM_TRIES = 3
#: Job ids the line about jobs found gone after an outage names (the rest are counted).
_GONE_SHOWN = 10


def start_window(lock_ms: int) -> float:
    """Seconds from the moment a claim or renewal of a lease of ``lock_ms`` was sent
    within which its job may start without asking Redis: the lease less a safety margin
    of ``min(1 s, lease / 4)``."""
    lock_s = lock_ms / 1000
    return lock_s - min(1.0, lock_s / 4)


class Run:
    """One run of a job under a lease this worker holds, and the task running it.

    Attributes:
        job: the ``Job`` handed to the processor.
        token: the fencing token of the lease.
        policy: the job's retry/timeout/retention policy.
        task: the task running the job (None until launched).
        deadline: loop time at which the run times out (None: no timeout pending).
        reason: why the task was cancelled (``timeout``, ``cancelled``, ``shutdown``).
        abandoned: the lease was lost; the outcome of this run is never recorded.
        started: loop time at which the processor was called (0.0 before).
        start_by: loop time after which the job may not start before its lease is
            renewed (``Leases.confirm``; inf: no limit known).
    """

    __slots__ = (
        "abandoned",
        "deadline",
        "job",
        "policy",
        "reason",
        "start_by",
        "started",
        "task",
        "token",
    )

    def __init__(self, job: Job, token: str, policy: Policy) -> None:
        self.job = job
        self.token = token
        self.policy = policy
        self.task: asyncio.Task[None] | None = None
        self.deadline: float | None = None
        self.reason: str | None = None
        self.abandoned = False
        self.started = 0.0
        self.start_by = float("inf")


class SlotMember(Protocol):
    """What ``SharedSlots`` needs of a worker sharing the budget."""

    def slots_taken(self) -> int:
        """Running jobs plus slots reserved by claims in flight."""

    def wake(self) -> None:
        """Wake the worker's pump (a slot freed)."""


class Drained:
    """What a worker's last claim said about its queue: when it came back short (the
    queue had no more for this worker) and nothing was announced since, a claim with no
    outcomes to ride along would find nothing until the claim's ``wake_in`` (the next
    delayed job, lease deadline or limiter window). The worker's lanes then wait on its
    wake-up wait instead of sending one: at low rates that is one claim script less per
    job (bench/RESULTS.md, "Redis time per job")."""

    __slots__ = ("_until",)

    def __init__(self) -> None:
        self._until: float | None = None

    def after_claim(self, short: bool, wait_s: float, older: bool = False) -> None:
        """A claim came back: when ``short`` (fewer jobs than asked), nothing more to find
        for ``wait_s`` seconds; else more may wait. ``older``: sent before another claim's
        reply was handled, it may have run first: the sooner of the two holds."""
        until = asyncio.get_running_loop().time() + wait_s if short else None
        if older:  # (None: claim now)
            until = None if until is None or self._until is None else min(until, self._until)
        self._until = until

    def clear(self) -> None:
        """Claim again: a freed slot of a shared budget, a failed claim, an outage."""
        self._until = None

    def left(self) -> float | None:
        """Seconds for which a claim would find nothing, or None: claim now."""
        if self._until is None:
            return None
        left = self._until - asyncio.get_running_loop().time()
        if left <= 0:
            self._until = None
            return None
        return left


class SharedSlots:
    """A concurrency budget shared by several workers of one process.

    Used when one process consumes several queues as one (the partitions of a
    ``PartitionedQueue``): each worker still claims only for free slots, but free slots
    are counted over the whole group (running jobs plus claims in flight), so the group
    never runs more than ``capacity`` jobs. A worker that finds the budget spent queues up
    and is woken, in arrival order, when a slot frees: no member is starved.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = int(capacity)
        self.workers: list[SlotMember] = []
        self._waiting: dict[SlotMember, None] = {}

    def join(self, member: SlotMember) -> None:
        """Count ``member``'s slots against the budget."""
        self.workers.append(member)

    def free(self) -> int:
        """Slots of the budget that no member uses nor is claiming for."""
        return self.capacity - sum(w.slots_taken() for w in self.workers)

    def wait(self, member: SlotMember) -> None:
        """``member`` found the budget spent: wake it when a slot frees."""
        self._waiting[member] = None

    def released(self) -> None:
        """A slot freed: wake every waiting member, in arrival order."""
        waiting, self._waiting = self._waiting, {}
        for w in waiting:
            w.wake()


class Leases:
    """The runs one worker holds leases for, and the loops that keep them honest.

    Args:
        queue: the queue consumed.
        worker_id: the worker's id (log lines).
        hooks: the queue's lifecycle hooks (``stalled``, ``dead_lettered``).
        wake: wakes the worker's pump (a slot freed).
        on_outage: reports a lost connection to Redis.
        slots: a budget shared with other workers, if any.
    """

    def __init__(
        self,
        queue: JobQueue,
        worker_id: str,
        hooks: HookBus,
        *,
        wake: Callable[[], None],
        on_outage: Callable[[BaseException], None],
        slots: SharedSlots | None = None,
    ) -> None:
        self.queue = queue
        self.worker_id = worker_id
        self.hooks = hooks
        #: Runs by job id: the jobs this worker holds leases for.
        self.runs: dict[str, Run] = {}
        self._wake = wake
        self._on_outage = on_outage
        self._slots = slots
        self._missing_task: asyncio.Future[None] | None = None
        #: The flush bound of the stop under way (s; the worker sets it): ``wind_down``
        #: lets the runs it cancels end within half of it, from ``cancelled_at`` (loop
        #: time; None: it cancelled none), and leaves the rest to the flush.
        self.flush_s = 5.0
        self.cancelled_at: float | None = None
        #: Seconds from a lease's claim or renewal (sent) within which its job may start.
        self.window = start_window(queue.lock_duration_ms)
        #: Claimed jobs dropped unstarted: their lease ran out before they could start.
        self.unstarted = 0
        #: Claimed jobs whose lease had to be renewed before they could start.
        self.renewed_late = 0
        self._late_n = 0  # dropped since the last warning
        #: The watchdog of the event loop (``loopwatch.py``; it runs while ``renew`` does):
        #: blocked episodes (``loopwatch.blocked``) and the longest (``loopwatch.longest_ms``).
        self.loopwatch = LoopWatch(queue, worker_id)

    def add(self, run: Run) -> None:
        """Hold ``run``'s lease. A run of the same job still held here is abandoned: an
        older run lost its lease (Redis was unreachable longer than lock_duration), the
        job was recovered and handed back to this worker, and the new lease wins. Left
        alone, the old run's outcome would evict this one, whose lease would go unrenewed
        and stall again."""
        job_id = run.job.id
        if job_id in self.runs:
            self.abandon(job_id)
        self.runs[job_id] = run

    def forget(self, run: Run) -> None:
        """Stop holding ``run`` (its outcome is on its way, or it was abandoned)."""
        # By identity: a newer run of the same job id may have replaced this one.
        runs = self.runs
        if runs.get(run.job.id) is run:
            del runs[run.job.id]
            if self._slots is not None:
                self._slots.released()

    def abandon(self, job_id: str, run: Run | None = None, *, gone: bool = False) -> None:
        """The lease of ``job_id`` was lost: drop ``run`` (default: the current run of
        that job) without recording any outcome, and cancel its task. ``gone``: the
        job's record no longer exists (erased, cleared, deleted or evicted while it
        ran), which the warning says instead of blaming the lease's duration."""
        run = run or self.runs.get(job_id)
        if run is None or run.abandoned:
            return
        self.forget(run)
        run.abandoned = True
        if gone:
            log.warning(
                "queue %s: job %s was removed while it ran (erased, cleared, deleted or "
                "evicted, run again by another worker after this lease expired and removed "
                "by retention, or %s); abandoning this run, no outcome is recorded",
                self.queue.name,
                printable(job_id),
                DATA_LOST,
            )
        else:
            log.warning(
                "queue %s: lease of job %s expired (lock_duration=%d ms) and the job was "
                "handed to another worker; abandoning this run. Raise lock_duration, or keep "
                "the event loop free so leases renew on time (or the Redis server's clock "
                "jumped forward: docs/RELIABILITY.md)",
                self.queue.name,
                printable(job_id),
                self.queue.lock_duration_ms,
            )
        if run.task is not None and not run.task.done():
            run.task.cancel()
        self._wake()

    async def report_gone(self, client: Any, gone: list[tuple[str, str]]) -> None:
        """Say in one line the jobs (id, outcome code) found ``gone`` after an outage
        (``Outcomes.gone``, emptied here): their outcomes were held while Redis was
        unreachable, and when it answered again neither record nor active entry was
        there. One read of the queue's id counter (every add increments it, ``clear``
        keeps it) tells why: gone, or below a gone job's numeric id, Redis lost its data
        (a WARNING, with what to check); else it kept it and the jobs went another way
        (INFO). A job whose own id (``job_id``) is a number above the counter reads as
        lost data: the line says so."""
        jobs, q = gone[:], self.queue
        gone.clear()
        top = max((int(j) for j, _ in jobs if j.isascii() and j.isdigit()), default=0)
        other = (
            "another worker ran them again after their leases expired (lock_duration="
            f"{q.lock_duration_ms} ms) and retention removed them, or their outcomes were "
            "recorded before a reply was lost and retention removed them at once, or they "
            "were cleared with force=True or erased"
        )
        try:
            (n,) = await q.scripts.pipeline(client, [RawCall(("GET", q.keys.id))])
            if isinstance(n, Exception):
                raise n
            counter = None if n is None else int(n)
        except Exception as exc:  # refused, Redis away again, or no number there
            level = logging.WARNING
            why = (
                "Whether Redis lost its data could not be checked (reading the queue's id "
                f"counter: {safe_name(exc)}: {q.connection.redact(exc)}): if it did (a "
                "restart without persistence, or a failover to a replica that did not have "
                f"it), every job enqueued before is gone too; else {other}"
            )
        else:
            if counter is None or counter < top:
                level = logging.WARNING
                said = (
                    "is gone"
                    if counter is None
                    else f"is at {counter}, below job id {top} (unless that id was given "
                    "with job_id)"
                )
                why = (
                    f"{DATA_LOST}: the queue's id counter {said}, so every job enqueued "
                    "before is gone too; check the server's persistence (appendonly, save) "
                    "and that a replica promoted in a failover is kept in sync"
                )
            else:
                level = logging.INFO
                why = f"Redis kept its data (the queue's id counter is at {counter}): {other}"
        more = len(jobs) - _GONE_SHOWN
        log.log(
            level,
            "queue %s: %d job(s) whose outcomes this worker held while Redis was "
            "unreachable were gone when it answered again: %s%s. %s. No outcome of theirs "
            "was recorded now",
            q.name,
            len(jobs),
            ", ".join(f"{printable(j)} ({k})" for j, k in jobs[:_GONE_SHOWN]),
            f" and {more} more" if more > 0 else "",
            why,
        )

    async def wind_down(self, grace: float, forced: asyncio.Event | None = None) -> None:
        """Graceful stop: let the running jobs finish within ``grace`` seconds, then
        cancel the rest, which hand their jobs back to the queue (no attempt spent).
        Those get half of the stop's flush bound (``flush_s``) to end, or until
        ``forced`` (after one turn of the loop, where most end): that wait is taken out
        of the flush, so a processor that delays its cancellation (a slow ``except
        CancelledError``, a call to a frozen Redis there) no longer holds the stop past
        its bound; one still running then is left to ``drop_stuck``."""
        self.cancelled_at = None
        running = [r.task for r in self.runs.values() if r.task is not None]
        if running:
            await asyncio.wait(running, timeout=grace)
        left = [r for r in self.runs.values() if r.task is not None and not r.task.done()]
        for run in left:
            run.reason = "shutdown"
            assert run.task is not None
            run.task.cancel()
        if left:
            self.cancelled_at = asyncio.get_running_loop().time()
            tasks = [r.task for r in left if r.task is not None]
            await asyncio.wait(tasks, timeout=0)
            await wait_unless(tasks, self.flush_s / 2, forced or asyncio.Event())
            stuck = sum(1 for t in tasks if not t.done())  # left leased (drop_stuck)
            log.warning(
                "worker %s: %d job(s) still running after shutdown_timeout were cancelled: "
                "%d ended (handed back to queue %s, or completed if it caught the "
                "cancellation)%s",
                self.worker_id, len(left), len(left) - stuck, self.queue.name,
                f"; {stuck} did not end: left leased until their leases expire" if stuck else "",
            )  # fmt: skip

    def drop_stuck(self) -> None:
        """After ``wind_down``: stop holding the runs that are still held (a processor
        that ignores its cancellation). The worker's pumps end once no run is held, so
        waiting on those would hold ``stop()`` up to its flush timeout beyond
        ``shutdown_timeout``. Nothing is recorded for them: their leases, no longer
        renewed, expire and the jobs are recovered, as when a worker dies."""
        stuck = list(self.runs.values())
        if not stuck:
            return
        for run in stuck:
            run.abandoned = True  # an outcome it reports later is not recorded
            self.forget(run)
        log.error(
            "worker %s: %d job(s) of queue %s did not end after being cancelled at the end "
            "of shutdown_timeout (a processor that ignores cancellation?); left leased, they "
            "run again after their leases expire (lock_duration=%d ms): %s",
            self.worker_id,
            len(stuck),
            self.queue.name,
            self.queue.lock_duration_ms,
            ", ".join(printable(r.job.id) for r in stuck[:10]),
        )

    # ------------------------------------------------------------------ renewal
    def extend_calls(self) -> tuple[list[ScriptCall], dict[str, Run]]:
        """``extend`` calls renewing every lease held (``EXTEND_CHUNK`` per call), and the
        runs they renew by job id (for ``after_extend``)."""
        q = self.queue
        runs = [r for r in self.runs.values() if not r.abandoned]
        calls = []
        for i in range(0, len(runs), EXTEND_CHUNK):
            args: list[Any] = [q.lock_duration_ms]
            for r in runs[i : i + EXTEND_CHUNK]:
                args.append(r.job.id)
                args.append(r.token)
            calls.append(q.call("extend", args))
        return calls, {r.job.id: r for r in runs}

    def after_extend(
        self, replies: list[Any], sent: dict[str, Run], at: float | None = None
    ) -> None:
        """Abandon the runs whose lease was lost; cancel those cancelled by ``cancel_job``.
        ``at``: loop time the calls were sent; the renewed runs may start until ``window``
        after it (none is moved when a call failed)."""
        if at is not None and not any(isinstance(r, Exception) for r in replies):
            for r in sent.values():
                r.start_by = at + self.window
        for reply in replies:
            if isinstance(reply, Exception):
                if self.queue.ctx.damaged.failed(reply):
                    continue  # a key of the queue damaged by hand: at a bounded rate
                log.error(
                    "worker %s: lease renewal failed: %s",
                    self.worker_id,
                    self.queue.connection.redact(reply),
                )
                continue
            lost, cancelled = reply[0], reply[1]
            gone = set(reply[2]) if len(reply) > 2 else set()
            for b in lost:
                job_id = b.decode()
                run = sent.get(job_id)
                if run is not None and self.runs.get(job_id) is not run:
                    # It ended here while the renewal was under way (its timeout, its
                    # outcome): the finish, fenced by its token, tells whether it lost.
                    continue
                self.abandon(job_id, run, gone=b in gone)
            for b in cancelled:
                run = self.runs.get(b.decode())
                if run is not None and run.task is not None and not run.task.done():
                    run.reason = "cancelled"
                    run.task.cancel(FAILING_CANCELS[1])

    async def renew(self, client: Any) -> None:
        """The renewal loop (runs until cancelled), the event loop watched meanwhile."""

        async def renew_all() -> None:
            calls, sent = self.extend_calls()
            if calls:
                at = asyncio.get_running_loop().time()
                self.after_extend(await self.queue.scripts.pipeline(client, calls), sent, at)

        with self.loopwatch.running():
            await self._every(self.queue.lock_renew_ms, renew_all, "lease renewal failed; retrying")

    async def confirm(self, run: Run) -> bool:
        """``run`` has not started and its ``start_by`` passed: the lease may have run out
        (this process was stopped or frozen since the claim) and the job been recovered
        and run by another worker. Renew the lease, fenced by its token: True when it is
        still this worker's (start the job), else False, unstarted. A run whose lease the
        last renewal still found held (every reply came back late) stays held, not
        abandoned: the caller hands it back, fenced by its token, so that it does not
        stall (and count toward ``max_stalled_count``). Any other is dropped here with
        nothing written (its job is another worker's, or recovered when its lease
        expires)."""
        q, loop = self.queue, asyncio.get_running_loop()
        held = False
        for _ in range(_CONFIRM_TRIES):  # a reply that came back late is no proof either
            at = loop.time()
            try:
                reply = await q.run("extend", [q.lock_duration_ms, run.job.id, run.token])
            except Exception:  # unknown: not started; the lease expires, the job is recovered
                held = False
                break
            held = not reply[0] and not run.abandoned
            if not held:  # lost: the lease is no longer ours (extend.lua)
                break
            if loop.time() <= at + self.window:
                run.start_by = at + self.window
                self.renewed_late += 1
                return True
        if not run.abandoned:
            if not held:
                run.abandoned = True  # an outcome it reports later is not recorded
                self.forget(run)
            self.unstarted += 1
            self._late_n += 1
            if self._late_n == 1:
                loop.call_later(_LATE_LOG_S, self._say_late)
            self._wake()
        return False

    def _say_late(self) -> None:
        n, self._late_n = self._late_n, 0
        log.warning(
            "worker %s: %d claimed job(s) of queue %s not started: their lease may have "
            "run out before they could start (this process was stopped, frozen or starved "
            "for longer than lock_duration=%d ms?); handed back or left to lease "
            "recovery, another worker runs them",
            self.worker_id,
            n,
            self.queue.name,
            self.queue.lock_duration_ms,
        )

    # ------------------------------------------------------------------ recovery
    async def sweep(self, stopping: Callable[[], bool]) -> None:
        """The stalled-job sweep (runs until cancelled; idle while ``stopping()``)."""
        q = self.queue

        async def recover() -> None:
            if stopping():
                return
            back, dead = await q.run(
                "recover",
                [q.settings.max_stalled_count, "1" if q.dlq.enabled else "0", _SWEEP_LIMIT],
            )
            if back or dead:
                self.recovered(back, dead)

        await self._every(q.stalled_interval_ms, recover, "stalled-job sweep failed")

    async def _every(
        self, interval_ms: int, step: Callable[[], Awaitable[None]], failed: str
    ) -> None:
        # Run ``step`` every ``interval_ms`` (up to 10 % sooner, never later: the loops of
        # many queues started at once drift apart, and a lease is still renewed in time)
        # for ever: a lost connection is reported as an outage, any other error logged
        # (``failed``); the loop never dies of either.
        while True:
            await asyncio.sleep(interval_ms / 1000 * random.uniform(0.9, 1.0))
            try:
                await step()
            except TRANSIENT_ERRORS as exc:
                self._on_outage(exc)
            except Exception as exc:
                if not self.queue.ctx.damaged.failed(exc):  # a damaged key: bounded rate
                    log.exception("worker %s: %s", self.worker_id, failed)

    def recovered(self, back: list[bytes], dead: list[bytes]) -> None:
        """Report jobs recovered from expired leases (by a claim or the sweep): ``back``
        went back to wait (``stalled``), ``dead`` were dead-lettered (stalled too often,
        cancelled while their worker was gone, or damaged records)."""
        bus, name = self.hooks, self.queue.name
        if back and bus.stalled:
            bus.emit_stalled(name, [b.decode() for b in back])
        if dead and bus.dead_lettered:
            for b in dead:
                # The reason is recorded on the job (failed_reason); this worker never
                # held it, so it does not know it.
                bus.emit_dead_lettered(name, b.decode(), None, None)

    def check_missing(self, client: Any) -> None:
        """Read the queue's count of missing records, in the background (jobs recovered
        dead may have lost their record: evicted): a warning goes out (bounded rate,
        ``missing.MissingRecords``) when it grew."""
        if self._missing_task is not None and not self._missing_task.done():
            return

        async def check() -> None:
            with contextlib.suppress(Exception):
                raw = await client.hget(self.queue.keys.meta, "missing")
                self.queue.ctx.missing.counted(int(raw or 0))

        self._missing_task = asyncio.ensure_future(check())

    async def end_missing_check(self) -> None:
        """Cancel a ``check_missing`` read still under way (the worker stops)."""
        if self._missing_task is not None:
            self._missing_task.cancel()
            await asyncio.gather(self._missing_task, return_exceptions=True)
