"""Size limits on everything a client sends to Redis (names, ids, options, logs, progress,
errors), so one bad or hostile caller cannot bloat Redis or the event stream.

The payload limit is per queue (``JobQueue(max_payload_bytes=...)``, 1 MiB by default,
also applied to results); the rest are fixed here. Values that are refused raise
``ConfigurationError`` or ``PayloadTooLargeError`` naming the limit; text recorded on the
job's behalf (log lines, error messages, tracebacks) is truncated instead, with a marker.
"""

from __future__ import annotations

__all__ = [
    "ENQUEUE_CHUNK_BYTES",
    "ENQUEUE_CHUNK_JOBS",
    "MAX_ERROR_CHARS",
    "MAX_ID_LENGTH",
    "MAX_JOB_NAME_LENGTH",
    "MAX_LOG_LINE_CHARS",
    "MAX_OPTIONS_BYTES",
    "MAX_PROGRESS_BYTES",
    "MAX_TRACEBACK_CHARS",
    "clip",
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
#: Longest traceback recorded on a job (the innermost frames are kept).
MAX_TRACEBACK_CHARS = 16_384
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
