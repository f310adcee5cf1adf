"""The exception tree of kitium-queue and the mirror of the Lua error codes.

::

    KitiumQueueError
    ├── ConfigurationError          bad option, unknown option, malformed config
    │   └── ScriptArgumentError     a script refused its arguments, wrote nothing (KQ_BAD_ARGUMENT)
    ├── PartialEnqueueError         add_jobs wrote only some chunks; says which jobs
    ├── JobRefusedError             a feature refused a job at enqueue (a full group...)
    ├── FencedError                 a fence is up: the queue takes no new work here (KQ_FENCED)
    ├── SerializationError          data or result that cannot be encoded
    ├── PayloadTooLargeError        encoded payload above max_payload_bytes
    ├── ConnectionUnavailableError  Redis cannot be reached (or refused the credentials)
    ├── PermissionDeniedError       the Redis ACL user lacks a command or key
    ├── WriteRefusedError           Redis refused a write (out of memory, MISCONF, replica)
    ├── JobNotFoundError            no job with that id           (KQ_JOB_NOT_FOUND)
    ├── ScheduleNotFoundError       no schedule with that id
    ├── BreakerNotFoundError        no circuit breaker with that id
    ├── CircuitOpenError            a circuit breaker refused a call while open
    ├── JobStateError               operation not valid in the job's state
    │   ├── JobActiveError          the job is running             (KQ_JOB_ACTIVE)
    │   └── (KQ_BAD_STATE)
    ├── QueueActiveError            clear() while jobs run         (KQ_QUEUE_ACTIVE)
    ├── LeaseLostError              this worker no longer holds the job (KQ_LEASE_LOST)
    └── ProcessorSignal             raised by processors to steer the outcome
        ├── NonRetryableError       fail now, no retry: straight to the DLQ
        └── RetryLater              run again after delay_ms, no attempt spent
            └── RateLimited         the same, and hold the queue (or its key) meanwhile
"""

from __future__ import annotations

from typing import Any

from .limits import MAX_DELAY_MS, clamp_delay_ms

__all__ = [
    "SCRIPT_ERRORS",
    "BreakerNotFoundError",
    "CircuitOpenError",
    "ConfigurationError",
    "ConnectionUnavailableError",
    "FencedError",
    "JobActiveError",
    "JobNotFoundError",
    "JobRefusedError",
    "JobStateError",
    "KitiumQueueError",
    "LeaseLostError",
    "NonRetryableError",
    "PartialEnqueueError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "ProcessorSignal",
    "QueueActiveError",
    "RateLimited",
    "RetryLater",
    "ScheduleNotFoundError",
    "ScriptArgumentError",
    "SerializationError",
    "WriteRefusedError",
    "error_from_script",
]


class KitiumQueueError(Exception):
    """Base class of every error raised by kitium-queue."""


class ConfigurationError(KitiumQueueError, ValueError):
    """An option or configuration value is unknown or invalid."""


class ScriptArgumentError(ConfigurationError):
    """A script refused its arguments (a value out of range, a malformed field list)
    before writing anything; the message names the script and the argument."""


class SerializationError(KitiumQueueError, TypeError):
    """Job data or a result cannot be encoded (or a stored payload decoded)."""


class PayloadTooLargeError(KitiumQueueError, ValueError):
    """An encoded payload is larger than the queue's ``max_payload_bytes``."""


class ConnectionUnavailableError(KitiumQueueError, ConnectionError):
    """Redis cannot be reached."""


class PermissionDeniedError(KitiumQueueError, PermissionError):
    """The Redis ACL user lacks a command or the queue's key pattern (``NOPERM``).

    The message names what was refused; docs/RELIABILITY.md lists the ACL rules a queue
    needs (``~<prefix>:{<queue>}:*`` and the commands its scripts run).
    """


class JobNotFoundError(KitiumQueueError, KeyError):
    """No job with that id exists in the queue."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "job not found"


class ScheduleNotFoundError(KitiumQueueError, KeyError):
    """No schedule with that id exists in the queue."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "schedule not found"


