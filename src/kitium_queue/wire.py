"""What Python and the Lua scripts exchange, as named layouts (the one place they live).

Script arguments are flat lists (one ``EVALSHA`` per batch keeps the hot path fast), so
each layout below is a tuple of field names: the position of a name is its offset in the
group of arguments one job (or one outcome) takes. The Lua side reads the same layout;
its file header documents it with the same names, and ``tests/test_wire.py`` checks
that both agree.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "CLAIM_HEAD",
    "CLAIM_JOB",
    "ENQUEUE_JOB",
    "FINISH_OUTCOME",
    "OUTCOME_CODES",
    "Kind",
]

#: ``enqueue.lua``: the arguments of one job, after the idempotency window.
ENQUEUE_JOB: Final = (
    "id",  # '' = next sequence number
    "name",
    "data",  # encoded payload (codecs applied)
    "opts",  # JSON of the stored options, or ''
    "priority",  # 0..65535
    "delay_ms",  # 0 = none
    "lifo",  # '1' | '0'
    "idempotency_key",  # '' = none
)

#: ``finish.lua``: the arguments of one outcome, after the dlq flag.
FINISH_OUTCOME: Final = (
    "id",
    "token",  # the lease (fencing) token the job was claimed with
    "kind",  # one of OUTCOME_CODES
    "payload",  # result (C) or reason (R, F, D)
    "traceback",
    "delay_ms",  # R, D
    "keep_count",  # retention of the finished set: -1 keep all, 0 remove at once
    "keep_age_ms",  # -1 = no age limit
    "meta",  # C, F: the run's context (Job.run_context), or ''; C: stored as 'm' too;
    # D: the hold to set ('hold' | 'hold:<key>' | '')
)


class Kind:
    """Outcome codes of ``finish.lua`` (field ``kind`` of ``FINISH_OUTCOME``)."""

    COMPLETED: Final = "C"
    RETRY: Final = "R"  # failed, runs again after delay_ms (an attempt spent)
    FAILED: Final = "F"  # failed for good: dlq, or failed when the DLQ is disabled
    DEFER: Final = "D"  # RetryLater / RateLimited: back after delay_ms, no attempt spent
    HAND_BACK: Final = "H"  # unstarted or interrupted by shutdown: back to wait


#: Every outcome code, with what it records.
OUTCOME_CODES: Final = {
    Kind.COMPLETED: "completed",
    Kind.RETRY: "retrying",
    Kind.FAILED: "failed",
    Kind.DEFER: "deferred",
    Kind.HAND_BACK: "released",
}

#: ``claim.lua``: the reply starts with these, then one ``CLAIM_JOB`` array per job.
CLAIM_HEAD: Final = (
    "status",  # 'ok' | 'paused' | 'limited' | 'empty'
    "wake_in",  # ms until something becomes due, -1 = nothing scheduled (or every slot filled)
    "token",  # the fencing token of this claim (every job of it)
    "recovered",  # ids whose expired lease was recovered (back to wait)
    "dead",  # ids dead-lettered by recovery or as damaged records
)

#: ``claim.lua``: one claimed job.
CLAIM_JOB: Final = (
    "id",
    "name",
    "data",
    "opts",
    "attempts",  # including this one
    "created_at",  # ms
    "stalls",
    "progress",
    "follows",  # field 'fw': run contexts, newline-separated; None = no run links
)
