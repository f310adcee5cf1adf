"""The exception tree of kitium-queue and the mirror of the Lua error codes.

::

    KitiumQueueError
    ├── ConfigurationError          bad option, unknown option, malformed config
    │   └── ScriptArgumentError     a script refused its arguments, wrote nothing (KQ_BAD_ARGUMENT)
    ├── PartialEnqueueError         add_jobs wrote only some chunks; says which jobs
    ├── JobRefusedError             a feature refused a job at enqueue (a full group...)
    │   ├── QuotaExceededError      a tenant's quota refused it (max_queue_size, regions)
    │   └── IdempotencyConflictError  a key or job_id reused with different data (opt-in)
    ├── FencedError                 a fence is up: the queue takes no new work here (KQ_FENCED)
    ├── DamagedKeyError             a key of the queue holds another type (KQ_DAMAGED_KEY)
    ├── SerializationError          data or result that cannot be encoded
    ├── PayloadTooLargeError        encoded payload above max_payload_bytes
    ├── ConnectionUnavailableError  Redis cannot be reached (or refused the credentials)
    ├── PermissionDeniedError       the Redis ACL user lacks a command or key
    │   └── AccessDeniedError       a grant does not allow this principal the action
    ├── WriteRefusedError           Redis refused a write (out of memory, MISCONF, replica)
    ├── WriteNotConfirmedError      written on the primary, not confirmed by the write barrier
    │   └── ReplicaAckError         fewer replicas than asked acknowledged it in time (WAIT)
    ├── JobNotFoundError            no job with that id           (KQ_JOB_NOT_FOUND)
    ├── ScheduleNotFoundError       no schedule with that id
    ├── BreakerNotFoundError        no circuit breaker with that id
    ├── TenantNotFoundError         no tenant with that id
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

import re
from typing import Any

from .limits import MAX_DELAY_MS, clamp_delay_ms

__all__ = [
    "REFUSAL_ERRORS",
    "SCRIPT_ERRORS",
    "AccessDeniedError",
    "BreakerNotFoundError",
    "CircuitOpenError",
    "ConfigurationError",
    "ConnectionUnavailableError",
    "DamagedKeyError",
    "FencedError",
    "IdempotencyConflictError",
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
    "QuotaExceededError",
    "RateLimited",
    "ReplicaAckError",
    "RetryLater",
    "ScheduleNotFoundError",
    "ScriptArgumentError",
    "SerializationError",
    "TenantNotFoundError",
    "WriteNotConfirmedError",
    "WriteRefusedError",
    "error_from_script",
    "refusal_error",
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
    """Refused for lack of permission: the Redis ACL user lacks a command or the
    queue's key pattern (``NOPERM``), or (``AccessDeniedError``) the principal a call
    runs for holds no grant allowing it.

    The message names what was refused; docs/RELIABILITY.md lists the ACL rules a queue
    needs (``~<prefix>:{<queue>}:*`` and the commands its scripts run).
    """


class AccessDeniedError(PermissionDeniedError):
    """A protected queue (or ``AccessControlManager.require_access``, or a tenant change
    through ``AccessControlManager``) refused a call: the principal it runs for holds no
    grant with the permission it needs.

    Nothing of the refused call ran. The refusal is written to the audit log before
    this is raised.

    Attributes:
        principal: who was refused (None: no principal was acting).
        resource: what was refused (a queue name, or ``tenant:<id>`` for a tenant
            change).
        permission: the permission that was needed (e.g. ``"can_add_job"``).
        action: what was attempted (``"add_job"``, ``"pause"``, ``"get_stats"``...).
    """

    def __init__(
        self,
        message: str,
        *,
        principal: str | None = None,
        resource: str = "",
        permission: str = "",
        action: str = "",
    ) -> None:
        super().__init__(message)
        self.principal = principal
        self.resource = resource
        self.permission = permission
        self.action = action


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


class TenantNotFoundError(KitiumQueueError, KeyError):
    """No tenant with that id exists (never created, or removed)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "tenant not found"


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


# The Redis types of the keys of a queue's layout, as a person reads them.
_TYPE_NAMES = {"zset": "sorted set", "integer": "integer counter"}
# What deleting each key of the layout (by its last part) costs.
_IF_DELETED = {
    "wait": "the waiting jobs it listed are lost to the queue",
    "active": "the running jobs it listed are no longer recovered if their worker dies",
    "delayed": "the delayed jobs it listed are lost to the queue",
    "completed": "the list of completed jobs is lost",
    "failed": "the list of failed jobs is lost",
    "dlq": "the list of dead-lettered jobs is lost",
    "meta": "queue flags such as 'paused' are lost",
    "events": "past events are lost",
    "marker": "nothing is lost",
    "id": "auto ids start again and skip the ids in use",
    "limiter": "the rate limiter's window starts afresh",
    # Keys outside the layout that scripts check before their first write.
    "parked": "each blocker is listed again as its parked jobs change",
    "schedules": "the list of schedules is lost; they still fire",
    "due": "schedules stop firing until they are resumed or declared again",
    "dead": "the dead-lettered outbox entries it held are lost",
    "term": "terms start again from 1, so an old leader's term can come back",
    "workers": "live workers list themselves again at their next heartbeat",
    "jids": "chosen job ids of removed jobs can be added again at once",
}


