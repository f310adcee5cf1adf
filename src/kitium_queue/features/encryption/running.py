"""What a worker does around each run of an encrypted job (``EncryptionManager``'s
process middleware; see ``docs/encryption.md``, "Worker behaviour").

* A job marked encrypted (option ``encrypted``), or any job under ``encrypt_all``, has
  its data opened before the processor runs and its result sealed after it.
* A ciphertext that does not open (tampered, moved), or a job marked encrypted whose
  data was replaced by plaintext, fails for good (dead-lettered): it is not run.
* Under ``encrypt_all``, a job that was never encrypted (not marked, plaintext data:
  added by a producer without encryption, or written by hand) is refused too, with a
  reason saying so, unless it was added before ``accept_plaintext_before`` (an explicit,
  time-bounded opt-in for the plaintext backlog of a switch to ``encrypt_all``).
* A job that needs a key this process lacks, or holds with other material than the
  queue's record of that key id (``KeyMismatchError``: a wrong secret), is deferred, no
  attempt spent, for a process that holds it (``missing_key_wait_ms``); a damaged key
  record defers every encrypted job until it is repaired.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from ...errors import (
    ConfigurationError,
    NonRetryableError,
    ProcessorSignal,
    RetryLater,
    SerializationError,
)
from ...limits import get_logger, printable
from .crypto import (
    Binding,
    EncryptionError,
    KeyNotHeldError,
    KeyRecordDamagedError,
    is_envelope,
)
from .failures import mark_own

if TYPE_CHECKING:
    from ...job import Job
    from .manager import EncryptionManager

__all__ = ["MAX_KEY_RETRY_MS", "MAX_WAITING", "RunGuard", "plaintext_cutoff"]

log = get_logger(__name__)

#: Jobs this process remembers deferring for a key it lacks (oldest forgotten first).
MAX_WAITING = 10_000
#: Longest single deferral of a job waiting for a process that holds its key (ms).
MAX_KEY_RETRY_MS = 30_000
#: Seconds between two warnings that the queue's key record is damaged, and between
#: two reports of plaintext jobs run under ``accept_plaintext_before``.
_REPORT_S = 60.0


def plaintext_cutoff(value: Any, encrypt_all: bool) -> int | None:
    """``accept_plaintext_before`` as ms since the epoch: a timezone-aware ``datetime``
    or an ``int`` of ms since the epoch (the jobs' ``created_at`` is Redis' clock)."""
    if value is None:
        return None
    if not encrypt_all:
        raise ConfigurationError(
            "accept_plaintext_before applies with encrypt_all=True only (without it, jobs "
            "not marked encrypted run in plaintext anyway): drop it, or set encrypt_all"
        )
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ConfigurationError(
                "accept_plaintext_before must be a timezone-aware datetime (e.g. "
                "datetime(..., tzinfo=timezone.utc)) or ms since the epoch, got a naive one"
            )
        return int(value.timestamp() * 1000)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigurationError(
            "accept_plaintext_before must be a timezone-aware datetime or an int of ms "
            f"since the epoch, got {value!r:.40}"
        )
    return value


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="milliseconds")


class _DamageWatch:
    """Defers jobs while the queue's key record is damaged (the current key, which seals
    a result, cannot be known): each waits, no attempt spent, longer as the damage lasts
    (1 s growing to 30 s), until the record is repaired. Warned once a minute."""

    def __init__(self) -> None:
        self.since: float | None = None  # when this process first found it damaged
        self._warned = -_REPORT_S

    def defer(self, exc: KeyRecordDamagedError) -> RetryLater:
        now = time.monotonic()
        if self.since is None:
            self.since = now
        if now - self._warned >= _REPORT_S:
            self._warned = now
            log.error("%s", exc)
        delay = min(max(1000.0, (now - self.since) * 250), MAX_KEY_RETRY_MS)
        return mark_own(
            RetryLater(delay, f"waiting for the repair of the damaged key record {exc.key}")
        )


class RunGuard:
    """The process middleware of one ``EncryptionManager`` (see the module docstring)."""

    def __init__(self, manager: EncryptionManager) -> None:
        self.manager = manager
        # job id -> when this process first deferred it for a key it lacks (monotonic s)
        self._waiting: dict[str, float] = {}
        self._warned: set[str] = set()
        self._damage = _DamageWatch()
        #: Plaintext jobs run under ``accept_plaintext_before`` by this process.
        self.plaintext_run = 0
        self._plain_reported = 0
        self._plain_at = -_REPORT_S

    async def on_process(self, job: Job, call_next: Any) -> Any:
        m = self.manager
        marked = job.options.get("encrypted") is True
        if not (m.encrypt_all or marked):
            return await call_next()
        sealed = job.data
        plain_backlog = False
        try:
            # First: the first call in a process compares its keys with the queue's
            # record (a key id held here with other material defers, never fails).
            key_id = await m.current_key_id()
            if not marked and not is_envelope(sealed):
                self._admit_plaintext(job)  # refuses it unless accept_plaintext_before
                plain, plain_backlog = sealed, True
            else:
                plain = m.open_job_data(job.id, job.name, sealed)
        except KeyNotHeldError as exc:
            raise self._key_missing(job.id, exc) from None
        except KeyRecordDamagedError as exc:
            raise self._damage.defer(exc) from None
        except EncryptionError as exc:
            raise mark_own(NonRetryableError(f"encrypted job cannot run: {exc}")) from None
        self._waiting.pop(job.id, None)
        self._damage.since = None
        if plain_backlog:
            self._report_plaintext(job)
        job.data = plain
        try:
            result = await call_next()
        finally:
            job.data = sealed  # hooks and events after the run see the envelope only
        try:
            raw = m.queue.serializer.dumps(result, "result")
        except SerializationError:
            # The usual message quotes where in the result the bad value is: withheld.
            raise mark_own(
                NonRetryableError(
                    f"result of encrypted job {job.id} cannot be serialized to JSON (details "
                    "withheld: they would quote the result); return JSON-compatible values"
                )
            ) from None
        return m.ring.seal(raw, key_id, Binding("job", m.queue.name, job.id, job.name, "result"))

    # ------------------------------------------------------------------ plaintext
    def _admit_plaintext(self, job: Job) -> None:
        """Pass a never-encrypted job (not marked, plaintext data) under ``encrypt_all``
        only when it was added before ``accept_plaintext_before``; else refuse it."""
        cutoff = self.manager.accept_plaintext_before
        if cutoff is not None and 0 < job.created_at < cutoff:
            return
        when = (
            ""
            if cutoff is None
            else f" It was added at {_when(job.created_at)}, not before "
            f"accept_plaintext_before ({_when(cutoff)})."
        )
        raise mark_own(
            NonRetryableError(
                "plaintext job refused: its data is plaintext and this worker requires "
                "encryption (encrypt_all=True); it was added by a producer without encryption "
                "(one not yet running with encrypt_all, or without an EncryptionManager), or "
                f"written into Redis by hand.{when} If it belongs to the plaintext backlog of "
                "the switch to encrypt_all, give the workers accept_plaintext_before (the time "
                "the last producer began encrypting; docs/encryption.md, 'Switching "
                "encrypt_all on') and replay it (replay_dlq); otherwise delete it"
            )
        )

    def _report_plaintext(self, job: Job) -> None:
        """Say that plaintext jobs run: the first one, then a count once a minute."""
        self.plaintext_run += 1
        now = time.monotonic()
        if now - self._plain_at < _REPORT_S:
            return
        cutoff = self.manager.accept_plaintext_before
        assert cutoff is not None
        log.warning(
            "queue %r: running plaintext job %s (added at %s, before accept_plaintext_before "
            "%s) although encrypt_all=True; its result is stored encrypted. %d plaintext "
            "job(s) run by this process so far; remove accept_plaintext_before once the "
            "plaintext backlog has drained",
            self.manager.queue.name,
            printable(job.id),
            _when(job.created_at),
            _when(cutoff),
            self.plaintext_run,
        )
        self._plain_at = now

    # ------------------------------------------------------------------ missing key
    def _key_missing(self, job_id: str, exc: KeyNotHeldError) -> ProcessorSignal:
        """Defer a job that needs a key this process lacks, or, once it has waited
        ``missing_key_wait_ms`` (counted from this process's first deferral), fail it
        for good."""
        wait_ms = self.manager.missing_key_wait_ms
        now = time.monotonic()
        first = self._waiting.get(job_id)
        if first is None:
            horizon = now - 2 * wait_ms / 1000
            self._waiting = {j: t for j, t in self._waiting.items() if t >= horizon}
            while len(self._waiting) >= MAX_WAITING:
                del self._waiting[next(iter(self._waiting))]
            first = self._waiting[job_id] = now
        waited_ms = (now - first) * 1000
        left_ms = wait_ms - waited_ms
        if left_ms <= 0:
            self._waiting.pop(job_id, None)
            return mark_own(
                NonRetryableError(
                    f"encrypted job cannot run: {exc}; no process holding the key took it "
                    f"within missing_key_wait_ms ({wait_ms} ms)"
                )
            )
        if exc.key_id not in self._warned and len(self._warned) < 100:
            self._warned.add(exc.key_id)
            log.warning(
                "queue %r: jobs need key %r, which this process does not hold; they are "
                "deferred for a process that holds it (missing_key_wait_ms=%d)",
                self.manager.queue.name,
                exc.key_id,
                wait_ms,
            )
        delay = min(max(1000.0, waited_ms / 4), MAX_KEY_RETRY_MS, left_ms)
        return mark_own(RetryLater(delay, f"waiting for a process that holds key {exc.key_id!r}"))
