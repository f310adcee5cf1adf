"""Runs one job to an outcome: claimed entry → ``Job`` → decode → process middleware →
async, thread or process → outcome (``Outcomes.ack``).

Every way a run can end becomes exactly one outcome:

* the processor returned: ``C`` (completed; an awaitable it returned is awaited first;
  one that blocked the loop past its timeout is kept, with a warning), unless the result
  cannot be encoded or is larger than ``max_payload_bytes`` (then a final failure);
* no processor for its name: ``D`` when another live worker has one (``handoff.py``),
  else a failure like any other;
* it raised: ``R`` (retry after the backoff delay) while attempts remain, else ``F``;
  ``NonRetryableError`` is ``F`` at once; ``RetryLater``/``RateLimited`` is ``D``
  (deferred, no attempt spent, with the rate-limit hold of ``RateLimited``; one whose
  ``delay_ms`` cannot be read is ``F``, one whose ``reason`` cannot be read is deferred
  with a reason saying so). A ``BaseException`` that is not an ``Exception`` (a custom
  abort signal, a ``CancelledError`` or ``GeneratorExit`` the processor raised itself)
  is a failure like any other, as is a ``StopIteration`` raised in a thread
  (which asyncio cannot hand over as it is); ``KeyboardInterrupt`` and ``SystemExit``
  end the process, the job left leased until recovered (``runends.py``);
* its payload cannot be decoded: ``F`` ("undecodable payload: ...");
* it was cancelled: by its timeout (a failure like any other: ``R`` or ``F``; a plain
  ``def`` run's recorded once its thread returned with ``worker.thread_overrun="hold"``,
  ``overruns.hold``), by ``cancel_job()`` (``F``), by shutdown (``H``, handed back
  unspent), or because its lease was lost (abandoned: no outcome at all, another worker
  owns the job now).

The tracing span (``telemetry``) stays here around the processor call; the lifecycle
hooks report the rest (``started`` here, ``progress`` from ``update``, ``finished`` once
Redis recorded the outcome). A done callback on every run's task (``runends.RunEnds``)
is the safety net: a run whose task ended without an outcome is given one there.
``update`` writes a progress value or log line as the queue's job-text filters rewrite
it (``jobtexts.py``: a feature may seal it).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import heapq
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import orjson

from . import overruns, runends
from .backoff import UnknownStrategyError, retry_delay
from .errors import (
    ConfigurationError,
    NonRetryableError,
    PayloadTooLargeError,
    RateLimited,
    RetryLater,
    SerializationError,
)
from .handoff import Handoff
from .job import Job
from .jobspec import POLICY_OPTIONS
from .jobtexts import record_job_text, relayed
from .leases import Run
from .lifecycle import mark_running
from .limits import (
    MAX_ERROR_CHARS,
    MAX_FOLLOWS,
    MAX_OPTIONS_BYTES,
    MAX_RUN_CONTEXT_CHARS,
    clamp_delay_ms,
    clip,
    get_logger,
    printable,
    safe_text,
    wire_text,
)
from .middleware import run_process_chain
from .options import BackoffOptions
from .outcomes import CANCELLED, describe, traceback_text
from .processors import check_processor, runs_async, settled
from .procpool import ProcessPool, import_path
from .runends import FAILING_CANCELS, PROCESS_EXITS, RunEnds, cancelled, no_stop, not_cancelled
from .wire import CLAIM_JOB, Kind

if TYPE_CHECKING:
    from .adapters import TelemetryAdapter
    from .hooks import HookBus
    from .leases import Leases
    from .options import Policy
    from .outcomes import Outcomes
    from .queue import JobQueue

__all__ = ["Runner", "Timeouts"]

log = get_logger("kitium_queue.worker")

#: Encodes progress values: plain JSON, checked like job data.
# Positions in one claimed job (wire.CLAIM_JOB).
_ID = CLAIM_JOB.index("id")
_NAME = CLAIM_JOB.index("name")
_DATA = CLAIM_JOB.index("data")
_OPTS = CLAIM_JOB.index("opts")
_ATTEMPTS = CLAIM_JOB.index("attempts")
_CREATED = CLAIM_JOB.index("created_at")
_STALLS = CLAIM_JOB.index("stalls")
_FOLLOWS = CLAIM_JOB.index("follows")


class Runner:
    """Runs jobs for one worker; also the ``JobUpdater`` its jobs report progress to.

    Args:
        queue: the queue consumed.
        concurrency: the worker's slots (thread and process pool sizes).
        hooks: the queue's lifecycle hooks (``started``, ``progress``).
        outcomes: where outcomes go.
        leases: the worker's leases (a cancelled abandoned run is forgotten there).
    """

    def __init__(
        self,
        queue: JobQueue,
        concurrency: int,
        hooks: HookBus,
        outcomes: Outcomes,
        leases: Leases,
    ) -> None:
        self.queue = queue
        self.concurrency = concurrency
        self.hooks = hooks
        #: The worker's event loop (set by ``start``); threaded processors report to it.
        self.loop: asyncio.AbstractEventLoop | None = None
        self.timeouts = Timeouts(leases.runs)
        self._ack, self._hold, self._forget = outcomes.ack, leases.add, leases.forget
        self._confirm, self._window = leases.confirm, leases.window
        #: Loop time the claim of the jobs ``launch`` gets was sent (their leases run from then).
        self.claim_sent = float("-inf")
        self._ends = RunEnds(self, leases)
        runs = leases.runs
        # plain: a set check per job
        self.handoff = h = Handoff(queue, leases.worker_id, running=lambda: len(runs))
        self._gap = functools.partial(h.gap, deferred=self.deferred)
        self._policies: dict[bytes, Policy] = {}
        self.procs: dict[str, tuple[Callable[..., Any], str]] = {}
        self._pool: ProcessPool | None = None
        self._executor = self._new_executor()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Resolve the registered processors and how each runs."""
        self.loop = loop
        self.timeouts.loop = loop
        for name, fn in self.queue.processors.items():
            self.procs[name] = (fn, self._kind(name, fn))

    async def close(self) -> None:
        """Release the thread pool, the process pool and the timeout timer."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._pool is not None:
            await self._pool.close()
        self.timeouts.close()

    # ------------------------------------------------------------------ one run
    def launch(self, entry: list[Any], token: str, hand_back: bool = False) -> None:
        """Start running one claimed job (a ``wire.CLAIM_JOB`` entry of a claim made with
        lease ``token``, sent at loop time ``claim_sent``) in a task of its own. ``hand_back``:
        the worker is stopping; the job is handed back unstarted instead (started, it would
        be cut off at the end of the grace period, which does not wait for it, and run twice)."""
        raw_opts = entry[_OPTS]
        try:
            opts = orjson.loads(raw_opts) if raw_opts else {}
        except Exception:
            opts = {}
        if not isinstance(opts, dict):
            opts = {}
        # Options that make no policy (a trace context, a key) leave the queue's.
        policy = (
            self.queue.policy if POLICY_OPTIONS.isdisjoint(opts) else self._policy(raw_opts, opts)
        )
        job = Job(
            id=entry[_ID].decode(),
            name=entry[_NAME].decode(errors="replace"),
            data=None,
            attempts=int(entry[_ATTEMPTS]),
            max_attempts=policy.attempts,
            created_at=int(entry[_CREATED] or 0),
            options=opts,
            queue_name=self.queue.name,
            stalls=int(entry[_STALLS] or 0),
            token=token,
            updater=self,
            follows=None if entry[_FOLLOWS] is None else _follows(entry[_FOLLOWS]),
        )
        run = Run(job, token, policy)
        run.start_by = self.claim_sent + self._window
        if hand_back:
            self._ack(run, Kind.HAND_BACK, b"", b"", 0, None, None, None)
            return
        self._hold(run)
        assert self.loop is not None
        run.task = task = self.loop.create_task(self.run(run, entry[_DATA]))
        task.add_done_callback(functools.partial(self._ends.ended, run))

    def _policy(self, raw: bytes, opts: dict[str, Any]) -> Policy:
        """The policy of a job with the stored options ``raw`` (parsed: ``opts``),
        cached by their text."""
        p = self._policies.get(raw)
        if p is None:
            if len(self._policies) > 1000:
                self._policies.clear()
            try:
                p = self.queue.policy_for(opts)
            except Exception:
                p = self.queue.policy
            self._policies[raw] = p
        return p

    async def run(self, run: Run, raw: bytes) -> None:
        """Run ``run``'s job on its encoded payload ``raw`` to an outcome (the task of
        one run). Re-raises a cancellation that came from outside the worker."""
        q, job, loop = self.queue, run.job, self.loop
        assert loop is not None
        span = None
        try:
            try:
                job.data = q.serializer.loads(raw)
            except SerializationError as exc:
                self.fail_final(run, exc, f"undecodable payload: {safe_text(exc)}")
                return
            found = self.procs.get(job.name) or self.procs.get("*") or await self._lookup(run)
            h = self.handoff
            gap = h.lacking or not job.options.keys() <= h.plain
            if found is None or (gap and await self._gap(run)):
                return  # deferred for a live worker with its processor, or a feature
            fn, kind = found
            if loop.time() > run.start_by and not await self._confirm(run):
                if not run.abandoned:  # still leased when last asked: back, not stalled
                    self._ack(run, Kind.HAND_BACK, b"", b"", 0, None, None, None)
                return  # its lease may have run out before it could start (leases.py)
            mark_running(q, run)  # for features acting for this run (lifecycle.running)
            if q.telemetry is not None:
                span = _span(q.telemetry, q.name, job)
            if self.hooks.started:
                self.hooks.emit_started(q.name, job)
            run.started = loop.time()
            if run.policy.timeout_ms:
                self.timeouts.watch(run, run.started + run.policy.timeout_ms / 1000)
            if q.process_middleware:
                result = await run_process_chain(
                    q.process_middleware, job, functools.partial(self._call, fn, kind, run)
                )
            else:
                result = await self._call(fn, kind, run)
            run.deadline = None
            if run.policy.timeout_ms and kind != "process":  # a child cannot block the loop
                self._ends.overran(run, loop.time())
            if run.reason is not None:  # it caught the cancellation of its timeout or cancel
                overruns.ignored(run, self, loop.time())
            self._completed(run, result)
        except asyncio.CancelledError as exc:
            run.deadline = None
            if cancelled(run):
                if not self.interrupted(run):
                    raise
            else:
                # Raised by the processor (or handed to it as a batch reply), not a
                # cancellation of this run: handing the job back would run it again at
                # once, for ever, without spending an attempt.
                if span is not None:
                    span.record_exception(exc)
                self.failed(run, exc, not_cancelled(exc))
        except RetryLater as exc:
            run.deadline = None
            self.deferred(run, exc)
        except NonRetryableError as exc:
            run.deadline = None
            self.fail_final(run, exc, describe(exc))
        except PROCESS_EXITS as exc:
            self._ends.process_exit(run, exc)  # they end the process, as asyncio lets them
            raise
        except BaseException as exc:
            if isinstance(exc, GeneratorExit) and asyncio.current_task(loop) is not run.task:
                raise  # its coroutine is being closed (its loop is gone): nothing to record
            # Any other error, a BaseException that is not an Exception too (a custom
            # abort signal, a framework's exit exception, a GeneratorExit the processor
            # raised itself): a processor error.
            run.deadline = None
            if span is not None:
                span.record_exception(exc)
            self.failed(run, exc)
        finally:
            if span is not None:
                span.end()

    def _completed(self, run: Run, result: Any) -> None:
        q = self.queue
        try:
            payload = q.serializer.dumps(result, "result")
        except SerializationError as exc:
            self.fail_final(run, exc, safe_text(exc))
            return
        if len(payload) > q.max_payload_bytes:  # as add_job refuses data: the same error
            err = PayloadTooLargeError(
                f"result of job {run.job.id} is {len(payload)} bytes encoded, above "
                f"max_payload_bytes={q.max_payload_bytes}; store large results elsewhere "
                "and return a reference"
            )
            self.fail_final(run, err, describe(err))
            return
        job = run.job
        self._ack(
            run, Kind.COMPLETED, payload, b"", 0, run.policy.keep_completed, result, None,
            b"" if job.run_context is None else _context(job.run_context),
        )  # fmt: skip

    def interrupted(self, run: Run) -> bool:
        """The run's task was cancelled: record why. False when the cancellation came from
        outside the worker (the job is handed back, and the caller re-raises)."""
        if run.abandoned:
            self._forget(run)
            return True
        reason = run.reason
        if reason == "timeout":
            job = run.job
            self.failed(
                run,
                TimeoutError(
                    f"job {job.id} ({job.name}) exceeded its timeout of {run.policy.timeout_ms} ms"
                ),
            )
        elif reason == "cancelled":
            self.fail_final(run, None, CANCELLED)
        else:
            self._ack(run, Kind.HAND_BACK, b"", b"", 0, None, None, None)
            return reason == "shutdown"
        return True

    # ------------------------------------------------------------------ outcomes
    def failed(self, run: Run, exc: BaseException, reason: str | None = None) -> None:
        """The processor raised ``exc``: retry after the backoff delay while attempts
        remain (and the backoff says so), else fail for good. ``reason``: the text
        recorded (default: ``describe(exc)``)."""
        job = run.job
        tb = traceback_text(exc)
        if reason is None:
            reason = describe(exc)
        if job.attempts < run.policy.attempts:
            try:
                delay = retry_delay(
                    run.policy, job.attempts, exc, job, self.queue.backoff_strategies
                )
            except UnknownStrategyError as unknown:
                # add_job refuses an unknown strategy, but the producer may run in a
                # process that registered it while this one did not: retry with the
                # default backoff rather than spend the remaining attempts, and say so.
                fallback = replace(run.policy, backoff=BackoffOptions())
                delay = retry_delay(fallback, job.attempts, exc, job, {})
                reason = f"{reason} [{unknown}; retried with the default exponential backoff]"
                log.warning(
                    "queue %s: job %s: %s", self.queue.name, printable(job.id), printable(unknown)
                )
            except Exception as bexc:
                self.fail_final(run, bexc, f"{reason} (and backoff failed: {describe(bexc)})")
                return
            if delay is not None:
                self._ack(
                    run,
                    Kind.RETRY,
                    wire_text(reason, MAX_ERROR_CHARS),
                    tb,
                    delay,
                    None,
                    reason,
                    exc,
                )
                return
        self._ack(
            run,
            Kind.FAILED,
            wire_text(reason, MAX_ERROR_CHARS),
            tb,
            0,
            run.policy.keep_failed,
            reason,
            exc,
            b"" if job.run_context is None else _context(job.run_context),
        )

    def deferred(self, run: Run, exc: RetryLater) -> None:
        """The processor raised ``RetryLater`` / ``RateLimited``: defer the job."""
        try:
            # Clamped again here: the attribute may have been changed after construction
            # (to anything: a property of a subclass may even raise when read).
            delay = clamp_delay_ms(exc.delay_ms)
        except Exception as bad:
            self.fail_final(run, exc, f"{describe(exc)} with an invalid delay_ms ({describe(bad)})")
            return
        meta = b""
        if isinstance(exc, RateLimited):
            try:
                hold = exc.hold(run.job.options)
            except Exception as bad:  # a subclass overriding hold()
                self.fail_final(run, exc, f"{describe(exc)}: hold() failed ({describe(bad)})")
                return
            if hold is not None and delay > 0:
                # A hold name is a key: bounded like the options it comes from.
                meta = wire_text(self.queue.keys.hold_name(hold), MAX_OPTIONS_BYTES)
        try:
            why = clip(safe_text(exc.reason), MAX_ERROR_CHARS)
        except Exception as bad:
            why = clip(
                f"{describe(exc)} (its reason cannot be read: {describe(bad)})", MAX_ERROR_CHARS
            )
        self._ack(
            run, Kind.DEFER, wire_text(why, MAX_ERROR_CHARS), b"", delay, None, why, exc, meta
        )

    def fail_final(self, run: Run, exc: BaseException | None, reason: str) -> None:
        """Fail the job for good (dead-lettered when the DLQ is enabled) with ``reason``."""
        tb = b""
        if exc is not None and exc.__traceback__ is not None:
            tb = traceback_text(exc)
        err = exc if exc is not None else RuntimeError(reason)
        ctx = run.job.run_context
        self._ack(
            run,
            Kind.FAILED,
            wire_text(reason, MAX_ERROR_CHARS),
            tb,
            0,
            run.policy.keep_failed,
            clip(reason, MAX_ERROR_CHARS),
            err,
            b"" if ctx is None else _context(ctx),
        )

    # ------------------------------------------------------------------ JobUpdater
    async def update(self, job: Job, kind: str, value: Any) -> None:
        """Record ``job``'s progress (``kind="progress"``) or a log line (``"log"``) under
        its lease (``jobtexts.record_job_text``); raises ``LeaseLostError`` when the lease
        is gone. One refused by a full Redis is dropped: the job goes on."""
        written = await record_job_text(self.queue, job, kind, value)
        if written and kind == "progress" and self.hooks.progress:
            self.hooks.emit_progress(self.queue.name, job, value)

    # ------------------------------------------------------------------ processors
    def _new_executor(self) -> runends.DaemonThreads:
        # Daemon threads: a processor left running at the end of a stop's grace period
        # (runends.leave_threads) does not hold the process at exit.
        return runends.DaemonThreads(self.concurrency, f"kq-{self.queue.name}")

    def _kind(self, name: str, fn: Callable[..., Any]) -> str:
        # Refused before the worker claims anything (ConfigurationError from start()).
        check_processor(name, fn)
        mode = self.queue.processor_modes.get(name, "auto")
        if mode == "process":
            if self._pool is None:
                self._pool = ProcessPool(self.concurrency, self.queue.worker_config)
            return "process"
        return "async" if runs_async(fn) else "thread"

    async def _lookup(self, run: Run) -> tuple[Callable[..., Any], str] | None:
        """The processor of a job whose name had none at start (registered later); None
        once the job was deferred for a live worker that has one; else LookupError."""
        name, processors = run.job.name, self.queue.processors
        fn = processors.get(name) or processors.get("*")
        if fn is not None:
            key = name if name in processors else "*"
            try:
                self.procs[name] = (fn, self._kind(key, fn))
            except ConfigurationError as exc:
                raise NonRetryableError(str(exc)) from None
            return self.procs[name]
        self.deferred(run, await self.handoff.missing(run.job.id, name, processors))
        return None

    async def _call(self, fn: Callable[..., Any], kind: str, run: Run) -> Any:
        job = run.job
        if kind == "process":
            assert self._pool is not None  # (the run's timeout stops while a child starts)
            return await self._pool.run(import_path(fn), run, relayed(self.update), self.timeouts)
        pool, cf = self._executor, None
        try:
            if kind == "async":  # its job may run in a pool thread of its own: overruns
                return await settled(await fn(job))
            cf = pool.submit(contextvars.copy_context().run, no_stop, fn, job)
            result = await asyncio.wrap_future(cf)
        except asyncio.CancelledError:
            gave_up = await overruns.hold(run, self, cf)  # worker thread_overrun="hold"
            if cf is not None and not cf.done() and pool is self._executor:
                self._executor = self._new_executor()  # the freed slot can run one: overruns
            overruns.left(run, self, cf, pool, gave_up)
            raise
        # A plain function that returned an awaitable (a sync decorator around an async
        # def, a lambda returning a coroutine): awaited here, on the worker's loop.
        return await settled(result)


class Timeouts:
    """Cancels runs that pass their ``timeout``: one timer for all running jobs (earliest
    deadline first) instead of a timer per job.

    Finished runs leave stale heap entries (their ``deadline`` was reset) that are
    skipped, and the heap is rebuilt from the live runs when stale entries dominate.
    """

    def __init__(self, runs: dict[str, Run]) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self._runs = runs
        self._heap: list[tuple[float, int, Run]] = []
        self._at: float | None = None
        self._handle: asyncio.TimerHandle | None = None

    def watch(self, run: Run, deadline: float) -> None:
        """Cancel ``run`` (reason ``timeout``) at loop time ``deadline``."""
        run.deadline = deadline
        heap = self._heap
        if len(heap) > 64 and len(heap) > 4 * len(self._runs):
            heap[:] = [(r.deadline, id(r), r) for r in self._runs.values() if r.deadline]
            heapq.heapify(heap)
        heapq.heappush(heap, (deadline, id(run), run))
        if self._at is None or deadline < self._at:
            self._arm()

    def close(self) -> None:
        """Stop the timer."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _arm(self) -> None:
        self.close()
        self._at = None
        if self._heap and self.loop is not None:
            self._at = self._heap[0][0]
            self._handle = self.loop.call_at(self._at, self._fire)

    def _fire(self) -> None:
        self._handle = None
        assert self.loop is not None
        now = self.loop.time()
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, _, run = heapq.heappop(heap)
            if run.deadline == deadline:
                run.deadline = None
                if run.task is not None and not run.task.done():
                    run.reason = "timeout"
                    run.task.cancel(FAILING_CANCELS[0])
        self._arm()


