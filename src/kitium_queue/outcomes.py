"""Outcomes on their way to Redis, and what happens once Redis recorded them.

A run ends with ``Outcomes.ack``, which appends the outcome's ``wire.FINISH_OUTCOME``
arguments to the batch the pump sends in its next ``finish`` call. Once Redis answered,
``settle`` reports each recorded outcome on the lifecycle hooks (``finished``, then
``dead_lettered`` for a final failure sent to the DLQ) — never before: a ``finished``
call means the outcome is durable.

One job's outcome never costs another job its own:

* every text recorded for a job (error reason, traceback, retry or defer reason) is
  clipped and encoded by ``limits.wire_text`` when the outcome is built, which never
  fails (lone surrogates become backslash escapes; ``__str__`` that raises is described
  by its type), and every delay is clamped to ``limits.MAX_DELAY_MS`` here;
* a finish call Redis refuses (an error reply that is not a lost connection) is split:
  each of its outcomes is sent again alone in the next round. An outcome refused even
  alone is replaced by a final failure of its job ("outcome could not be recorded:
  ..."); if Redis refuses that too, an error is logged and the job is left to lease
  expiry and recovery. Nothing is retried more than twice this way. Refusals that
  concern the whole server rather than the call (out of memory, a script running too
  long, a missing ACL permission) are not split: the outcomes are kept and sent again,
  as during an outage.

Log lines keep the worker's logger name (``kitium_queue.worker``).
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, cast

from redis.exceptions import BusyLoadingError, NoPermissionError, OutOfMemoryError

from .connection import outage
from .errors import DamagedKeyError, PermissionDeniedError, WriteRefusedError
from .hooks import Outcome, OutcomeKind
from .limits import (
    MAX_DELAY_MS,
    MAX_ERROR_CHARS,
    MAX_TRACEBACK_CHARS,
    clamp_delay_ms,
    clip,
    get_logger,
    printable,
    safe_text,
    wire_text,
)
from .middleware import filter_failure_texts
from .wire import FINISH_OUTCOME, OUTCOME_CODES, Kind

if TYPE_CHECKING:
    from .hooks import HookBus
    from .leases import Run
    from .queue import JobQueue
    from .scripts import ScriptCall

__all__ = [
    "DATA_LOST",
    "FINISH_CHUNK",
    "Outcomes",
    "describe",
    "keep_args",
    "safe_name",
    "server_refusal",
    "traceback_text",
]

log = get_logger("kitium_queue.worker")

#: Outcomes sent in one ``finish`` call.
FINISH_CHUNK = 500
#: The reason of a run cancel_job() stopped (finish.lua records an outcome of a job it
#: flagged, other than a completion, as a failure with this reason: status 'cancelled').
CANCELLED = "cancelled by cancel_job()"
_FIELDS = len(FINISH_OUTCOME)

#: The cause of a job gone while it ran that no call of the queue's made (log lines).
DATA_LOST = (
    "Redis lost its data: a restart without persistence, or a failover to a replica that "
    "did not have it"
)

# An outcome waiting for its reply: the run, its kind, the value (the result for C, the
# reason text for R, F and D, None for H), the error, the delay.
Done = tuple["Run", str, Any, "BaseException | None", int]
# An outcome sent in a finish call of its own: its arguments, the outcome, the stage.
Solo = tuple[list[Any], Done, int]
# What one pump round sends: the shared arguments, their outcomes, the solo outcomes.
Batch = tuple[list[Any], list[Done], list[Solo]]
# Stages of an outcome sent alone after Redis refused the call that carried it.
_ALONE = 1  # the outcome itself
_FALLBACK = 2  # the final failure recorded in its place
# Outcome codes a ``finished`` call may be skipped for (never F: it also dead-letters).
_SKIPPABLE = "CRDH"
# The ``Outcome.kind`` of each outcome code.
_HOOK_KINDS: Final = {code: cast(OutcomeKind, kind) for code, kind in OUTCOME_CODES.items()}


class Outcomes:
    """The outcomes of one worker's runs, from ``ack`` to ``settle``.

    Args:
        queue: the queue consumed.
        worker_id: the worker's id (log lines).
        hooks: the queue's lifecycle hooks.
        forget: releases a run's slot (``Leases.forget``).
        wake: wakes the pump (an outcome is ready to send).
    """

    def __init__(
        self,
        queue: JobQueue,
        worker_id: str,
        hooks: HookBus,
        *,
        forget: Callable[[Run], None],
        wake: Callable[[], None],
    ) -> None:
        self.queue = queue
        self.worker_id = worker_id
        self.hooks = hooks
        self.acks: list[Any] = []  # flat finish arguments, _FIELDS per outcome
        self.done: list[Done] = []
        self.solo: list[Solo] = []
        #: Outcomes Redis recorded.
        self.recorded = 0
        # Runs whose outcomes were held while Redis was unreachable (``held(exc)``) until
        # their replies are settled.
        self._held_out: set[Run] = set()
        #: Of those, the jobs found gone (id, outcome code): ``Leases.report_gone``.
        self.gone: list[tuple[str, str]] = []
        self._forget = forget
        self._wake = wake
        # The queue's failure-text filters (the list itself: later additions count).
        self._texts = queue.failure_text_filters
        # The ``finished`` subscribers last seen, and their ``quiet_outcomes`` (or None).
        self._fin: tuple[Callable[..., None], ...] | None = None
        self._quiet: list[Callable[[], str] | None] = []
        # Their answers (one tuple of codes) -> the codes common to all.
        self._combined: dict[tuple[str, ...], str] = {}

    def ack(
        self,
        run: Run,
        kind: str,
        payload: bytes,
        tb: bytes,
        delay: int,
        keep: Any,
        value: Any,
        exc: BaseException | None,
        meta: bytes = b"",
    ) -> None:
        """Queue the outcome of ``run`` for the next finish call (nothing for an abandoned
        run). ``payload``, ``tb`` and ``meta`` arrive encoded (by ``wire_text`` or the
        serializer), so packing the call can never fail on this job's content; ``value``
        is the result (C) or the reason text (R, F, D) the hooks receive."""
        self._forget(run)
        if run.abandoned:
            return
        # The one place every outcome passes: finish.lua never sees a delay Redis would
        # refuse (SET PX, ZADD).
        if type(delay) is not int or not 0 <= delay <= MAX_DELAY_MS:
            delay = clamp_delay_ms(delay)
        if keep is None and kind != "C":  # R, D, H: kept as a failure if a cancel comes first
            keep = run.policy.keep_failed
        # R, F: stored as the job's e and tb; D: a deferral's reason, in the event stream.
        if self._texts and (kind == "R" or kind == "F" or kind == "D"):
            payload, tb = filter_failure_texts(self._texts, run.job, exc, payload, tb)
        # wire.FINISH_OUTCOME, in order.
        self.acks.extend(
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
        self.done.append((run, kind, value, exc, delay))
        self._wake()

    def pending(self) -> bool:
        """Whether outcomes wait to be sent."""
        return bool(self.acks or self.solo)

    def held(self, failed: BaseException | None = None) -> int:
        """Outcomes held that Redis has not recorded yet. ``failed``: the error a round
        failed with; when it says Redis is unreachable (``connection.outage``: not a
        refusal), the runs of those outcomes are marked, so that one found gone once
        Redis answers again is checked and reported (``Leases.report_gone``)."""
        if failed is not None and outage(failed):
            self._held_out.update(d[0] for d in self.done)
            self._held_out.update(s[1][0] for s in self.solo)
        return len(self.acks) // _FIELDS + len(self.solo)

    def report_unflushed(self, left: bool, waited_s: float, unreachable: bool, cut: bool) -> None:
        """Whether the worker's pumps were ``left`` running at the end of the flush
        timeout of ``stop()`` (``waited_s``): if so, say what was left and why, without
        blaming the network when it was not ``unreachable``, nor at all when the stop was
        ``cut`` short by its caller (forced, or no flush time given): a warning then."""
        if not left:
            return
        held = self.held()
        if cut:
            why = "the stop was forced or given no flush time"
        else:
            why = "Redis unreachable" if unreachable else ""
        if held:
            log.log(
                logging.WARNING if cut else logging.ERROR,
                "worker %s: could not flush %d outcome(s) within %.1f s (%s); those jobs will "
                "run again after their leases expire",
                self.worker_id,
                held,
                waited_s,
                why or "Redis did not answer or refused them",
            )
        else:
            log.log(
                logging.WARNING if cut else logging.ERROR,
                "worker %s: its last claim/finish round did not end within %.1f s (%s); jobs "
                "whose outcome it carried will run again after their leases expire",
                self.worker_id,
                waited_s,
                why or "no reply from Redis",
            )

    # ------------------------------------------------------------------ one round
    def take(self) -> Batch:
        """The outcomes to send this round (solo ones a bounded number per round)."""
        batch = (self.acks, self.done, self.solo[:FINISH_CHUNK])
        self.acks, self.done, self.solo = [], [], self.solo[FINISH_CHUNK:]
        return batch

    def give_back(self, batch: Batch) -> None:
        """The round failed as a whole: keep its outcomes, ahead of newer ones."""
        acks, done, solo = batch
        self.acks = acks + self.acks
        self.done = done + self.done
        self.solo = solo + self.solo

    def calls(self, batch: Batch) -> list[ScriptCall]:
        """The finish calls of ``batch``: the shared ones (``FINISH_CHUNK`` outcomes each),
        then one per solo outcome."""
        q = self.queue
        acks, _, solo = batch
        dlq = _dlq_arg(q.dlq)
        step = _FIELDS * FINISH_CHUNK
        calls = [q.call("finish", [dlq, *acks[i : i + step]]) for i in range(0, len(acks), step)]
        for args, _, _ in solo:
            calls.append(q.call("finish", [dlq, *args]))
        return calls

    def settle(self, replies: list[Any], batch: Batch) -> Exception | None:
        """Handle the replies of ``calls(batch)``. Returns the error of a refusal by the
        whole server, if any (those outcomes are kept for a later round), else None."""
        try:
            return self._settle(replies, batch)
        finally:
            if self._held_out:  # settled (or kept again after a refusal): unmarked
                self._held_out.difference_update(d[0] for d in batch[1])
                self._held_out.difference_update(s[1][0] for s in batch[2])

    def _settle(self, replies: list[Any], batch: Batch) -> Exception | None:
        acks, done, solo = batch
        if not done and not solo:
            return None
        refused: Exception | None = None
        n_shared = -(-len(done) // FINISH_CHUNK)
        if n_shared == 1 and not isinstance(replies[0], Exception):
            self._recorded(done, replies[0])  # the usual round: one call, accepted
        else:
            for c, reply in enumerate(replies[:n_shared]):
                lo, hi = c * FINISH_CHUNK, min((c + 1) * FINISH_CHUNK, len(done))
                if not isinstance(reply, Exception):
                    self._recorded(done[lo:hi], reply)
                elif server_refusal(reply):
                    self.acks.extend(acks[lo * _FIELDS : hi * _FIELDS])
                    self.done.extend(done[lo:hi])
                    refused = reply
                elif hi - lo == 1:
                    self._refused_alone(acks[lo * _FIELDS : hi * _FIELDS], done[lo], reply)
                else:
                    self._split(acks, done, lo, hi, reply)
        for (args, entry, stage), reply in zip(solo, replies[n_shared:], strict=True):
            if not isinstance(reply, Exception):
                self._recorded([entry], reply)
            elif server_refusal(reply):
                self.solo.append((args, entry, stage))
                refused = reply
            elif stage == _ALONE:
                self._refused_alone(args, entry, reply)
            else:
                log.error(
                    "queue %s: Redis refused even the final failure recorded in place of "
                    "an outcome of job %s (%s: %s); the job stays leased and is recovered "
                    "when its lease expires",
                    self.queue.name,
                    printable(entry[0].job.id),
                    type(reply).__name__,
                    safe_text(reply),
                )
        return refused

    def _split(self, acks: list[Any], done: list[Done], lo: int, hi: int, exc: Exception) -> None:
        # One outcome Redis cannot take must not cost the others theirs: send each alone
        # next round. Fencing makes that safe even if the call failed after some writes
        # (those come back as lease-lost).
        log.warning(
            "worker %s: Redis refused a finish call of %d outcomes on queue %s (%s: %s); "
            "sending each alone",
            self.worker_id,
            hi - lo,
            self.queue.name,
            type(exc).__name__,
            safe_text(exc),
        )
        for k in range(lo, hi):
            self.solo.append((acks[k * _FIELDS : (k + 1) * _FIELDS], done[k], _ALONE))

    def _refused_alone(self, args: list[Any], entry: Done, exc: Exception) -> None:
        """An outcome Redis refused in a call of its own: record a final failure of its
        job instead (sent alone next round), saying why, without the outcome's content."""
        run, kind = entry[0], entry[1]
        full = (
            f"outcome could not be recorded (kind {kind}): {type(exc).__name__}: {safe_text(exc)}"
        )
        reason = clip(full, MAX_ERROR_CHARS)
        log.error(
            "queue %s: Redis refused the outcome (%s) of job %s (%s: %s); recording a final "
            "failure instead",
            self.queue.name,
            kind,
            printable(run.job.id),
            type(exc).__name__,
            safe_text(exc),
        )
        count, age = keep_args(run.policy.keep_failed)
        # wire.FINISH_OUTCOME: same id and token, a final failure with the reason.
        fallback = [
            args[0],
            args[1],
            Kind.FAILED,
            wire_text(reason, MAX_ERROR_CHARS),
            b"",
            0,
            count,
            age,
            b"",
        ]
        entry = (run, Kind.FAILED, reason, RuntimeError(full), 0)
        self.solo.append((fallback, entry, _FALLBACK))

    # ------------------------------------------------------------------ recorded
    def _recorded(self, done: list[Done], statuses: list[Any]) -> None:
        """Report the outcomes Redis recorded on the hooks, in order."""
        bus = self.hooks
        name = self.queue.name
        skip = self._skip()
        # True once a hook ran since ``skip`` was asked: a subscriber may have added a
        # listener (queue.on) meanwhile, so ``skip`` is asked again before it is used
        # to skip an outcome. (Skipping less than it could is never wrong: an empty
        # ``skip`` stays as it is.)
        stale = False
        dlq = self.queue.dlq.enabled
        clock = asyncio.get_running_loop().time
        for (run, kind, value, exc, delay), status in zip(done, statuses, strict=False):
            if status == b"cancelled":  # cancel_job() came first: failed for good instead
                kind, value, delay, status = "F", CANCELLED, 0, b"ok"
                exc = RuntimeError(CANCELLED)  # as the worker's own cancel reports it
            if status != b"ok":
                self._not_recorded(run, kind, status)
                continue
            self.recorded += 1
            if kind in skip:
                if not stale:
                    continue
                skip, stale = self._skip(), False
                if kind in skip:
                    continue
            job = run.job
            took = (clock() - run.started) * 1000 if run.started else None
            if kind == "C":
                outcome = Outcome("completed", value, None, None, None, took)
            else:
                wait = delay if kind == "R" or kind == "D" else None
                outcome = Outcome(_HOOK_KINDS[kind], None, exc, value, wait, took)
            if bus.finished:
                bus.emit_finished(name, job, outcome)
            if kind == "F" and dlq and bus.dead_lettered:
                bus.emit_dead_lettered(name, job.id, job, value)
            stale = True

    def _skip(self) -> str:
        """Outcome codes no ``finished`` subscriber would act on right now, so their
        ``Outcome`` is not even built. A subscriber may say which outcomes it ignores
        with a ``quiet_outcomes()`` method returning their codes (``wire.Kind``); the
        built-in ``Observer`` does: with no listener and no metrics adapter a completion
        concerns nobody. A subscriber without that method ignores nothing."""
        fin = self.hooks.finished
        if fin is not self._fin:
            # The subscribers changed (the bus builds a new tuple on every change).
            self._fin = fin
            self._quiet = [
                getattr(getattr(fn, "__self__", None), "quiet_outcomes", None) for fn in fin
            ]
            self._combined.clear()
        quiet = self._quiet
        if not quiet:
            return _SKIPPABLE
        if len(quiet) == 1:
            only = quiet[0]
            if only is None:
                return ""
            codes: str = only()
            # Never F: a final failure also reports dead_lettered.
            return codes if "F" not in codes else codes.replace("F", "")
        if None in quiet:
            return ""
        # Asked again after finished calls: the answers rarely change, their common
        # codes are remembered per combination.
        each = tuple([q() for q in quiet if q is not None])
        common = self._combined.get(each)
        if common is None:
            common = "".join(k for k in _SKIPPABLE if all(k in c for c in each))
            if len(self._combined) < 64:
                self._combined[each] = common
        return common

    def _not_recorded(self, run: Run, kind: str, status: Any) -> None:
        q, job = self.queue, run.job
        if status == b"lease-lost":
            log.warning(
                "queue %s: lease of job %s was lost before its outcome (%s) was "
                "recorded (lock_duration=%d ms); another worker may run it. Raise "
                "lock_duration if jobs block the event loop or Redis was unreachable",
                q.name,
                printable(job.id),
                kind,
                q.lock_duration_ms,
            )
        elif status == b"missing":
            # Deleted or evicted while it ran: reported at a bounded rate (a Redis that
            # evicts may do it to thousands of jobs at once).
            q.ctx.missing.seen(
                1, f"job {printable(job.id)} while it ran; its outcome ({kind}) dropped"
            )
        elif status == b"removed":
            # Record and active entry both gone: taken out by the queue's own call (no
            # eviction warning), run again elsewhere after this lease expired and removed
            # by retention, or gone with Redis' data. After an outage: checked, one line.
            if run in self._held_out:
                self.gone.append((job.id, kind))
                return
            log.info(
                "queue %s: job %s was removed while it ran (cleared with force=True or "
                "erased, run again by another worker after its lease expired and removed "
                "by retention, or %s); its outcome (%s) was dropped",
                q.name,
                printable(job.id),
                DATA_LOST,
                kind,
            )
        elif status == b"damaged":
            log.error(
                "queue %s: the record of job %s is damaged (its key holds another "
                "type); its outcome (%s) was not recorded",
                q.name,
                printable(job.id),
                kind,
            )


