"""The worker: claims jobs under leases, runs processors, records outcomes in batches.

How one worker runs (one asyncio task each, plus one task per running job):

1. **pump** — the only tasks that claim and acknowledge. Each round a pump sends one
   pipeline: ``finish`` for the outcomes collected since the last round (fenced by lease
   token) and ``claim`` for free slots. Claim also promotes due delayed jobs and recovers
   expired leases. With two or more slots there are two pump lanes, each claiming at
   most half the slots: while one waits for Redis, the other runs its jobs, so Python and
   Redis work at the same time (slots reserved by a claim in flight count as taken, so
   the lanes together never lease more than ``concurrency`` jobs; batch processors and
   shared budgets keep one lane). When nothing could be claimed a lane sleeps until a
   completion, a wake-up from the waker, or the moment the next delayed job / lease
   deadline / limiter window is due (a local timer, so delays are precise to ~1 ms).
2. **waker** — blocks on the queue's marker key (BZPOPMIN on a dedicated connection) while
   the pump is idle; producers add the marker, so a new job starts within ~1 ms without
   polling. A marker taken while this worker has no free slot is put back for others.
3. **renew** — every ``lock_renew_time`` renews the leases of all running jobs in one
   script call per 500 jobs. A job whose lease was lost (this worker was frozen or cut off
   longer than ``lock_duration`` and another worker took it) is abandoned: its task is
   cancelled and its outcome is never recorded (fencing).
4. **sweep** — every ``max_stalled_interval`` requeues expired leases of dead workers even
   when every slot here is busy.

Outcomes are durable only once flushed (a few ms). A crash before the flush leaves the
job leased; it runs again after its lease expires (at-least-once, never lost, never two
recorded outcomes). ``job-completed`` and other outcome events fire after the flush.

One job's outcome never costs another job its own:

* every text recorded for a job (error reason, traceback, retry or defer reason, log
  line) is clipped and encoded by ``limits.wire_text`` when the outcome is built, which
  never fails (lone surrogates become backslash escapes; ``__str__`` that raises is
  described by its type), and every delay is clamped to ``limits.MAX_DELAY_MS``;
* a finish call Redis refuses (an error reply that is not a lost connection) is split:
  each of its outcomes is sent again alone in the next round. An outcome refused even
  alone is replaced by a final failure of its job ("outcome could not be recorded:
  ..."); if Redis refuses that too, an error is logged and the job is left to lease
  expiry and recovery. Nothing is retried more than twice this way. Refusals that
  concern the whole server rather than the call (out of memory, a script running too
  long, a missing ACL permission) are not split: the outcomes are kept and sent again,
  as during an outage.

Graceful stop: claim nothing more, let running jobs finish within ``shutdown_timeout``,
hand the rest back to the queue at once (no attempt spent), flush every outcome.
Every loop survives Redis going away: it logs, backs off (50 ms → 1 s) and carries on
with what it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import heapq
import inspect
import logging
import os
import signal
import socket
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import orjson
from redis.exceptions import BusyLoadingError, NoPermissionError, OutOfMemoryError, ResponseError

from .backoff import retry_delay
from .batches import BatchProcessor
from .codec import Serializer
from .connection import TRANSIENT_ERRORS
from .errors import (
    NonRetryableError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimited,
    RetryLater,
    SerializationError,
)
from .events import EventData
from .job import Job
from .limits import (
    MAX_DELAY_MS,
    MAX_ERROR_CHARS,
    MAX_LOG_LINE_CHARS,
    MAX_OPTIONS_BYTES,
    MAX_PROGRESS_BYTES,
    MAX_TRACEBACK_CHARS,
    clamp_delay_ms,
    clip,
    printable,
    safe_text,
    wire_text,
)
from .middleware import run_process_chain
from .options import MAX_CONCURRENCY, Policy, to_int
from .procpool import ProcessPool, import_path
from .scripts import ScriptCall

if TYPE_CHECKING:
    from .queue import JobQueue

__all__ = ["SharedSlots", "Worker", "serve_until_stopped"]

log = logging.getLogger(__name__)

# Connection loss, and the CLUSTERDOWN / TRYAGAIN / READONLY replies of a failover.
_NET_ERRORS = TRANSIENT_ERRORS
_FINISH_CHUNK = 500
# Finish fields per outcome (finish.lua): id, token, kind, payload, traceback, delay,
# keep count, keep age, meta.
_FIELDS = 9
_MAX_IDLE_S = 5.0
_MAX_ERR = MAX_ERROR_CHARS
_MAX_TB = MAX_TRACEBACK_CHARS


# An outcome waiting for its reply: the run, its kind, the result, the error, the delay.
_Done = tuple["_Run", str, Any, "BaseException | None", int]
# Stages of an outcome sent alone after Redis refused the call that carried it.
_ALONE = 1  # the outcome itself
_FALLBACK = 2  # the final failure recorded in its place


class _Run:
    __slots__ = ("abandoned", "deadline", "job", "policy", "reason", "started", "task", "token")

    def __init__(self, job: Job, token: str, policy: Policy) -> None:
        self.job = job
        self.token = token
        self.policy = policy
        self.task: asyncio.Task[None] | None = None
        self.deadline: float | None = None  # loop time at which the run times out
        self.reason: str | None = None  # why the task was cancelled
        self.abandoned = False
        self.started = 0.0


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
        self.workers: list[Worker] = []
        self._waiting: dict[Worker, None] = {}

    def free(self) -> int:
        return self.capacity - sum(len(w._jobs) + w._claiming for w in self.workers)

    def wait(self, worker: Worker) -> None:
        self._waiting[worker] = None

    def released(self) -> None:
        waiting, self._waiting = self._waiting, {}
        for w in waiting:
            w._signal.set()


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
        self.running = False
        self.stopped = asyncio.Event()
        self._stopping = False
        self._jobs: dict[str, _Run] = {}
        self._acks: list[Any] = []  # flat finish arguments, 9 per outcome
        self._done: list[_Done] = []
        # Outcomes to send in a finish call of their own (module docstring): their 9
        # arguments, the outcome, and _ALONE or _FALLBACK.
        self._solo: list[tuple[list[Any], _Done, int]] = []
        self._signal = asyncio.Event()
        self._want_block = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: Any = None
        self._bclient: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._pumps: list[asyncio.Task[None]] = []
        self._executor = ThreadPoolExecutor(
            max_workers=self.concurrency, thread_name_prefix=f"kq-{queue.name}"
        )
        self._policies: dict[bytes, Policy] = {}
        self._procs: dict[str, tuple[Callable[..., Any], str]] = {}
        self._pool: ProcessPool | None = None
        self._deadlines: list[tuple[float, int, _Run]] = []
        self._watch_at: float | None = None
        self._watch_handle: asyncio.TimerHandle | None = None
        self._outage = False
        self._events = queue.emitter
        self._claim_args: list[Any] = []
        self.processed = 0
        self._claiming = 0  # slots asked for by the claims in flight
        self._slots = slots
        if slots is not None:
            slots.workers.append(self)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        q = self.queue
        self._loop = asyncio.get_running_loop()
        self._client = await q.client()
        self._bclient = q.connection.client(blocking=True)
        for name, fn in q.processors.items():
            self._procs[name] = (fn, self._kind(name, fn))
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
        self.running = True
        loop = self._loop
        # Pump lanes (module docstring). A batch processor gathers the jobs of one claim,
        # so its queue keeps one lane claiming every free slot; workers sharing a budget
        # (partitions) already overlap one another and keep one lane for fair turns.
        batching = any(isinstance(fn, BatchProcessor) for fn in q.processors.values())
        single = batching or self._slots is not None
        lanes = 2 if self.concurrency >= 2 and not single else 1
        cap = -(-self.concurrency // lanes)
        self._pumps = [
            loop.create_task(self._pump(cap), name=f"kq-pump{i}-{q.name}") for i in range(lanes)
        ]
        self._tasks = [
            *self._pumps,
            loop.create_task(self._waker(), name=f"kq-waker-{q.name}"),
            loop.create_task(self._renew(), name=f"kq-renew-{q.name}"),
            loop.create_task(self._sweep(), name=f"kq-sweep-{q.name}"),
        ]
        for svc in q.services:
            try:
                await svc.start(q)
            except Exception:
                log.exception("worker %s: service %s failed to start", self.id, svc.name)
        log.info(
            "worker %s started on queue %s (concurrency=%d)", self.id, q.name, self.concurrency
        )

    async def stop(self, timeout_ms: int | None = None) -> None:
        """Graceful stop; see the module docstring."""
        if not self.running or self._stopping:
            await self.stopped.wait()
            return
        self._stopping = True
        self._signal.set()
        for svc in reversed(self.queue.services):
            try:
                await svc.stop()
            except Exception:
                log.exception("worker %s: service %s failed to stop", self.id, svc.name)
        grace = (self.queue.shutdown_timeout_ms if timeout_ms is None else timeout_ms) / 1000
        running = [r.task for r in self._jobs.values() if r.task is not None]
        if running:
            await asyncio.wait(running, timeout=grace)
        left = [r for r in self._jobs.values() if r.task is not None and not r.task.done()]
        for run in left:
            run.reason = "shutdown"
            assert run.task is not None
            run.task.cancel()
        if left:
            await asyncio.wait([r.task for r in left if r.task is not None], timeout=5)
            log.warning(
                "worker %s: %d job(s) still running after shutdown_timeout were handed back "
                "to queue %s",
                self.id,
                len(left),
                self.queue.name,
            )
        self._signal.set()
        _, flushing = await asyncio.wait(self._pumps, timeout=30)
        if flushing:
            log.error(
                "worker %s: could not flush %d outcome(s) within 30 s (Redis unreachable); "
                "those jobs will run again after their leases expire",
                self.id,
                self._held(),
            )
        for t in self._tasks:
            t.cancel()
        # A client library can swallow a cancellation that lands just as its reply arrives
        # (seen with blocking pops); that loop would then park on its next await for ever.
        # Cancel stragglers again until every loop has ended.
        pending = set(self._tasks)
        while pending:
            _, pending = await asyncio.wait(pending, timeout=0.25)
            for t in pending:
                t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._pool is not None:
            await self._pool.close()
        if self._watch_handle is not None:
            self._watch_handle.cancel()
            self._watch_handle = None
        if self._bclient is not None and self.queue.connection.owns(self._bclient):
            with contextlib.suppress(Exception):  # closing a broken connection
                await self._bclient.aclose()
        self.running = False
        self.stopped.set()
        log.info("worker %s stopped (%d jobs processed)", self.id, self.processed)

    # ------------------------------------------------------------------ pump
    async def _pump(self, cap: int) -> None:
        # ``cap``: the most jobs one claim of this lane asks for.
        q = self.queue
        scripts, client = q.scripts, self._client
        delay_backoff = 0.05
        idle_for: float | None = None
        while True:
            free = 0 if self._stopping else min(self._free(), cap)
            if not self._acks and not self._solo:
                if self._stopping and not self._jobs:
                    return
                if free <= 0 or idle_for is not None:
                    self._signal.clear()
                    if free > 0:
                        self._want_block.set()
                    elif self._slots is not None:
                        self._slots.wait(self)
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._signal.wait(), idle_for)
                    idle_for = None
                    continue
            acks, done = self._acks, self._done
            self._acks, self._done = [], []
            # Outcomes Redis refused in a shared call go alone, a bounded number per round.
            solo, self._solo = self._solo[:_FINISH_CHUNK], self._solo[_FINISH_CHUNK:]
            # After an outage, renew our own leases first in the same pipeline, so the
            # claim below does not recover (and re-run) jobs that are still running here.
            calls, extending = self._extend_calls() if self._outage else ([], {})
            n_ext = len(calls)
            dlq = "1" if q.dlq.enabled else "0"
            for i in range(0, len(acks), _FIELDS * _FINISH_CHUNK):
                calls.append(q.call("finish", [dlq, *acks[i : i + _FIELDS * _FINISH_CHUNK]]))
            for args, _, _ in solo:
                calls.append(q.call("finish", [dlq, *args]))
            n_fin = len(calls)
            if free > 0:
                claim_args = self._claim_args.copy()
                claim_args[0] = free
                calls.append(q.call("claim", claim_args))
                self._claiming += free
            try:
                replies = await scripts.pipeline(client, calls)
                for r in replies:
                    if isinstance(r, _NET_ERRORS):
                        raise r
            except Exception as exc:
                # Keep the outcomes and give back the slots, then retry. Finish is fenced,
                # so re-sending an outcome Redis may already have recorded is refused,
                # never doubled.
                self._unreserve(free, 0)
                self._acks = acks + self._acks
                self._done = done + self._done
                self._solo = solo + self._solo
                if isinstance(exc, _NET_ERRORS):
                    self._report_outage(exc)
                else:
                    # Not a lost connection (a refused SCRIPT LOAD, an ACL change): say so
                    # loudly every time.
                    log.error(
                        "worker %s: claim/finish round on queue %s failed (%s: %s); "
                        "retrying in %.2f s",
                        self.id,
                        q.name,
                        type(exc).__name__,
                        q.connection.redact(exc),
                        delay_backoff,
                    )
                    if self._events.wants("queue-error"):
                        self._events.emit(EventData("queue-error", q.name, error=exc))
                await asyncio.sleep(delay_backoff)
                delay_backoff = min(delay_backoff * 2, 1.0 if isinstance(exc, _NET_ERRORS) else 5.0)
                continue
            if self._outage:
                self._outage = False
                log.warning("worker %s: Redis is reachable again; resuming", self.id)
            if n_ext:
                self._after_extend(replies[:n_ext], extending)
            refused: Exception | None = None
            if done or solo:
                refused = self._after_finish_calls(replies[n_ext:n_fin], acks, done, solo)
            if refused is None:
                delay_backoff = 0.05
            claim_failed = False
            if free > 0:
                reply = replies[-1]
                if isinstance(reply, Exception):
                    log.error("worker %s: claim failed: %s", self.id, q.connection.redact(reply))
                    self._unreserve(free, 0)
                    idle_for = 1.0
                    claim_failed = True
                else:
                    got = self._after_claim(reply)
                    self._unreserve(free, got)
                    if got == 0:
                        wake_in = int(reply[1])
                        idle_for = (
                            _MAX_IDLE_S if wake_in < 0 else min(_MAX_IDLE_S, wake_in / 1000)
                        )
            if refused is not None:
                # The server refused outcomes for a reason of its own (out of memory, ...):
                # they are kept; wait before offering them again, as after an outage.
                log.error(
                    "worker %s: Redis refused to record %d outcome(s) on queue %s (%s: %s); "
                    "keeping them, retrying in %.2f s",
                    self.id,
                    self._held(),
                    q.name,
                    type(refused).__name__,
                    safe_text(refused),
                    delay_backoff,
                )
                await asyncio.sleep(delay_backoff)
                delay_backoff = min(delay_backoff * 2, 5.0)
                continue
            if claim_failed:
                continue
            # Let completions that are ready run before the next round.
            await asyncio.sleep(0)

    def _held(self) -> int:
        """Outcomes this worker holds that Redis has not recorded yet."""
        return len(self._acks) // _FIELDS + len(self._solo)

    def _after_finish_calls(
        self,
        replies: list[Any],
        acks: list[Any],
        done: list[_Done],
        solo: list[tuple[list[Any], _Done, int]],
    ) -> Exception | None:
        """Handle the replies of one round's finish calls: the shared calls carrying
        ``acks``/``done`` (``_FINISH_CHUNK`` outcomes each), then one call per ``solo``
        outcome. Returns the error of a refusal by the whole server, if any (those
        outcomes are kept for a later round), else None."""
        refused: Exception | None = None
        n_shared = -(-len(done) // _FINISH_CHUNK)
        if n_shared == 1 and not isinstance(replies[0], Exception):
            self._after_finish(done, replies[0])  # the usual round: one call, accepted
        else:
            for c, reply in enumerate(replies[:n_shared]):
                lo, hi = c * _FINISH_CHUNK, min((c + 1) * _FINISH_CHUNK, len(done))
                if not isinstance(reply, Exception):
                    self._after_finish(done[lo:hi], reply)
                elif _server_refusal(reply):
                    self._acks.extend(acks[lo * _FIELDS : hi * _FIELDS])
                    self._done.extend(done[lo:hi])
                    refused = reply
                elif hi - lo == 1:
                    self._refused_alone(acks[lo * _FIELDS : hi * _FIELDS], done[lo], reply)
                else:
                    # One outcome Redis cannot take must not cost the others theirs: send
                    # each alone next round. Fencing makes that safe even if the call
                    # failed after some writes (those come back as lease-lost).
                    log.warning(
                        "worker %s: Redis refused a finish call of %d outcomes on queue %s "
                        "(%s: %s); sending each alone",
                        self.id,
                        hi - lo,
                        self.queue.name,
                        type(reply).__name__,
                        safe_text(reply),
                    )
                    for k in range(lo, hi):
                        self._solo.append(
                            (acks[k * _FIELDS : (k + 1) * _FIELDS], done[k], _ALONE)
                        )
        for (args, entry, stage), reply in zip(solo, replies[n_shared:], strict=True):
            if not isinstance(reply, Exception):
                self._after_finish([entry], reply)
            elif _server_refusal(reply):
                self._solo.append((args, entry, stage))
                refused = reply
            elif stage == _ALONE:
                self._refused_alone(args, entry, reply)
            else:
                run = entry[0]
                log.error(
                    "queue %s: Redis refused even the final failure recorded in place of "
                    "an outcome of job %s (%s: %s); the job stays leased and is recovered "
                    "when its lease expires",
                    self.queue.name,
                    run.job.id,
                    type(reply).__name__,
                    safe_text(reply),
                )
        return refused

    def _refused_alone(self, args: list[Any], entry: _Done, exc: Exception) -> None:
        """An outcome Redis refused in a call of its own: record a final failure of its
        job instead (sent alone next round), saying why, without the outcome's content."""
        run, kind = entry[0], entry[1]
        reason = (
            f"outcome could not be recorded (kind {kind}): {type(exc).__name__}: "
            f"{safe_text(exc)}"
        )
        log.error(
            "queue %s: Redis refused the outcome (%s) of job %s (%s: %s); recording a final "
            "failure instead",
            self.queue.name,
            kind,
            run.job.id,
            type(exc).__name__,
            safe_text(exc),
        )
        keep = run.policy.keep_failed
        fallback = [
            args[0],
            args[1],
            "F",
            wire_text(reason, _MAX_ERR),
            b"",
            0,
            *_keep_args(keep),
            b"",
        ]
        self._solo.append((fallback, (run, "F", None, RuntimeError(reason), 0), _FALLBACK))

    def _free(self) -> int:
        free = self.concurrency - len(self._jobs) - self._claiming
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

    def _report_outage(self, exc: BaseException) -> None:
        if not self._outage:
            self._outage = True
            log.warning(
                "worker %s: Redis unreachable (%s: %s); holding %d outcome(s), retrying",
                self.id,
                type(exc).__name__,
                self.queue.connection.redact(exc),
                self._held(),
            )
            if self._events.wants("queue-error"):
                self._events.emit(EventData("queue-error", self.queue.name, error=exc))

    def _after_claim(self, reply: list[Any]) -> int:
        back, dead = reply[3], reply[4]
        if back or dead:
            self._note_recovered(back, dead)
        jobs = reply[5:]
        if not jobs:
            return 0
        token = reply[2].decode() if isinstance(reply[2], bytes) else str(reply[2])
        for entry in jobs:
            try:
                self._launch(entry, token)
            except Exception:
                # A record damaged in a way the claim could not clean up: never let it
                # stop the pump. The job stays leased, stalls, and is dead-lettered after
                # max_stalled_count claims like any job that keeps losing its worker.
                log.exception(
                    "worker %s: cannot start job %r of queue %s (damaged job record?)",
                    self.id,
                    entry[0] if entry else None,
                    self.queue.name,
                )
        return len(jobs)

    def _note_recovered(self, back: list[bytes], dead: list[bytes]) -> None:
        q = self.queue
        for b in back:
            jid = b.decode()
            log.warning("queue %s: job %s stalled (lease expired); requeued", q.name, jid)
            if self._events.wants("job-stalled"):
                self._events.emit(EventData("job-stalled", q.name, jid))
        for b in dead:
            jid = b.decode()
            log.error(
                "queue %s: job %s dead-lettered on recovery (stalled too often, or cancelled "
                "while its worker was gone; see its failed_reason)", q.name, jid,
            )
            self._dead_lettered(jid, None)
        if q.metrics is not None:
            tags = {"queue": q.name}
            if back:
                q.metrics.increment("jobs.stalled", len(back), tags)
            if dead:
                q.metrics.increment("jobs.dlq", len(dead), tags)

    def _policy(self, raw: bytes) -> Policy:
        p = self._policies.get(raw)
        if p is None:
            if len(self._policies) > 1000:
                self._policies.clear()
            try:
                p = self.queue.policy_for(orjson.loads(raw)) if raw else self.queue.policy
            except Exception:
                p = self.queue.policy
            self._policies[raw] = p
        return p

    def _launch(self, entry: list[Any], token: str) -> None:
        jid = entry[0].decode()
        raw_opts = entry[3]
        policy = self._policy(raw_opts)
        try:
            opts = orjson.loads(raw_opts) if raw_opts else {}
        except Exception:
            opts = {}
        if not isinstance(opts, dict):
            opts = {}
        job = Job(
            id=jid,
            name=entry[1].decode(errors="replace"),
            data=None,
            attempts=int(entry[4]),
            max_attempts=policy.attempts,
            created_at=int(entry[5] or 0),
            options=opts,
            queue_name=self.queue.name,
            stalls=int(entry[6] or 0),
            token=token,
            worker=self,
        )
        run = _Run(job, token, policy)
        if self._stopping:
            # Claimed by a call already in flight when stop() began: hand it back
            # unstarted. Starting it would only cut it off at the end of the grace period
            # (stop() does not wait for jobs it has not seen), and it would run twice.
            self._ack(run, "H", b"", b"", 0, None, None, None)
            return
        if jid in self._jobs:
            # An older run here lost its lease (Redis was unreachable longer than
            # lock_duration) and the job was recovered and handed back to us: the new
            # lease wins. Left alone, the old run's outcome would evict this run from
            # _jobs, its lease would go unrenewed and the job would stall again.
            self._abandon(jid)
        self._jobs[jid] = run
        assert self._loop is not None
        run.task = self._loop.create_task(self._run(run, entry[2]))

    # ------------------------------------------------------------------ running a job
    async def _run(self, run: _Run, raw: bytes) -> None:
        q, job = self.queue, run.job
        loop = self._loop
        assert loop is not None
        span = None
        try:
            try:
                job.data = q.serializer.loads(raw)
            except SerializationError as exc:
                self._fail_final(run, exc, f"undecodable payload: {safe_text(exc)}")
                return
            proc = self._procs.get(job.name) or self._procs.get("*")
            if proc is None:
                proc = self._lookup(job.name)
            if q.telemetry is not None:
                span = q.telemetry.start_span(
                    "kitium.process",
                    {
                        "queue": q.name,
                        "job.id": job.id,
                        "job.name": job.name,
                        "job.attempt": job.attempts,
                    },
                )
            if self._events.wants("job-started"):
                self._events.emit(EventData("job-started", q.name, job.id, job=job))
            if q.metrics is not None:
                tags = {"queue": q.name, "job_name": job.name}
                q.metrics.increment("jobs.started", 1, tags)
                # Enqueue time is Redis' clock, now is this host's: close, not exact.
                waited = max(0.0, time.time() * 1000 - job.created_at)
                q.metrics.observe("job.wait_ms", waited, tags)
            run.started = loop.time()
            if run.policy.timeout_ms:
                self._watch(run, run.started + run.policy.timeout_ms / 1000)
            fn, kind = proc
            if q.process_middleware:
                result = await run_process_chain(
                    q.process_middleware, job, functools.partial(self._call, fn, kind, job)
                )
            else:
                result = await self._call(fn, kind, job)
            run.deadline = None
            try:
                payload = q.serializer.dumps(result, "result")
            except SerializationError as exc:
                self._fail_final(run, exc, safe_text(exc))
                return
            if len(payload) > q.max_payload_bytes:
                self._fail_final(
                    run,
                    None,
                    f"result of job {job.id} is {len(payload)} bytes encoded, above "
                    f"max_payload_bytes={q.max_payload_bytes}; store large results elsewhere "
                    "and return a reference",
                )
                return
            self._ack(run, "C", payload, b"", 0, run.policy.keep_completed, result, None)
        except asyncio.CancelledError:
            run.deadline = None
            reason = run.reason
            if run.abandoned:
                self._forget(run)
                return
            if reason == "timeout":
                self._failed(
                    run,
                    TimeoutError(
                        f"job {job.id} ({job.name}) exceeded its timeout of "
                        f"{run.policy.timeout_ms} ms"
                    ),
                )
            elif reason == "cancelled":
                self._fail_final(run, None, "cancelled by cancel_job()")
            elif reason == "shutdown":
                self._ack(run, "H", b"", b"", 0, None, None, None)
            else:
                self._ack(run, "H", b"", b"", 0, None, None, None)
                raise
        except RetryLater as exc:
            run.deadline = None
            self._deferred(run, exc)
        except NonRetryableError as exc:
            run.deadline = None
            self._fail_final(run, exc, _describe(exc))
        except Exception as exc:
            run.deadline = None
            if span is not None:
                span.record_exception(exc)
            self._failed(run, exc)
        finally:
            if span is not None:
                span.end()

    def _kind(self, name: str, fn: Callable[..., Any]) -> str:
        mode = self.queue.processor_modes.get(name, "auto")
        if mode == "process":
            if self._pool is None:
                self._pool = ProcessPool(self.concurrency)
            return "process"
        return "async" if _is_async(fn) else "thread"

    async def _call(self, fn: Callable[..., Any], kind: str, job: Job) -> Any:
        if kind == "async":
            return await fn(job)
        if kind == "process":
            assert self._pool is not None

            async def relay(what: str, value: Any) -> None:
                await self._update(job, what, value)

            return await self._pool.run(import_path(fn), job, relay)
        assert self._loop is not None
        ctx = contextvars.copy_context()
        pool = self._executor
        cf = pool.submit(ctx.run, fn, job)
        try:
            return await asyncio.wrap_future(cf)
        except asyncio.CancelledError:
            if not cf.done() and pool is self._executor:
                # A thread cannot be stopped (timeout, cancel_job): it runs on and keeps its
                # pool thread. Later jobs get a fresh pool, so the slot freed here can really
                # run one; the old pool winds down as its threads return.
                self._executor = ThreadPoolExecutor(
                    max_workers=self.concurrency, thread_name_prefix=f"kq-{self.queue.name}"
                )
                pool.shutdown(wait=False)
            raise

    def _lookup(self, name: str) -> tuple[Callable[..., Any], str]:
        fn = self.queue.processors.get(name) or self.queue.processors.get("*")
        if fn is not None:
            key = name if name in self.queue.processors else "*"
            self._procs[name] = (fn, self._kind(key, fn))
            return self._procs[name]
        known = sorted(self.queue.processors) or ["none"]
        raise LookupError(
            f"no processor registered for job name {name!r} on queue {self.queue.name!r} "
            f"(registered: {', '.join(known)}); register one with "
            f"queue.process({name!r}, fn)"
        )

    def _watch(self, run: _Run, deadline: float) -> None:
        # One timer for all running jobs (earliest deadline first) instead of a timer per
        # job; finished runs leave stale heap entries that are skipped, and the heap is
        # rebuilt from the live runs when stale entries dominate.
        run.deadline = deadline
        heap = self._deadlines
        if len(heap) > 64 and len(heap) > 4 * len(self._jobs):
            heap[:] = [(r.deadline, id(r), r) for r in self._jobs.values() if r.deadline]
            heapq.heapify(heap)
        heapq.heappush(heap, (deadline, id(run), run))
        if self._watch_at is None or deadline < self._watch_at:
            self._arm_watchdog()

    def _arm_watchdog(self) -> None:
        if self._watch_handle is not None:
            self._watch_handle.cancel()
            self._watch_handle = None
        self._watch_at = None
        if self._deadlines and self._loop is not None:
            self._watch_at = self._deadlines[0][0]
            self._watch_handle = self._loop.call_at(self._watch_at, self._watchdog)

    def _watchdog(self) -> None:
        self._watch_handle = None
        assert self._loop is not None
        now = self._loop.time()
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            deadline, _, run = heapq.heappop(heap)
            if run.deadline == deadline:
                run.deadline = None
                self._timeout(run)
        self._arm_watchdog()

    def _timeout(self, run: _Run) -> None:
        if run.task is not None and not run.task.done():
            run.reason = "timeout"
            run.task.cancel()

    def _failed(self, run: _Run, exc: BaseException) -> None:
        job = run.job
        tb = _traceback_text(exc)
        if job.attempts < run.policy.attempts:
            try:
                delay = retry_delay(
                    run.policy, job.attempts, exc, job, self.queue.backoff_strategies
                )
            except Exception as bexc:
                self._fail_final(
                    run, bexc, f"{_describe(exc)} (and backoff failed: {_describe(bexc)})"
                )
                return
            if delay is not None:
                reason = wire_text(_describe(exc), _MAX_ERR)
                self._ack(run, "R", reason, tb, delay, None, None, exc)
                return
        reason = wire_text(_describe(exc), _MAX_ERR)
        self._ack(run, "F", reason, tb, 0, run.policy.keep_failed, None, exc)

    def _deferred(self, run: _Run, exc: RetryLater) -> None:
        """The processor raised ``RetryLater`` / ``RateLimited``: defer the job."""
        try:
            # Clamped again here: the attribute may have been changed after construction.
            delay = clamp_delay_ms(exc.delay_ms)
        except (TypeError, ValueError) as bad:
            self._fail_final(
                run, exc, f"{_describe(exc)} with an invalid delay_ms ({_describe(bad)})"
            )
            return
        meta = b""
        if isinstance(exc, RateLimited):
            try:
                hold = exc.hold(run.job.options)
            except Exception as bad:  # a subclass overriding hold()
                self._fail_final(run, exc, f"{_describe(exc)}: hold() failed ({_describe(bad)})")
                return
            if hold is not None and delay > 0:
                # A hold name is a key: bounded like the options it comes from.
                meta = wire_text(self.queue.keys.hold_name(hold), MAX_OPTIONS_BYTES)
        why = wire_text(safe_text(exc.reason), _MAX_ERR)
        self._ack(run, "D", why, b"", delay, None, None, exc, meta)

    def _fail_final(self, run: _Run, exc: BaseException | None, reason: str) -> None:
        tb = b""
        if exc is not None and exc.__traceback__ is not None:
            tb = _traceback_text(exc)
        err = exc if exc is not None else RuntimeError(reason)
        self._ack(
            run, "F", wire_text(reason, _MAX_ERR), tb, 0, run.policy.keep_failed, None, err
        )

    def _ack(
        self,
        run: _Run,
        kind: str,
        payload: bytes,
        tb: bytes,
        delay: int,
        keep: Any,
        result: Any,
        exc: BaseException | None,
        meta: bytes = b"",
    ) -> None:
        # Every text field arrives encoded (bytes, by wire_text or the serializer), so
        # packing the call can never fail on this job's content; the delay is clamped
        # here, at the one place every outcome passes, so finish.lua never sees a value
        # Redis would refuse (SET PX, ZADD).
        self._forget(run)
        if run.abandoned:
            return
        if type(delay) is not int or not 0 <= delay <= MAX_DELAY_MS:
            delay = clamp_delay_ms(delay)
        self._acks.extend(
            (
                run.job.id,
                run.token,
                kind,
                payload,
                tb,
                delay,
                keep.count if keep is not None else -1,
                keep.age if keep is not None else -1,
                meta,
            )
        )
        self._done.append((run, kind, result, exc, delay))
        self._signal.set()

    def _after_finish(self, done: list[Any], statuses: list[Any]) -> None:
        q = self.queue
        loop = self._loop
        assert loop is not None
        metrics, events = q.metrics, self._events
        for (run, kind, result, exc, delay), status in zip(done, statuses, strict=False):
            job = run.job
            if status != b"ok":
                if status == b"lease-lost":
                    log.warning(
                        "queue %s: lease of job %s was lost before its outcome (%s) was "
                        "recorded (lock_duration=%d ms); another worker may run it. Raise "
                        "lock_duration if jobs block the event loop or Redis was unreachable",
                        q.name,
                        job.id,
                        kind,
                        q.lock_duration_ms,
                    )
                elif status == b"missing":
                    log.warning("queue %s: job %s was removed while it ran", q.name, job.id)
                elif status == b"damaged":
                    log.error(
                        "queue %s: the record of job %s is damaged (its key holds another "
                        "type); its outcome (%s) was not recorded",
                        q.name,
                        job.id,
                        kind,
                    )
                continue
            self.processed += 1
            if kind == "C":
                if events.wants("job-completed"):
                    events.emit(EventData("job-completed", q.name, job.id, job=job, result=result))
                if metrics is not None:
                    tags = {"queue": q.name, "job_name": job.name}
                    metrics.increment("jobs.completed", 1, tags)
                    metrics.observe("job.duration_ms", (loop.time() - run.started) * 1000, tags)
            elif kind == "R":
                log.info(
                    "queue %s: job %s failed (attempt %d/%d), retrying in %d ms: %s",
                    q.name,
                    job.id,
                    job.attempts,
                    run.policy.attempts,
                    delay,
                    printable(_describe(exc)),
                )
                if events.wants("job-failed"):
                    events.emit(
                        EventData(
                            "job-failed", q.name, job.id, job=job, error=exc, extra={"final": False}
                        )
                    )
                if events.wants("job-retrying"):
                    events.emit(
                        EventData(
                            "job-retrying", q.name, job.id, job=job, error=exc, delay_ms=delay
                        )
                    )
                if metrics is not None:
                    metrics.increment("jobs.retried", 1, {"queue": q.name, "job_name": job.name})
            elif kind == "F":
                log.error(
                    "queue %s: job %s failed for good after %d attempt(s): %s",
                    q.name,
                    job.id,
                    job.attempts,
                    printable(_describe(exc)),
                )
                if events.wants("job-failed"):
                    events.emit(
                        EventData(
                            "job-failed", q.name, job.id, job=job, error=exc, extra={"final": True}
                        )
                    )
                if metrics is not None:
                    metrics.increment("jobs.failed", 1, {"queue": q.name, "job_name": job.name})
                if q.dlq.enabled:
                    self._dead_lettered(job.id, job)
            elif kind == "D" and events.wants("job-retrying"):
                events.emit(
                    EventData(
                        "job-retrying",
                        q.name,
                        job.id,
                        job=job,
                        error=exc,
                        delay_ms=delay,
                        extra={"attempt_spent": False},
                    )
                )

    def _dead_lettered(self, job_id: str, job: Job | None) -> None:
        q = self.queue
        if q.metrics is not None and job is not None:
            q.metrics.increment("jobs.dlq", 1, {"queue": q.name, "job_name": job.name})
        if self._events.wants("job-dlq"):
            self._events.emit(EventData("job-dlq", q.name, job_id, job=job))
        handler = q.dlq.notification_handler
        if handler is not None:
            assert self._loop is not None
            self._loop.create_task(self._notify_dlq(handler, job_id))

    async def _notify_dlq(self, handler: Callable[..., Any], job_id: str) -> None:
        try:
            info = await self.queue.get_job_status(job_id)
            out = handler(info)
            if inspect.isawaitable(out):
                await out
        except Exception:
            log.exception("dlq.notification_handler failed for job %s", job_id)

    async def _update(self, job: Job, kind: str, value: Any) -> None:
        q = self.queue
        if kind == "progress":
            # Plain JSON (no codecs: the event stream carries small values as they are);
            # NaN, surrogates or huge ints raise SerializationError in this job alone.
            raw = _PROGRESS_JSON.dumps(value, "progress")
            if len(raw) > MAX_PROGRESS_BYTES:
                raise PayloadTooLargeError(
                    f"progress of job {job.id} is {len(raw)} bytes encoded, above "
                    f"{MAX_PROGRESS_BYTES}; report a small value (a percentage, a few counters)"
                )
        else:
            raw = wire_text(safe_text(value), MAX_LOG_LINE_CHARS)
        await q.run("update", [job.id, job.lease_token, kind, raw, q.max_log_lines])
        if kind == "progress" and self._events.wants("job-progress"):
            self._events.emit(EventData("job-progress", q.name, job.id, job=job, progress=value))

    # ------------------------------------------------------------------ background loops
    async def _waker(self) -> None:
        q = self.queue
        backoff = 0.05
        while True:
            await self._want_block.wait()
            try:
                popped = await self._bclient.bzpopmin(q.keys.marker, timeout=_MAX_IDLE_S)
            except asyncio.CancelledError:
                raise
            except _NET_ERRORS as exc:
                self._report_outage(exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                self._signal.set()
                continue
            except ResponseError as exc:
                # e.g. UNBLOCKED: the primary was demoted while we waited (failover).
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
                log.exception("worker %s: wake-up wait failed; retrying", self.id)
                await asyncio.sleep(1.0)
                self._signal.set()
                continue
            backoff = 0.05
            if popped and (self._stopping or self._free() <= 0):
                # Not ours to use: hand the wake-up on to another worker.
                with contextlib.suppress(*_NET_ERRORS):
                    await self._client.zadd(q.keys.marker, {"0": 0})
            self._want_block.clear()
            self._signal.set()

    async def _renew(self) -> None:
        interval = self.queue.lock_renew_ms / 1000
        while True:
            await asyncio.sleep(interval)
            calls, sent = self._extend_calls()
            if not calls:
                continue
            try:
                replies = await self.queue.scripts.pipeline(self._client, calls)
            except _NET_ERRORS as exc:
                self._report_outage(exc)
                continue
            except Exception:
                log.exception("worker %s: lease renewal failed; retrying", self.id)
                continue
            self._after_extend(replies, sent)

    def _extend_calls(self) -> tuple[list[ScriptCall], dict[str, _Run]]:
        """``extend`` calls renewing every lease this worker holds (500 per call)."""
        runs = [r for r in self._jobs.values() if not r.abandoned]
        calls = []
        for i in range(0, len(runs), 500):
            args: list[Any] = [self.queue.lock_duration_ms]
            for r in runs[i : i + 500]:
                args.append(r.job.id)
                args.append(r.token)
            calls.append(self.queue.call("extend", args))
        return calls, {r.job.id: r for r in runs}

    def _after_extend(self, replies: list[Any], sent: dict[str, _Run]) -> None:
        for reply in replies:
            if isinstance(reply, Exception):
                log.error(
                    "worker %s: lease renewal failed: %s",
                    self.id,
                    self.queue.connection.redact(reply),
                )
                continue
            lost, cancelled = reply
            for b in lost:
                self._abandon(b.decode(), sent.get(b.decode()))
            for b in cancelled:
                run = self._jobs.get(b.decode())
                if run is not None and run.task is not None and not run.task.done():
                    run.reason = "cancelled"
                    run.task.cancel()

    def _forget(self, run: _Run) -> None:
        # By identity: a newer run of the same job id may have replaced this one.
        if self._jobs.get(run.job.id) is run:
            del self._jobs[run.job.id]
            if self._slots is not None:
                self._slots.released()

    def _abandon(self, job_id: str, run: _Run | None = None) -> None:
        # ``run``: the run whose lease was found lost (default: the current one).
        run = run or self._jobs.get(job_id)
        if run is None or run.abandoned:
            return
        self._forget(run)
        run.abandoned = True
        log.warning(
            "queue %s: lease of job %s expired (lock_duration=%d ms) and the job was handed to "
            "another worker; abandoning this run. Raise lock_duration, or keep the event loop "
            "free so leases renew on time",
            self.queue.name,
            job_id,
            self.queue.lock_duration_ms,
        )
        if run.task is not None and not run.task.done():
            run.task.cancel()
        self._signal.set()

    async def _sweep(self) -> None:
        q = self.queue
        interval = q.stalled_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            if self._stopping:
                continue
            try:
                back, dead = await q.run(
                    "recover", [q.settings.max_stalled_count, "1" if q.dlq.enabled else "0", 1000]
                )
            except _NET_ERRORS as exc:
                self._report_outage(exc)
                continue
            except Exception:
                log.exception("worker %s: stalled-job sweep failed", self.id)
                continue
            if back or dead:
                self._note_recovered(back, dead)


async def serve_until_stopped(
    stopped: asyncio.Event,
    close: Callable[[], Awaitable[None]],
    *,
    install_signal_handlers: bool = True,
) -> None:
    """Wait for ``stopped``; SIGTERM/SIGINT call ``close()`` (a graceful stop) meanwhile."""
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    if install_signal_handlers:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, lambda: asyncio.ensure_future(close()))
                installed.append(sig)
            except (NotImplementedError, RuntimeError):
                pass
    try:
        await stopped.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