class BreakerNotFoundError(KitiumQueueError, KeyError):
    """No circuit breaker with that id exists in the queue."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "circuit breaker not found"


class CircuitOpenError(KitiumQueueError):
    """A circuit breaker is open (or half-open with every probe place taken) and
    refused the call without running it.

    Attributes:
        breaker_id: the breaker.
        state: ``"open"`` or ``"half-open"``.
        retry_at_ms: when a call may be let through again (ms since the epoch, Redis
            clock): the end of the open timeout, or the deadline of the probes out.
    """

    def __init__(self, breaker_id: str, state: str, retry_at_ms: int) -> None:
        super().__init__(
            f"circuit breaker {breaker_id!r} is {state}: the call was not made; "
            f"it may be tried again from {retry_at_ms} ms (epoch, Redis clock)"
        )
        self.breaker_id = breaker_id
        self.state = state
        self.retry_at_ms = retry_at_ms


class JobStateError(KitiumQueueError):
    """The operation is not valid in the job's current state."""


class JobActiveError(JobStateError):
    """The job is running; wait for it or cancel it."""


class QueueActiveError(KitiumQueueError):
    """The queue has running jobs; the operation needs ``force=True``."""


class LeaseLostError(KitiumQueueError):
    """This worker no longer holds the job's lease: another worker may run it now."""


class ProcessorSignal(Exception):
    """Base of the exceptions a processor raises to choose its job's outcome."""


class NonRetryableError(ProcessorSignal):
    """Fail the job now without further attempts; it goes to the DLQ (or failed)."""


class RetryLater(ProcessorSignal):
    """Run the job again after ``delay_ms`` without spending an attempt.

    Args:
        delay_ms: how long to wait before the job becomes runnable again, clamped to
            ``0 .. MAX_DELAY_MS`` (ten years; ``limits.clamp_delay_ms``): a larger value,
            ``inf`` included, waits ``MAX_DELAY_MS``; a negative one or NaN, none.
        reason: recorded on the job and in the ``job-delayed`` stream event.
    """

    #: The longest delay honoured (ms); longer ones are clamped to it.
    MAX_DELAY_MS = MAX_DELAY_MS

    def __init__(self, delay_ms: float = 1000, reason: str = "retry later") -> None:
        super().__init__(reason)
        self.delay_ms = clamp_delay_ms(delay_ms)
        self.reason = reason


class RateLimited(RetryLater):
    """The processor hit a rate limit: hold the queue (or a key) for ``delay_ms``.

    The job runs again after ``delay_ms`` without spending an attempt, and meanwhile
    no worker is handed another job of the held scope (nothing is claimed, so no worker
    slot is taken).

    Args:
        delay_ms: how long to hold (and to defer this job); clamped like
            ``RetryLater``'s.
        reason: recorded on the job and in the ``job-delayed`` stream event.
        scope: ``"auto"`` (default): the job's ``rate_limit_key`` if it has one, else
            the whole queue; ``"queue"``: the whole queue; ``"key"``: the job's
            ``rate_limit_key`` (the whole queue if it has none); ``"job"``: defer only
            this job, hold nothing.
    """

    SCOPES = ("auto", "queue", "key", "job")

    def __init__(
        self, delay_ms: float = 1000, reason: str = "rate limited", *, scope: str = "auto"
    ) -> None:
        if scope not in self.SCOPES:
            raise ValueError(f"RateLimited scope must be one of {self.SCOPES}, got {scope!r}")
        super().__init__(delay_ms, reason)
        self.scope = scope

    def hold(self, job_options: dict[str, Any]) -> str | None:
        """What to hold for a job with these options: ``""`` = the whole queue, a
        rate-limit key, or None = nothing."""
        if self.scope == "job" or self.delay_ms <= 0:
            return None
        key = job_options.get("rate_limit_key")
        if self.scope in ("auto", "key") and isinstance(key, str) and key:
            return key
        return ""