def traceback_text(exc: BaseException) -> bytes:
    """The traceback as recorded on the job, encoded: each part (a huge exception message
    too) clipped, then the innermost MAX_TRACEBACK_CHARS kept (for an error raised in a
    process-mode child, the child's traceback comes last). Never raises: surrogates
    in any message of the chain are escaped (``wire_text``), and a traceback that cannot
    be formatted at all is replaced by the exception's description."""
    try:
        parts = traceback.format_exception(type(exc), exc, exc.__traceback__)
        # An error from a child process (procpool.RemoteError) carries the child's own
        # traceback, where the processor's frames are: it goes last, kept first.
        remote = getattr(exc, "remote_traceback", None)
        if isinstance(remote, str) and remote:
            parts.append(f"\nin the child process:\n{remote}")
        text = "".join(clip(safe_text(p), MAX_ERROR_CHARS) for p in parts)[-MAX_TRACEBACK_CHARS:]
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as fmt:
        # ``traceback`` guards only against an ``Exception`` from an exception's
        # ``__str__``: a ``BaseException`` raised there lands here.
        text = f"{describe(exc)}\n(traceback unavailable: {describe(fmt)})"
    return wire_text(text, MAX_TRACEBACK_CHARS)


def describe(exc: BaseException | None) -> str:
    """``"<type>: <message>"`` of an error, clipped to MAX_ERROR_CHARS. Never raises: an
    exception whose ``__str__`` raises or returns a non-string is described by type."""
    if exc is None:
        return "unknown error"
    try:  # a metaclass's __getattr__ may raise anything
        as_raised = getattr(type(exc), "described_as_raised", False) is True
    except Exception:
        as_raised = False
    if as_raised:
        # A process-mode child's error (procpool.RemoteError): its text already names
        # the type the processor raised, as the reason of the other modes does.
        return clip(safe_text(exc), MAX_ERROR_CHARS)
    return clip(f"{safe_name(exc)}: {safe_text(exc)}", MAX_ERROR_CHARS)


