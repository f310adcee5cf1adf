"""Why a job fired by a schedule is not running yet (``queue.explain``).

Registered by ``ScheduleStore`` (``queue.schedules``). A delayed job whose id is a
schedule's (``sched:<schedule id>:<tick ms>``) waits out the schedule's jitter: the
reason names the schedule and the tick. Only reads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..enums import JobStatus
from ..explain import JobFacts, Reason, at

if TYPE_CHECKING:
    from .schedules import ScheduleStore

__all__ = ["make_explainer"]


def make_explainer(store: ScheduleStore) -> Any:
    """The explainer of schedules on ``store``'s queue."""

    async def explain(facts: JobFacts) -> list[Reason]:
        job = facts.job
        if job.status is not JobStatus.DELAYED or not job.id.startswith("sched:"):
            return []
        sid, _, tick = job.id[len("sched:") :].rpartition(":")
        if not sid or not (tick.isascii() and tick.isdigit()) or len(tick) > 20:
            return []
        sched = await store.get(sid)
        if sched is None or not sched.jitter_ms:
            return []
        return [
            Reason(
                "schedule-jitter",
                f"fired by schedule {sid!r} for its tick at {at(int(tick), facts.now_ms)}; "
                f"its jitter (up to {sched.jitter_ms} ms) spreads the start",
                blocking=False,
                refs=(("schedule", sid),),
                source="schedules",
            )
        ]

    return explain
