"""``ComplianceManager``: retention periods, redaction and erasure by subject on one
queue (see ``docs/compliance.md``).

It plugs into the queue through the extension points only:

* the job option ``subject_id`` (option registry): whose personal data the job
  carries; an ``enqueue`` slot fragment marks the job (``sj``) and adds it to its
  subject's index in the same atomic step as the job's creation;
* ``erase`` slot fragments (this one: the subject index; the effectively-once and
  workflows features: their copies of a job's result) and its own scripts:
  ``compliance_erase.lua`` erases a subject's jobs, ``compliance_gc.lua`` drops index
  entries of jobs deleted the ordinary way;
* ``erase_subject`` runs through the admin choke point (``queue.admin.execute``): an
  access guard may refuse it, and the ``admin`` hook (audit) records who erased what
  (the principal; the subject only as a SHA-256 digest, never the erased data);
* retention periods per finished state, enforced by the retention service
  (``features.retention``), which erases (not just deletes) expired jobs;
* payload redaction (``ctx.redactors``): the fields named by ``redact_fields`` are
  masked wherever jobs are shown to people (the CLI, a dashboard reading the queries
  with ``redact_payloads``) and in progress values read from the event stream; with
  ``redact_everywhere``, in every query and in ``queue.on`` handlers too.
"""

from __future__ import annotations

import hashlib
import json
import time
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from ...damage import named_key
from ...errors import ConfigurationError, KitiumQueueError
from ...events import EventData
from ...limits import QUERY_PAGE, get_logger
from ...options import check_text, to_int, to_ms
from ..retention import STATES, Retention
from ..retention.stream import install_swap, rewrite_events
from .redaction import PathRedactor, hide_subject_ids

if TYPE_CHECKING:
    from ...queue import JobQueue

__all__ = ["FEATURE", "ComplianceManager", "ErasureReport", "check_subject", "subject_digest"]

log = get_logger(__name__)

FEATURE = "compliance"
#: The job option naming the subject whose data a job carries.
OPTION = "subject_id"
_MAX_SUBJECT = 256
_SCRIPTS = ("compliance_erase", "compliance_gc")
_INSTALLED: weakref.WeakKeyDictionary[Any, ComplianceManager] = weakref.WeakKeyDictionary()


def _lua(name: str) -> str:
    return resources.files(__package__).joinpath(f"{name}.lua").read_text("utf-8")


def subject_digest(subject_id: str) -> str:
    """The SHA-256 of a subject id (hex): how audit records name an erased subject."""
    return hashlib.sha256(subject_id.encode("utf-8")).hexdigest()


def check_subject(value: Any, what: str = "subject_id") -> str:
    """A subject id: text of 1..256 characters without control characters or lone
    surrogates. The error says what is wrong and where, never the value itself: a
    subject id is personal data (an e-mail address, a customer number), and error
    messages end up in logs and on terminals."""
    return check_text(value, what, max_len=_MAX_SUBJECT, quote=False)


def _subject(value: Any, section: str) -> str:
    return check_subject(value, f"{section}: subject_id")


@dataclass(frozen=True, slots=True)
class ErasureReport:
    """What ``erase_subject`` did.

    Attributes:
        subject_digest: SHA-256 of the subject id (what the audit record shows).
        jobs: jobs erased (records, logs, results, copies), in any state.
        active: how many of them were running; their workers' outcome, progress and
            log writes are refused from then on (fencing), and the runs are abandoned.
        events: entries of the durable event stream about those jobs deleted.
        duration_ms: how long it took.
        schedules: schedules deleted whose job template carried the subject (its
            ``subject_id`` option): they held its data and would add its jobs again.
    """

    subject_digest: str
    jobs: int
    active: int
    events: int
    duration_ms: float
    schedules: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "subject_digest": self.subject_digest,
            "jobs": self.jobs,
            "active": self.active,
            "events": self.events,
            "duration_ms": round(self.duration_ms, 1),
            "schedules": self.schedules,
        }