def safe_name(exc: BaseException) -> str:
    """The exception's type name (a plain str even for odd, dynamically made types)."""
    name = getattr(type(exc), "__name__", None)
    return name if type(name) is str else "Exception"


def keep_args(keep: Any) -> tuple[int, int]:
    """Retention count and age of a finish outcome (-1 = unlimited; see finish.lua)."""
    if keep is None:
        return -1, -1
    return keep.count, keep.age


def server_refusal(exc: Exception) -> bool:
    """Whether Redis refused a call for a reason of the whole server rather than of what
    the call carried: out of memory, a script running too long (BUSY), the dataset
    loading, missing replicas, an ACL permission, or a key of the queue damaged by hand
    (``DamagedKeyError``: fixed by repairing the key). Sending the outcomes one by one
    would not help and would wrongly fail jobs; they are kept and sent again later."""
    if isinstance(
        exc,
        (
            OutOfMemoryError,
            NoPermissionError,
            PermissionDeniedError,
            BusyLoadingError,
            WriteRefusedError,
            DamagedKeyError,  # a key the call writes holds another type: nothing written
        ),
    ):
        return True
    return safe_text(exc).startswith(_SERVER_REFUSALS)


# Error replies (their leading code) that concern the server, not one call's arguments.
_SERVER_REFUSALS = (
    "OOM",
    "BUSY",
    "LOADING",
    "NOREPLICAS",
    "MASTERDOWN",
    "NOPERM",
    "MISCONF",
    "READONLY",
)


def _dlq_arg(dlq: Any) -> str:
    """What the finish script is told of the DLQ: '0', '1', or '1 <max_jobs> <max_age>'."""
    if not dlq.enabled:
        return "0"
    if dlq.max_jobs is None and dlq.max_age is None:
        return "1"
    return f"1 {-1 if dlq.max_jobs is None else dlq.max_jobs} {dlq.max_age or -1}"