def _span(telemetry: TelemetryAdapter, queue_name: str, job: Job) -> Any:
    # The tracing span of one run (OpenTelemetry will become a lifecycle subscriber).
    return telemetry.start_span(
        "kitium.process",
        {
            "queue": queue_name,
            "job.id": job.id,
            "job.name": job.name,
            "job.attempt": job.attempts,
        },
    )


def _follows(raw: bytes) -> tuple[str, ...]:
    """``Job.follows`` from a claimed job's ``fw`` field (read back from Redis:
    untrusted): at most ``MAX_FOLLOWS`` non-empty lines of at most
    ``MAX_RUN_CONTEXT_CHARS`` characters each."""
    if not raw:
        return ()
    lines = raw.decode("utf-8", "replace").split("\n", MAX_FOLLOWS)[:MAX_FOLLOWS]
    return tuple(line for line in lines if line and len(line) <= MAX_RUN_CONTEXT_CHARS)


def _context(ctx: object) -> bytes:
    """A run context as sent with an outcome; ``b""`` (none) unless it is printable
    ASCII of 1 to ``MAX_RUN_CONTEXT_CHARS`` characters (what ``Job.run_context``
    promises the features' Lua)."""
    if (
        type(ctx) is str
        and 0 < len(ctx) <= MAX_RUN_CONTEXT_CHARS
        and ctx.isascii()
        and ctx.isprintable()
    ):
        return ctx.encode()
    return b""
