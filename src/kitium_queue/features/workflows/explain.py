"""Why a job with dependencies is not running (``queue.explain``).

Registered by ``JobChainManager`` on its queue. For a job parked behind a parent
(blocker ``wp:<parent>``) or behind its own last parents (``wn:<id>``), or marked as
having had unfinished parents (``wd``), it lists the parents that have not finished,
with the state of each (``prelude.lua`` names the keys), and says when some finished
without releasing it (``heal.py``). Only reads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...enums import JobStatus
from ...explain import JobFacts, Reason
from ...limits import reply_text
from .heal import HEAL_INTERVAL_S
from .lua import FEATURE, MAX_PARENTS

if TYPE_CHECKING:
    from ...queue import JobQueue

__all__ = ["make_explainer"]

_DONE = {b"completed", b"failed", b"skipped", b"cancelled"}
#: A parent's job states that mean it finished (its step should be closed).
_ENDED = {b"completed", b"failed", b"dlq"}
#: Unfinished parents named at most in one reason.
_NAMED = 10


def make_explainer(q: JobQueue) -> Any:
    """The explainer of dependencies on queue ``q``."""

    async def explain(facts: JobFacts) -> list[Reason]:
        job = facts.job
        blocker = facts.blocker or ""
        if job.status not in (JobStatus.PENDING, JobStatus.WAITING, JobStatus.DELAYED):
            return []
        if not (blocker.startswith(("wp:", "wn:")) or facts.fields.get("wd") == "1"):
            return []
        client = await q.client()
        parents = [
            reply_text(p)
            for p in await client.lrange(q.keys.extra(f"dep-p:{job.id}"), 0, MAX_PARENTS - 1)
        ]
        if not parents:
            return []
        pipe = client.pipeline(transaction=False)
        for p in parents:
            pipe.hget(q.keys.extra(f"dep:{p}"), "st")
            pipe.hget(q.keys.job(p), "st")
        rows = await pipe.execute()
        open_: list[tuple[str, str]] = []
        missed = 0
        for i, p in enumerate(parents):
            dep_st, job_st = rows[2 * i], rows[2 * i + 1]
            if dep_st in _DONE:
                continue
            if job_st in _ENDED or (dep_st and job_st is None):
                missed += 1
            open_.append((p, reply_text(job_st) or ("waiting" if dep_st else "missing")))
        if not open_:
            return []
        named = ", ".join(f"job {p} ({st})" for p, st in open_[:_NAMED])
        more = f" and {len(open_) - _NAMED} more" if len(open_) > _NAMED else ""
        why = ""
        if missed:
            # The heal walks blockers: a job parked behind a parent still running is
            # met once that parent finished and it waits behind its own blocker.
            when = "" if missed == len(open_) else "once its other parents finished, "
            why = (
                f"; {missed} of them finished (or are gone) without releasing it: a process "
                "of the queue without JobChainManager ran them. The queue's workers with "
                f"JobChainManager release it {when}within {int(HEAL_INTERVAL_S)} s (at "
                "once: JobChainManager.heal(), CLI: kitium-queue workflows heal APP)"
            )
        return [
            Reason(
                "dependencies",
                f"waiting for {len(open_)} of its {len(parents)} parent job(s) to finish: "
                f"{named}{more}{why}",
                refs=tuple(("job", p) for p, _ in open_[:_NAMED]),
                source=FEATURE,
            )
        ]

    return explain