def _a(noun: str) -> str:
    return f"an {noun}" if noun[:1] in ("a", "e", "i", "o", "u") else f"a {noun}"


class DamagedKeyError(KitiumQueueError):
    """A key of the queue's own layout (the state sets, meta, the event stream, the
    wake-up marker, a counter) holds another Redis type, or a counter holds something
    that is not an integer: it was written outside kitium-queue (by hand or by another
    client); or a key outside the layout that a script writes (a schedule index, the
    parked index, the outbox's dead stream, a leader's lease or term counter). The
    scripts check the keys they write before their first write (``KQ_DAMAGED_KEY``):
    nothing was written. ``key``: the key; ``found`` / ``expected``:
    Redis types (``expected`` ``"integer"`` for a counter)."""

    def __init__(self, detail: str, key: str = "", found: str = "", expected: str = "") -> None:
        parsed = None if key else re.match(r"(\w+) (zset|hash|stream|integer|string) (\S+)", detail)
        if parsed is not None:
            # The script's reply: "<found> <expected> <key>" (lua/lib_base.lua).
            found, expected, key = parsed.groups()
        self.key, self.found, self.expected = key, found, expected
        if not key:
            super().__init__(detail)
            return
        part = key.rsplit(":", 1)[-1]
        # What follows the queue's hash tag: "parked:<blocker>" for a blocker's set.
        rest = key.split("}:", 1)[-1]
        if rest.startswith("parked:") or rest == "parked":
            fix = (
                "repair it with kitium_queue.parking.rebuild_parked(queue) (CLI: "
                "kitium-queue parked rebuild APP), which replaces it and gives the parked "
                "jobs back from their records"
            )
            if rest == "parked":
                fix = f"delete it ({_IF_DELETED['parked']}) or {fix}"
        elif part == "lease":
            fix = (
                "set it to an integer above every lease token in use (the 'lt' field of "
                "running jobs), or delete it while no job runs"
            )
        else:
            cost = _IF_DELETED.get(part, "what it held is lost")
            fix = f"delete it ({cost}) or restore it"
        held = (
            "something that is not an integer"
            if found == "string" and expected == "integer"
            else _a(_TYPE_NAMES.get(found, found))
        )
        super().__init__(
            f"key {key} holds {held}, not {_a(_TYPE_NAMES.get(expected, expected))}: it was "
            f"damaged outside kitium-queue; {fix}. The queue resumes by itself once it "
            "is repaired"
        )