class FencedError(KitiumQueueError):
    """The queue is fenced: a feature's guard in the ``fence`` Lua slot refused the call
    before anything was written (``KQ_FENCED``), e.g. this copy of a multi-region queue
    is not the primary, or its lease as primary ran out. The message is the guard's
    reason; adding the job again where the guard points (the current primary) is safe.
    """


#: Lua error code → exception type. Must match the codes in lua/errors.lua.
SCRIPT_ERRORS: dict[str, type[KitiumQueueError]] = {
    "KQ_JOB_NOT_FOUND": JobNotFoundError,
    "KQ_JOB_ACTIVE": JobActiveError,
    "KQ_BAD_STATE": JobStateError,
    "KQ_QUEUE_ACTIVE": QueueActiveError,
    "KQ_LEASE_LOST": LeaseLostError,
    "KQ_BAD_ARGUMENT": ScriptArgumentError,
    "KQ_FENCED": FencedError,
}


def error_from_script(message: str) -> Exception | None:
    """Map a script error reply (``"<CODE> <detail>"``) to its exception, if it is ours."""
    code, _, detail = message.partition(" ")
    exc_type = SCRIPT_ERRORS.get(code)
    if exc_type is None:
        return None
    return exc_type(detail or code)


class PartialEnqueueError(KitiumQueueError):
    """Only part of an ``add_jobs`` call is known to be in Redis.

    ``add_jobs`` sends its jobs in chunks, one script call (and one reply deadline) per
    chunk. When a chunk fails after earlier ones were written (timeout, lost connection,
    error reply), or the server refused one job (no free auto id), this error says how
    far the call got. The underlying error, if any, is its ``__cause__``.

    Attributes:
        written_ids: ids of jobs ``0 .. failed_from - 1`` of the call, in order: each
            was written by this call, or already existed (same ``job_id`` or
            idempotency key); all of them are in Redis.
        failed_from: index (in the call's input) of the first job not known to be
            written. That job and the rest of its chunk may or may not have been written
            (a timeout can come after the server ran the chunk); later chunks were not
            sent. A retry of ``jobs[failed_from:]`` is idempotent when those jobs carry
            a ``job_id`` or an ``idempotency_key``.
    """

    def __init__(
        self, message: str, written_ids: list[str] | tuple[str, ...] = (), failed_from: int = 0
    ) -> None:
        super().__init__(message)
        self.written_ids: list[str] = list(written_ids)
        self.failed_from = failed_from
        #: Jobs before ``failed_from`` that a feature refused (index -> reason): nothing
        #: of them was written, and their entry in ``written_ids`` is ``""``.
        self.refused: dict[int, str] = {}


class JobRefusedError(KitiumQueueError):
    """A feature refused one or more jobs at enqueue, atomically (a message group at its
    ``max_group_size``, a tenant over its quota...): nothing of a refused job was written.

    From ``add_job`` the message is the reason. From ``add_jobs``, the other jobs of the
    call were added (a refusal does not stop the call) and this error says which:

    Attributes:
        ids: one entry per job of the call, in order: the job's id, or ``None`` for a
            refused job.
        refused: index in the call -> the reason that job was refused.
    """

    def __init__(
        self,
        message: str,
        ids: list[str | None] | tuple[str | None, ...] = (),
        refused: dict[int, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.ids: list[str | None] = list(ids)
        self.refused: dict[int, str] = dict(refused or {})


class WriteRefusedError(KitiumQueueError):
    """Redis refused a write as a server: out of memory (``maxmemory`` reached with
    ``noeviction``), a failed background save (``MISCONF``) or a read-only replica.

    Nothing of the refused call was written: Redis refuses a script before its first
    write (and lets a script that already wrote finish), so a transition is never half
    applied. ``add_job`` raises it; workers keep their outcomes and send them again
    until Redis accepts writes. The message says what to do.
    """