#: Encodes progress values: plain JSON, checked like job data.
_PROGRESS_JSON = Serializer(())


def _is_async(fn: Callable[..., Any]) -> bool:
    target = fn.func if isinstance(fn, functools.partial) else fn
    return inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(
        getattr(target, "__call__", None)  # noqa: B004
    )


def _traceback_text(exc: BaseException) -> bytes:
    """The traceback as recorded on the job, encoded: each part (a huge exception message
    too) clipped, then the innermost MAX_TRACEBACK_CHARS kept. Never raises: surrogates
    in any message of the chain are escaped (``wire_text``), and a traceback that cannot
    be formatted at all is replaced by the exception's description."""
    try:
        parts = traceback.format_exception(type(exc), exc, exc.__traceback__)
        text = "".join(clip(safe_text(p), _MAX_ERR) for p in parts)[-_MAX_TB:]
    except Exception as fmt:
        text = f"{_describe(exc)}\n(traceback unavailable: {_describe(fmt)})"
    return wire_text(text, _MAX_TB)


def _describe(exc: BaseException | None) -> str:
    """``"<type>: <message>"`` of an error, clipped to MAX_ERROR_CHARS. Never raises: an
    exception whose ``__str__`` raises or returns a non-string is described by type."""
    if exc is None:
        return "unknown error"
    return clip(f"{_safe_name(exc)}: {safe_text(exc)}", _MAX_ERR)


def _safe_name(exc: BaseException) -> str:
    """The exception's type name (a plain str even for odd, dynamically made types)."""
    name = getattr(type(exc), "__name__", None)
    return name if type(name) is str else "Exception"


def _keep_args(keep: Any) -> tuple[int, int]:
    """Retention count and age of a finish outcome (-1 = unlimited; see finish.lua)."""
    if keep is None:
        return -1, -1
    return keep.count, keep.age


def _server_refusal(exc: Exception) -> bool:
    """Whether Redis refused a call for a reason of the whole server rather than of what
    the call carried: out of memory, a script running too long (BUSY), the dataset
    loading, missing replicas, or an ACL permission. Sending the outcomes one by one
    would not help and would wrongly fail jobs; they are kept and sent again later."""
    if isinstance(
        exc, (OutOfMemoryError, NoPermissionError, PermissionDeniedError, BusyLoadingError)
    ):
        return True
    return safe_text(exc).startswith(_SERVER_REFUSALS)


# Error replies (their leading code) that concern the server, not one call's arguments.
_SERVER_REFUSALS = ("OOM", "BUSY", "LOADING", "NOREPLICAS", "MASTERDOWN", "NOPERM")
