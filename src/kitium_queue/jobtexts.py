"""Job-text filters and log views: what a running job writes about itself (its progress
value and its log lines) on the way into Redis, and its log lines on the way out.

* **Job-text filters** ``fn(job, kind, raw) -> bytes`` (sync, in
  ``queue.job_texts.filters``) rewrite a progress value (``kind="progress"``: ``raw`` is
  the encoded JSON value, and what a filter returns must be JSON too) or a log line
  (``kind="log"``: ``raw`` is the UTF-8 line, already clipped to
  ``limits.MAX_LOG_LINE_CHARS``) just before ``Runner.update`` writes it under the
  run's lease (``update.lua``: the job hash's ``pg`` and the ``job-progress`` event, or
  the job's log list), in the order added. A feature may seal or mask them. They fail
  closed (``filter_job_text``). The in-process hooks (``queue.on("job-progress")``,
  the ``progress`` lifecycle subscribers) still get the value the processor gave.
* **Log views** ``view(job_id, name, lines, redact)`` (in ``queue.job_texts.log_views``)
  rewrite, in place, the lines ``get_job_logs`` returns (``name``: the job's name, read
  only when a view is registered and there is a line; None when the job's record is
  gone). ``redact`` is ``redact_payloads``. Progress read back goes through the
  ``JobInfo`` views (``context.py`` ``info_views``) with the rest of the record.
* **Copy views** (``queue.job_texts.copy_views``: ``view_copy``): a feature that keeps
  a copy of a job's failure reason outside the job's record (declared in ``copies.py``
  with part ``error``, so a pass over every stored text, a key rotation re-sealing them,
  reaches it) shows it through the views ``view(job_id, name, part, text) -> str``, as
  the job views show the job's own texts: a feature that sealed the text opens it
  there. A copy has no ``JobInfo`` (its job's record may be gone), so the payload views
  do not apply.

With no filter and no view registered nothing here runs: ``Runner.update`` and
``get_job_logs`` check one list each.

``record_job_text`` is that write (``Runner.update``): a progress value or a log line
that Redis refuses because it is full or cannot save (``WriteRefusedError``) is dropped
and the job goes on (reported with the other refusals, at a bounded rate): a job is
not failed for its progress or a log line while its outcome would be held and kept.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from redis.exceptions import ResponseError

from .codec import encode_progress
from .damage import named_key
from .errors import PayloadTooLargeError, WriteRefusedError
from .limits import (
    MAX_LOG_LINE_CHARS,
    MAX_PROGRESS_BYTES,
    get_logger,
    printable,
    safe_text,
    wire_text,
)

if TYPE_CHECKING:
    from .context import QueueContext
    from .job import Job
    from .queue import JobQueue

__all__ = [
    "MAX_STORED_LOG_LINE_BYTES",
    "JobTextFilter",
    "JobTexts",
    "LogView",
    "TextCopyView",
    "filter_job_text",
    "record_job_text",
    "relayed",
    "view_copy",
    "view_logs",
]

log = get_logger(__name__)

#: Largest log line a filter may hand back (a line is clipped to
#: ``limits.MAX_LOG_LINE_CHARS`` characters, at most 4 bytes each, before the filters):
#: room for a sealed line; a longer one is withheld.
MAX_STORED_LOG_LINE_BYTES = 32_768


class JobTextFilter(Protocol):
    """Rewrites a progress value or a log line before it is stored.

    Called in the worker's event loop with the running ``Job``, ``kind``
    (``"progress"`` or ``"log"``) and the bytes that would be stored: the encoded JSON
    progress value (at most ``limits.MAX_PROGRESS_BYTES``) or the UTF-8 log line. Returns
    the bytes to store instead (JSON for progress). Quick, no I/O. A filter may also
    have ``rewrites(job, kind) -> bool`` (whether it would rewrite that job's values):
    what sends a value elsewhere (the webhooks feature) asks it instead of running the
    filter to learn whether the value is stored as given."""

    def __call__(self, job: Any, kind: str, raw: bytes) -> bytes: ...


class LogView(Protocol):
    """Rewrites, in place, the log lines ``get_job_logs`` returns for one job."""

    def __call__(self, job_id: str, name: str | None, lines: list[str], redact: bool) -> None: ...


class TextCopyView(Protocol):
    """Shows a copy of one of a job's stored texts (``copies.CopiedField``) as read back:
    ``text`` as stored, ``part`` as declared, ``name`` the job's name (None when it is
    recorded nowhere). Returns what to show: a feature that sealed the text opens it,
    or says it is sealed. Quick, no I/O."""

    def __call__(self, job_id: str, name: str | None, part: str, text: str) -> str: ...


class JobTexts:
    """The job-text filters and views of one queue (``queue.job_texts``)."""

    __slots__ = ("copy_views", "filters", "log_views")

    def __init__(self) -> None:
        self.filters: list[JobTextFilter] = []
        self.log_views: list[LogView] = []
        self.copy_views: list[TextCopyView] = []


def _withheld(kind: str, why: str) -> bytes:
    text = f"{kind} withheld: {why}"
    return orjson.dumps(text) if kind == "progress" else text.encode("utf-8", "backslashreplace")


def filter_job_text(filters: Sequence[JobTextFilter], job: Any, kind: str, raw: bytes) -> bytes:
    """``raw`` through ``filters``, in order.

    A filter that raises, returns anything but ``bytes`` (for progress: anything but
    JSON), or a log line longer than ``MAX_STORED_LOG_LINE_BYTES``, fails closed: the
    value is replaced by a sentence naming the filter (a filter that hides values must
    never let one through by failing; a progress value becomes that sentence as a JSON
    string) and an error is logged without the value. A progress value a filter made
    larger than ``limits.MAX_PROGRESS_BYTES`` raises ``PayloadTooLargeError`` (nothing is
    written), as a value that large before the filters does."""
    given = len(raw)
    for fn in filters:
        name = getattr(fn, "__qualname__", None) or type(fn).__name__
        try:
            out = fn(job, kind, raw)
            if type(out) is not bytes:
                problem = f"returned {type(out).__name__}, not bytes"
            elif kind == "log" and len(out) > MAX_STORED_LOG_LINE_BYTES:
                problem = f"made it {len(out)} bytes, above {MAX_STORED_LOG_LINE_BYTES}"
            elif kind == "progress" and not _is_json(out):
                problem = "returned bytes that are not JSON"
            else:
                raw = out
                continue
        except Exception as exc:
            problem = f"raised {type(exc).__name__}"
        log.error(
            "job-text filter %s %s on the %s of job %s; it is withheld",
            name,
            problem,
            kind,
            printable(getattr(job, "id", "?")),
        )
        return _withheld(kind, f"the job-text filter {name} {problem}")
    if kind == "progress" and len(raw) > MAX_PROGRESS_BYTES:
        raise PayloadTooLargeError(
            f"progress of job {getattr(job, 'id', '?')} is {given} bytes encoded and "
            f"{len(raw)} bytes as stored once the queue's job-text filters rewrote it (a "
            f"sealed value is larger), above {MAX_PROGRESS_BYTES}; report a smaller value "
            "(a percentage, a few counters)"
        )
    return raw


def relayed(
    update: Callable[[Any, str, Any], Awaitable[None]],
) -> Callable[[Any, str, Any], Awaitable[None]]:
    """``update`` for the progress values and log lines a processor in a child process
    sends (``mode="process"``). The child checked the value's size in clear and cannot
    be told of a refusal: a value the filters made larger than
    ``limits.MAX_PROGRESS_BYTES`` is not recorded, a warning says so, and the run goes
    on (raised here, the refusal ended the run and killed its child)."""

    async def relay(job: Any, kind: str, value: Any) -> None:
        try:
            await update(job, kind, value)
        except PayloadTooLargeError as exc:
            log.warning("%s; sent from a child process, it is not recorded", exc)

    return relay


def _is_json(raw: bytes) -> bool:
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return True


async def view_logs(ctx: QueueContext, client: Any, job_id: str, lines: list[str]) -> None:
    """``lines`` of job ``job_id`` through the queue's log views, in place (its name read
    from its record first)."""
    try:
        raw = await client.hget(ctx.keys.job(job_id), "n")
    except ResponseError as exc:  # a record of another type: no name to give
        if "WRONGTYPE" not in str(exc):
            raise
        raw = None
    name = raw.decode("utf-8", "surrogateescape") if raw is not None else None
    for view in ctx.job_texts.log_views:
        view(job_id, name, lines, ctx.redacting)


def view_copy(texts: JobTexts, job_id: str, name: str | None, part: str, text: str) -> str:
    """``text``, a copy of job ``job_id``'s text ``part`` (``copies.CopiedField``), through the
    copy views of ``texts``, in the order added."""
    for view in texts.copy_views:
        text = view(job_id, name, part, text)
    return text


async def record_job_text(q: JobQueue, job: Job, kind: str, value: Any) -> bool:
    """Write ``job``'s progress (``kind="progress"``) or a log line (``"log"``) under its
    lease (``update.lua``), through the queue's job-text filters. True when written;
    False when Redis refused the write (full, unable to save, a replica: dropped, the job
    goes on, reported at a bounded rate). ``LeaseLostError`` when the lease is gone."""
    if kind == "progress":
        # NaN, surrogates or huge ints raise SerializationError in this job alone.
        raw = encode_progress(job.id, value)
    else:
        raw = wire_text(safe_text(value), MAX_LOG_LINE_CHARS)
    raw = filter_job_text(jt, job, kind, raw) if (jt := q.job_texts.filters) else raw
    call = q.run("update", [job.id, job.lease_token, kind, raw, q.max_log_lines])
    try:
        if kind == "log":
            # A log list damaged outside kitium-queue: DamagedKeyError naming it (the
            # processor may go on without its log line), not a bare WRONGTYPE.
            await named_key(await q.client(), q.keys.logs(job.id), "list", call)
        else:
            await call
    except WriteRefusedError as exc:
        q.ctx.damaged.refusals.failed(exc)  # said when it starts, then every 30 s
        return False
    return True