class ComplianceManager:
    """Compliance features of one queue (see the module docstring).

    Args:
        queue: the queue. Create it in every process that adds or runs the queue's jobs
            (the option and Lua fragments are per process, like ``queue.process``).
        retention: retention periods per finished state, ``{"completed": ms,
            "failed": ms, "dlq": ms}`` (ms or ``timedelta``): a job that has been in
            the state longer is erased by the retention service.
        redact_fields: payload paths to mask (``PathRedactor``): ``["user.email",
            "**.password"]``.
        redact_everywhere: mask them in every query and ``queue.on`` handler too, not
            only in what tools show to people.
        erase_batch: jobs erased per script call (1..1000).
        interval_ms: how often the retention service runs (when periods are set).
        run_service: run the retention service in this process's workers.
    """

    def __init__(
        self,
        queue: JobQueue,
        *,
        retention: Mapping[str, Any] | None = None,
        redact_fields: Iterable[str] = (),
        redact_everywhere: bool = False,
        erase_batch: int = 200,
        interval_ms: Any = 60_000,
        run_service: bool = True,
    ) -> None:
        if queue in _INSTALLED:
            raise ConfigurationError(
                f"queue {queue.name!r} already has a ComplianceManager; use "
                "ComplianceManager.for_queue(queue)"
            )
        if not isinstance(redact_everywhere, bool):
            raise ConfigurationError("redact_everywhere must be True or False")
        # Every setting is checked before anything is installed: a bad one leaves the
        # queue as it was (no retention service, no period half applied).
        self.queue = queue
        self.erase_batch = to_int(erase_batch, "erase_batch", minimum=1, maximum=1000)
        self.redactor = PathRedactor(redact_fields)
        self.redact_everywhere = redact_everywhere
        self._gc_cursor = 0
        interval = to_ms(interval_ms, "interval_ms", minimum=10)
        periods = _periods(retention)
        existing = Retention.of(queue)
        if existing is None:
            self.retention = Retention(queue, interval_ms=interval, run_service=run_service)
        else:
            # Shared with the cost limits: the service runs at the shorter interval.
            self.retention = existing
            existing.interval_ms = min(existing.interval_ms, interval)
        for state, period in periods.items():
            self.retention.set_period(state, period)
        self._install()
        _INSTALLED[queue] = self

    @classmethod
    def for_queue(cls, queue: JobQueue) -> ComplianceManager:
        """The manager installed on ``queue`` in this process, or a new one without
        periods, redaction or service (what tools that only have the queue use)."""
        got = _INSTALLED.get(queue)
        return got if got is not None else cls(queue, run_service=False)

    def _install(self) -> None:
        q = self.queue
        q.declare_option(
            OPTION,
            feature=FEATURE,
            normalize=_subject,
            doc="whose personal data the job carries (erase_subject erases its jobs)",
        )
        q.scripts.add_slot("accept", FEATURE, _lua("accept"))
        q.scripts.add_slot("enqueue", FEATURE, _lua("enqueue"))
        q.scripts.add_slot("erase", FEATURE, _lua("erase"))
        for name in _SCRIPTS:
            q.scripts.add_fragment(name, _lua(name))
        install_swap(q)
        if self.redactor:
            q.ctx.redactors.append(self.redactor)
            hide_subject_ids(q.ctx)  # the subject id is masked wherever the data is
            if self.redact_everywhere:
                q.ctx.redact_everywhere = True
                q.emitter.add_view(self._event_view)

        async def forget_subjects() -> None:
            # clear() deleted the jobs: their subject indexes go too.
            await self._delete_indexes()

        q.admin.add_clear_step(forget_subjects)
        self.retention.add_step(self.collect_garbage)

    def _event_view(self, data: EventData) -> None:
        if data.result is not None:
            data.result = self.redactor(data.result)
        if data.progress is not None:
            data.progress = self.redactor(data.progress)

    # ------------------------------------------------------------------ erasure
    async def erase_subject(self, subject_id: str) -> ErasureReport:
        """Erase every job of ``subject_id`` (added with ``subject_id=...``), in any
        state, with its result, log lines, dead-letter entry, stored exactly-once
        result and the copies other features keep, and delete the entries of the
        durable event stream about those jobs.

        Each job is erased atomically (one script call erases up to ``erase_batch``
        jobs). A running job is erased too: its worker's lease renewals, progress, log
        lines and outcome are refused from then on, and the run is abandoned at its
        next renewal (``docs/compliance.md``). Jobs of the subject added while this
        runs are erased as well; jobs added after it returned are not.

        Runs through the admin choke point as command ``erase_subject`` with the
        argument ``subject_digest`` (the subject's SHA-256: audit records never hold
        the subject id or the erased data). Returns an ``ErasureReport``.
        """
        subject = check_subject(subject_id)
        digest = subject_digest(subject)
        q = self.queue

        async def action() -> ErasureReport:
            started = time.perf_counter()
            # The subject's schedules first: a tick fired meanwhile adds a job the
            # loop below still finds in the index.
            schedules = await self._erase_schedules(subject)
            erased: set[str] = set()
            active = 0
            while True:
                reply = await q.run("compliance_erase", [subject, self.erase_batch])
                act, left, seen = int(reply[1]), int(reply[2]), int(reply[3])
                if left < 0:
                    raise KitiumQueueError(
                        f"queue {q.name!r}: the subject's index (key '<prefix>subj:<subject "
                        f"id>') holds a {_text(reply[4])[:20]}, not a hash: it was damaged "
                        "outside the library, so the subject's jobs cannot be found through "
                        "it; the erasure stopped there. Delete that key, then remove the "
                        "subject's jobs (field 'sj' of their records) with remove_job"
                    )
                erased.update(b.decode("utf-8", "replace") for b in reply[4:])
                active += act
                if left == 0 or seen == 0:
                    break
            events = await self._scrub_events(erased)
            return ErasureReport(
                digest,
                len(erased),
                active,
                events,
                (time.perf_counter() - started) * 1000,
                schedules,
            )

        return await q.admin.execute(
            "erase_subject", {"subject_digest": digest}, action, shown=lambda r: r.to_dict()
        )

    async def _erase_schedules(self, subject: str) -> int:
        """Delete the schedules whose job template names ``subject`` (option
        ``subject_id``): the template holds the subject's data, and every tick would add
        a job of the subject again after the erasure. Read a page of ids at a time
        (``QUERY_PAGE``), each schedule's options only; returns how many went."""
        q = self.queue
        client = await q.client()
        index = q.keys.schedules
        base = q.keys.schedule("").encode()
        matched: list[bytes] = []
        start = 0
        while True:
            page = await named_key(
                client, index, "zset", client.zrange(index, start, start + QUERY_PAGE - 1)
            )
            if not page:
                break
            pipe = client.pipeline(transaction=False)
            for sid in page:  # as stored: an id that is not UTF-8 still names its key
                pipe.hget(base + sid, "o")
            for sid, raw in zip(page, await pipe.execute(raise_on_error=False), strict=True):
                if _names_subject(raw, subject):
                    matched.append(sid)
            if len(page) < QUERY_PAGE:
                break
            start += QUERY_PAGE
        removed = 0
        for sid in matched:
            removed += int(await q.run("schedule_remove", [sid]))
        return removed

    async def _scrub_events(self, ids: set[str]) -> int:
        """Rewrite the event stream without the entries naming one of ``ids``
        (``features.retention.stream``: gone physically, not only marked deleted)."""
        if not ids:
            return 0

        def about_erased(fields: Mapping[bytes, bytes]) -> bool:
            return _text(fields.get(b"id")) in ids

        return await rewrite_events(self.queue, drop=about_erased)

    async def subject_jobs(self, subject_id: str, limit: int = 1000) -> list[str]:
        """Ids of the jobs in ``subject_id``'s index (at most ``limit``), unordered. A
        read of the queue: it passes the queue's read guards first."""
        subject = check_subject(subject_id)
        n = to_int(limit, "limit", minimum=0, maximum=100_000)
        await self.queue.queries.check("subject_jobs", {"subject_id": subject, "limit": n})
        client = await self.queue.client()
        key = self.queue.keys.extra(f"subj:{subject}")
        out: list[str] = []
        try:
            async for field, _ in client.hscan_iter(key, count=500):
                if len(out) >= n:
                    break
                out.append(_text(field))
        except ResponseError as exc:
            if "WRONGTYPE" not in str(exc):
                raise
            # Named without the subject id (personal data).
            raise KitiumQueueError(
                f"queue {self.queue.name!r}: the subject's index (key '<prefix>subj:<subject "
                "id>') is not a hash: it was damaged outside the library. Delete that key "
                "(new jobs of the subject are indexed again)"
            ) from None
        return out

    async def subject_count(self) -> int:
        """How many subjects have jobs in the index. A read of the queue: it passes the
        queue's read guards first."""
        await self.queue.queries.check("subject_count", {})
        client = await self.queue.client()
        key = self.queue.keys.extra("subjects")
        return int(await named_key(client, key, "zset", client.zcard(key)))

    async def collect_garbage(self, *, max_calls: int = 1000) -> int:
        """Drop index entries of jobs deleted the ordinary way (see
        ``compliance_gc.lua``); returns how many. A run makes at most ``max_calls``
        script calls and the next run goes on where it stopped, so every subject is
        visited in turn (the retention service calls it on each pass)."""
        client = await self.queue.client()
        key = self.queue.keys.extra("subjects")
        kind = _text(await client.type(key))
        if kind not in ("zset", "none"):
            # Damaged by hand: it lists no subject. The retention pass goes on.
            log.warning(
                "queue %s: the compliance key 'subjects' holds a %s, not a sorted set; "
                "the subject index's garbage collection is skipped until it is deleted",
                self.queue.name,
                kind[:20],
            )
            return 0
        dropped = calls = 0
        while calls < max_calls:
            cursor, page = await client.zscan(key, self._gc_cursor, count=100)
            for raw, _ in page:
                inner = "0"
                while True:
                    calls += 1
                    # The subject as stored (bytes): a name that is not UTF-8 (damaged)
                    # still names its own index.
                    nxt, n = await self.queue.run("compliance_gc", [raw, inner, 500])
                    dropped += int(n)
                    inner = _text(nxt)
                    if inner == "0":
                        break
            self._gc_cursor = int(cursor)
            if self._gc_cursor == 0:
                break
        return dropped

    async def _delete_indexes(self) -> None:
        client = await self.queue.client()
        found = [
            k async for k in client.scan_iter(match=self.queue.keys.extra("subj*"), count=1000)
        ]
        for i in range(0, len(found), 500):
            await client.unlink(*found[i : i + 500])

    def to_dict(self) -> dict[str, Any]:
        """The effective settings (for ``config show``)."""
        return {
            "retention_periods_ms": {
                s: r.period_ms for s, r in self.retention.rules.items() if r.period_ms is not None
            },
            "redact_fields": list(self.redactor.paths),
            "redact_everywhere": self.redact_everywhere,
            "erase_batch": self.erase_batch,
        }


def _periods(value: Any) -> dict[str, int | None]:
    """The retention periods, checked: ``{state: ms, timedelta or None}`` for finished
    states (None: no period)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            "retention must be a dict of periods per finished state, such as "
            f"{{'completed': timedelta(days=30)}}, got {type(value).__name__}"
        )
    unknown = [k for k in value if k not in STATES]
    if unknown:
        shown_ = ", ".join(repr(k)[:40] for k in unknown[:5])
        raise ConfigurationError(
            f"retention periods apply to {', '.join(STATES)}; unknown state(s) [{shown_}]"
        )
    return {
        str(s): None if p is None else to_ms(p, f"{s} retention period", minimum=1)
        for s, p in value.items()
    }


def _names_subject(raw: Any, subject: str) -> bool:
    """Whether a schedule's stored options (JSON, read back from Redis: untrusted; a
    key of another type reads as an error) carry ``subject`` as ``subject_id``."""
    if not isinstance(raw, bytes) or b'"subject_id"' not in raw:
        return False
    try:
        opts = json.loads(raw)
    except (ValueError, RecursionError):
        return False
    return isinstance(opts, dict) and opts.get(OPTION) == subject


def _text(v: Any) -> str:
    if v is None:
        return ""
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