#: Lua error code → exception type. Must match the codes in lua/errors.lua.
SCRIPT_ERRORS: dict[str, type[KitiumQueueError]] = {
    "KQ_JOB_NOT_FOUND": JobNotFoundError,
    "KQ_JOB_ACTIVE": JobActiveError,
    "KQ_BAD_STATE": JobStateError,
    "KQ_QUEUE_ACTIVE": QueueActiveError,
    "KQ_LEASE_LOST": LeaseLostError,
    "KQ_BAD_ARGUMENT": ScriptArgumentError,
    "KQ_FENCED": FencedError,
    "KQ_DAMAGED_KEY": DamagedKeyError,
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
        #: The same jobs, index -> their error (``QuotaExceededError``...).
        self.errors: dict[int, JobRefusedError] = {}


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
        #: index in the call -> the error of that refused job (a ``QuotaExceededError``
        #: when a tenant's quota refused it), for the refusals of ``add_jobs``.
        self.errors: dict[int, JobRefusedError] = {}


class QuotaExceededError(JobRefusedError):
    """A tenant's quota refused a job at enqueue, atomically: nothing of it was written
    (``features.tenancy``; docs/tenancy.md).

    Attributes:
        tenant_id: the tenant.
        quota: the quota that refused it: ``"max_queue_size"`` (the tenant holds that
            many unfinished jobs in the queue).
        limit: the value of that quota, as text (``"100000"``).
    """

    def __init__(
        self, message: str, *, tenant_id: str = "", quota: str = "", limit: str = ""
    ) -> None:
        super().__init__(message)
        self.tenant_id = tenant_id
        self.quota = quota
        self.limit = limit

    @classmethod
    def from_fields(cls, fields: list[str], message: str) -> QuotaExceededError:
        """Built from a refusal's fields: tenant, quota, limit."""
        tenant, quota, limit = [*fields, "", "", ""][:3]
        return cls(message, tenant_id=tenant, quota=quota, limit=limit)


class IdempotencyConflictError(JobRefusedError):
    """An add reused the idempotency key (or the chosen ``job_id``) of an existing job
    with different data, where conflicts are asked to be raised
    (``IdempotencyManager(queue, conflicts="raise")`` or the job option
    ``idempotency_conflict="raise"``; docs/effectively-once.md): nothing was written,
    the existing job is untouched. The message names the key or id and the existing
    job, never the data.

    Attributes:
        key: the idempotency key, or the ``job_id``, the add reused.
        key_kind: ``"idempotency_key"`` or ``"job_id"``.
        existing_id: the id of the job that holds it.
    """

    def __init__(
        self, message: str, *, key: str = "", key_kind: str = "", existing_id: str = ""
    ) -> None:
        super().__init__(message)
        self.key = key
        self.key_kind = key_kind
        self.existing_id = existing_id

    @classmethod
    def from_fields(cls, fields: list[str], message: str) -> IdempotencyConflictError:
        """Built from a refusal's fields: key kind, key, existing job id."""
        kind, key, existing = [*fields, "", "", ""][:3]
        return cls(message, key=key, key_kind=kind, existing_id=existing)


#: Refusal codes of the ``accept`` Lua slot (``kitium_queue.slots``) and of the
#: duplicate checks (``hooks.DuplicateCheck``): a reason
#: ``"<CODE>\t<field>\t...\t<message>"`` becomes the code's error, built by its
#: ``from_fields(fields, message)``; any other reason a plain ``JobRefusedError``.
REFUSAL_ERRORS: dict[str, type[QuotaExceededError] | type[IdempotencyConflictError]] = {
    "KQ_QUOTA_EXCEEDED": QuotaExceededError,
    "KQ_IDEMPOTENCY_CONFLICT": IdempotencyConflictError,
}


def refusal_error(reason: str) -> JobRefusedError:
    """The error of one job refused at enqueue with ``reason`` (an ``accept`` slot's
    reply): its code's error class with the message as text, else ``JobRefusedError``."""
    code, tab, rest = reason.partition("\t")
    cls = REFUSAL_ERRORS.get(code) if tab else None
    if cls is None:
        return JobRefusedError(reason)
    *fields, message = rest.split("\t")
    return cls.from_fields(fields, message)


class WriteRefusedError(KitiumQueueError):
    """Redis refused a write as a server: out of memory (``maxmemory`` reached with
    ``noeviction``), a failed background save or append-only file write (``MISCONF``)
    or a read-only replica.

    Nothing of the refused call was written: Redis refuses a script before its first
    write (and lets a script that already wrote finish), so a transition is never half
    applied. ``add_job`` raises it; workers keep their outcomes and send them again
    until Redis accepts writes. The message says what to do.
    """


class WriteNotConfirmedError(KitiumQueueError):
    """A write happened on the Redis primary, but the queue's write barrier
    (``barrier.py``) did not confirm it: e.g. fewer replicas than asked acknowledged it
    in time (``ReplicaAckError``). The jobs *are* in the queue on the primary; what was
    not confirmed is that they survive a failover to a replica.

    Attributes:
        written_ids: ids written on the primary by the call, in order (``""`` for a job
            a feature refused); for ``add_job``, its one id.
        unconfirmed: index (in the call) -> the error of each job whose write was not
            confirmed; the other written jobs were.
        not_sent_from: index of the first job of an ``add_jobs`` call that was not sent
            (the call stops at the first chunk not confirmed), or None.
    """

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.written_ids: list[str] = []
        self.unconfirmed: dict[int, WriteNotConfirmedError] = {}
        self.not_sent_from: int | None = None


class ReplicaAckError(WriteNotConfirmedError):
    """Fewer replicas than asked acknowledged a write within the timeout (``WAIT``;
    replica-acknowledged writes, ``features/replicas``).

    The write happened on the primary and stays there: a retry with the same ``job_id``
    or ``idempotency_key`` does not add the job twice. What is not guaranteed is that it
    survives the primary's loss: a replica promoted before it caught up would not have
    it. ``replicas``: how many acknowledged; ``required``: how many were asked for;
    ``timeout_ms``: how long the wait was.
    """

    def __init__(
        self, message: str = "", *, replicas: int = 0, required: int = 0, timeout_ms: int = 0
    ) -> None:
        super().__init__(message)
        self.replicas = replicas
        self.required = required
        self.timeout_ms = timeout_ms


def install_hint(extra: str, installs: str = "") -> str:
    """The command that installs the optional extra ``extra``, in both forms: from the
    package index, and in a clone of the repository (the form that works before the
    package is published). ``installs``: what the extra brings, said after it."""
    brings = f"; it installs {installs}" if installs else ""
    return (
        f'pip install "kitium-job-queue[{extra}]" '
        f'(or pip install -e ".[{extra}]" in a clone{brings})'
    )
