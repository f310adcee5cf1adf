"""Size limits on everything a client sends to Redis (names, ids, options, logs, progress,
errors), so one bad or hostile caller cannot bloat Redis or the event stream.

The payload limit is per queue (``JobQueue(max_payload_bytes=...)``, 1 MiB by default,
also applied to results); the rest are fixed here. Values that are refused raise
``ConfigurationError`` or ``PayloadTooLargeError`` naming the limit; text recorded on the
job's behalf (log lines, error messages, tracebacks) is truncated instead, with a marker,
and encoded by ``wire_text``, which never fails whatever the text holds. Delays (retry
backoff, ``RetryLater``, ``RateLimited``) are clamped to ``MAX_DELAY_MS`` by
``clamp_delay_ms``. Every log record the library writes is bounded too: its loggers come
from ``get_logger``, which clips the message to ``MAX_LOG_MESSAGE_CHARS`` and an attached
traceback to ``MAX_TRACEBACK_CHARS`` (an exception whose text is megabytes long never
makes a megabyte log line).
"""

from __future__ import annotations

import logging
import math
import operator
import time
import traceback
import unicodedata

__all__ = [
    "ENQUEUE_CHUNK_BYTES",
    "ENQUEUE_CHUNK_JOBS",
    "MAX_DELAY_MS",
    "MAX_ERROR_CHARS",
    "MAX_FOLLOWS",
    "MAX_ID_LENGTH",
    "MAX_JOB_NAME_LENGTH",
    "MAX_LOG_LINE_CHARS",
    "MAX_LOG_MESSAGE_CHARS",
    "MAX_OPTIONS_BYTES",
    "MAX_PROGRESS_BYTES",
    "MAX_RUN_CONTEXT_CHARS",
    "MAX_TRACEBACK_CHARS",
    "QUERY_PAGE",
    "Hush",
    "bound_log_record",
    "clamp_delay_ms",
    "clip",
    "get_logger",
    "printable",
    "reply_int",
    "reply_text",
    "safe_text",
    "wire_text",
]

#: Longest job name (characters). Names are stored per job and appear in events.
MAX_JOB_NAME_LENGTH = 256
#: Longest ``job_id`` or ``idempotency_key`` (characters); both become part of key names.
MAX_ID_LENGTH = 512
#: Largest encoded job options (feature options such as group or tenant ids included).
MAX_OPTIONS_BYTES = 65_536
#: Largest encoded ``job.update_progress()`` value.
MAX_PROGRESS_BYTES = 65_536
#: Longest ``job.log()`` line kept; longer lines are truncated.
MAX_LOG_LINE_CHARS = 4096
#: Longest error message / retry reason recorded on a job or in the event stream.
MAX_ERROR_CHARS = 4096
#: Longest traceback recorded on a job or attached to a log record (the innermost
#: frames are kept).
MAX_TRACEBACK_CHARS = 16_384
#: Longest message of a log record the library writes, its arguments filled in (error
#: texts quoted in it are already cut to ``MAX_ERROR_CHARS``).
MAX_LOG_MESSAGE_CHARS = 8192
#: Longest delay a job can be retried or deferred after, and longest hold a
#: ``RateLimited`` sets: ten years (365-day years) in ms. Exact in a double, so Lua
#: scripts handle it without loss, and far inside what ``SET ... PX`` and sorted-set
#: scores accept once added to the current time. Longer delays are clamped to it.
MAX_DELAY_MS = 315_360_000_000
#: Most members one read command of a query or admin call asks Redis for (a state set's
#: page, the schedule index): larger reads go in slices, so no single command holds
#: Redis for long at any queue size (a 100,000-member ZRANGE takes tens of ms).
QUERY_PAGE = 1000
#: Most run contexts one job follows (``Job.follows``, the job-hash field ``fw``): the
#: worker hands a job at most this many, and features' Lua keeps at most this many.
MAX_FOLLOWS = 32
#: Longest run context a worker sends with an outcome (``Job.run_context``): printable
#: ASCII; longer or other text is not sent.
MAX_RUN_CONTEXT_CHARS = 256
#: ``add_jobs`` sends at most this many jobs per enqueue script call ...
ENQUEUE_CHUNK_JOBS = 1000
#: ... and at most about this many payload bytes (a call always carries at least one job).
ENQUEUE_CHUNK_BYTES = 8 * 1024 * 1024


def clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    keep = max(0, limit - len(f"... [truncated {len(text)} chars]"))
    return f"{text[:keep]}... [truncated {len(text) - keep} chars]"


def reply_text(value: object) -> str:
    """A value read from Redis as text: bytes decoded (what is not UTF-8 shown escaped),
    None as ``""``; anything else through ``str``."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return "" if value is None else str(value)


def reply_int(value: object, default: int = 0) -> int:
    """A value read from Redis as an int, ``default`` when it is missing or damaged."""
    if isinstance(value, (bytes, str, int)) and not isinstance(value, bool):
        try:
            return int(value)
        except ValueError:
            return default
    return default


def safe_text(value: object) -> str:
    """``str(value)``, or a placeholder naming its type when that fails.

    An exception (or any object a processor hands us) may define ``__str__`` to raise or
    to return something that is not a string; recording its outcome must not fail
    because of that. That includes a ``__str__`` raising a ``BaseException`` that is not
    an ``Exception`` (even one whose own ``__str__`` raises again); only
    ``KeyboardInterrupt`` and ``SystemExit`` go through, as everywhere else.
    """
    try:
        text = str(value)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:
        return f"<unprintable {_type_name(value)}>"
    # A str subclass may override encode() or slicing: keep only the plain text.
    return text if type(text) is str else str.__str__(text)


def wire_text(text: str, limit: int) -> bytes:
    """``text`` clipped to ``limit`` characters (``clip``) and encoded as UTF-8 for Redis.

    Never raises: characters UTF-8 cannot carry (lone surrogates, such as file names
    decoded with ``surrogateescape``) are written as backslash escapes (``\\udcff``), so
    the recorded text stays readable and the job's other fields are unaffected. Control
    characters are kept as they are (Redis stores any bytes; output meant for a terminal
    escapes them when it prints). A value that is not a ``str`` is converted with
    ``safe_text`` first.
    """
    if type(text) is not str:
        text = safe_text(text)
    return clip(text, limit).encode("utf-8", "backslashreplace")


def clamp_delay_ms(value: object) -> int:
    """A delay in ms as a whole number within ``0 .. MAX_DELAY_MS``.

    Out-of-range values are clamped, not refused, so a processor's odd delay never fails
    its job's outcome nor anyone else's: above ``MAX_DELAY_MS`` (``inf``, ``2**70``,
    ``sys.maxsize``) gives ``MAX_DELAY_MS``; negative values, ``-inf`` and NaN give 0
    (run again as soon as possible). Fractions of a ms are dropped.

    Raises ``TypeError`` or ``ValueError`` for a value that is not a number at all (a
    string that does not parse as one, ``None``, a list).
    """
    if type(value) is int:  # the common case: one comparison pair
        return 0 if value <= 0 else min(value, MAX_DELAY_MS)
    try:
        whole = operator.index(value)  # type: ignore[arg-type]  # int subclasses, numpy ints
    except TypeError:
        pass
    else:
        return 0 if whole <= 0 else min(whole, MAX_DELAY_MS)
    try:
        f = float(value)  # type: ignore[arg-type]  # TypeError / ValueError otherwise
    except OverflowError:
        # A number too large for a float (a huge Fraction or Decimal): only its sign
        # matters here.
        return MAX_DELAY_MS if value > 0 else 0  # type: ignore[operator]
    if math.isnan(f) or f <= 0:
        return 0
    if f >= MAX_DELAY_MS:
        return MAX_DELAY_MS
    return int(f)


def _type_name(value: object) -> str:
    try:
        name = type(value).__name__
    except (KeyboardInterrupt, SystemExit):  # pragma: no cover
        raise
    except BaseException:  # pragma: no cover - a metaclass that refuses even that
        return "object"
    return name if type(name) is str else "object"


#: Largest encoded progress value copied into a ``job-progress`` stream event; a larger
#: one stays in the job record only, and the event carries ``progress_bytes`` (its size)
#: instead. Keeps each stream entry small, so the stream's size in bytes is bounded by
#: ``events_max_len`` (must match ``PROGRESS_EVENT_MAX`` in ``lua/update.lua``).
MAX_PROGRESS_EVENT_BYTES = 256


_SHORT_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(value: object) -> str:
    """``value`` as one field of a line of text output: it cannot end the line, add a
    column, move the cursor, recolour the terminal or fail to encode.

    Text output separates records by newlines and columns by tabs, and every field may
    come from a job (its id, name, error message, event fields), i.e. from anyone who can
    add or fail a job. So every character that is not plain printable text is written
    as a Python-style escape: ``\\n``, ``\\t``, ``\\r``, ``\\xNN``, ``\\uNNNN``,
    ``\\UNNNNNNNN`` for control characters (ESC of ANSI sequences included), format
    characters (bidirectional overrides, zero-width ones), line and paragraph separators
    and lone surrogates; the backslash itself becomes ``\\\\`` so an escape in the
    output always means an escaped character. Used for the CLI's text output and for
    every log line that quotes job data (ids, names, error messages).
    """
    text = value if isinstance(value, str) else safe_text(value)
    if type(text) is not str:  # a str subclass may override the methods used below
        text = str.__str__(text)
    # The usual id or name has nothing to escape: str.isprintable is False for every
    # category escaped below (and for \n, \r, \t), so this answers it in one C call.
    if "\\" not in text and text.isprintable():
        return text
    out = []
    for ch in text:
        if ch in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[ch])
        elif unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            code = ord(ch)
            out.append(
                f"\\x{code:02x}"
                if code < 0x100
                else f"\\u{code:04x}"
                if code < 0x10000
                else f"\\U{code:08x}"
            )
        else:
            out.append(ch)
    return "".join(out)


# ---------------------------------------------------------------------------- logging
def bound_log_record(record: logging.LogRecord) -> None:
    """Bound ``record`` in place: its message (arguments filled in) clipped to
    ``MAX_LOG_MESSAGE_CHARS``; its traceback, if any, formatted now with each part (a
    frame, an exception's text) clipped and the whole cut to ``MAX_TRACEBACK_CHARS``,
    innermost frames kept. Formatters use that text (``record.exc_text``) instead of
    formatting ``exc_info`` again; ``exc_info`` stays for handlers that want the
    exception itself. Never raises."""
    try:
        message = record.getMessage()
    except Exception:  # arguments that do not fit the format: keep what can be shown
        message = f"{safe_text(record.msg)} (log arguments could not be formatted)"
    record.msg, record.args = clip(message, MAX_LOG_MESSAGE_CHARS), None
    if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
        record.exc_text = _bounded_traceback(record.exc_info)


def _bounded_traceback(exc_info: tuple[type[BaseException], BaseException, object]) -> str:
    try:
        parts = traceback.format_exception(exc_info[1])
    except Exception:
        return f"<traceback of {_type_name(exc_info[1])} could not be formatted>"
    part_limit = MAX_LOG_MESSAGE_CHARS // 2
    text = "".join(
        p if len(p) <= part_limit else clip(p.rstrip("\n"), part_limit) + "\n" for p in parts
    ).rstrip("\n")
    if len(text) > MAX_TRACEBACK_CHARS:
        marker = f"[traceback cut: {len(text) - MAX_TRACEBACK_CHARS} chars of outer frames]\n"
        text = marker + text[len(text) - MAX_TRACEBACK_CHARS :]
    return text


class _BoundedRecords(logging.Filter):
    """The filter ``get_logger`` puts on each of the library's loggers."""

    def filter(self, record: logging.LogRecord) -> bool:
        bound_log_record(record)
        return True


_BOUNDED = _BoundedRecords()


def get_logger(name: str) -> logging.Logger:
    """The logger ``name`` for the library's own records: each one is bounded by
    ``bound_log_record`` before any handler sees it. Every module of the package gets
    its logger here (a test checks that none calls ``logging.getLogger`` itself)."""
    logger = logging.getLogger(name)
    if _BOUNDED not in logger.filters:
        logger.addFilter(_BOUNDED)
    return logger


class Hush:
    """A kind of occurrence that would flood a log when it repeats: the first is said at
    once, then at most one every ``every_s`` seconds, with how many went unsaid between
    (``say``)."""

    __slots__ = ("said", "unsaid")

    def __init__(self) -> None:
        self.said: float | None = None
        self.unsaid = 0

    def say(self, every_s: float) -> int | None:
        """None when this occurrence is hushed (counted); else say it, with how many were
        hushed since the last one said."""
        now = time.monotonic()
        if self.said is not None and now - self.said < every_s:
            self.unsaid += 1
            return None
        unsaid, self.said, self.unsaid = self.unsaid, now, 0
        return unsaid
