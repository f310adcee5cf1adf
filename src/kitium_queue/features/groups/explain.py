"""Why a job of a FIFO message group is not running (``queue.explain``).

Registered by the manager on every queue it enables groups on. It reads the group's
settings and the jobs holding its turns (``prelude.lua`` names the keys) and reports:
the group is paused; the job waits in the group's line while its turns are held (and
by which jobs, on which workers); the group is over its rate limit until the window
ends. Only reads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...enums import JobStatus
from ...explain import JobFacts, Reason, at
from ...limits import reply_int, reply_text
from .lua import FEATURE

if TYPE_CHECKING:
    from ...queue import JobQueue

__all__ = ["make_explainer"]

#: Turn holders listed at most.
_HOLDERS = 10


def make_explainer(q: JobQueue, default_conc: int) -> Any:
    """The explainer of groups on queue ``q`` (``default_conc``: the declared default
    group concurrency)."""

    async def explain(facts: JobFacts) -> list[Reason]:
        job = facts.job
        group = facts.fields.get("gk") or job.options.get("message_group_id")
        if (
            not isinstance(group, str)
            or not group
            or job.status
            in (
                JobStatus.COMPLETED,
                JobStatus.FAILED,
                JobStatus.DLQ,
                JobStatus.ACTIVE,
            )
        ):
            return []
        blocker = facts.blocker or ""
        client = await q.client()
        pipe = client.pipeline(transaction=False)
        pipe.hmget(q.keys.extra(f"grp:{group}"), "paused", "conc", "rlm", "rld", "rw", "rn")
        pipe.srandmember(q.keys.extra(f"grp-run:{group}"), _HOLDERS)
        pipe.zrank(q.keys.parked(f"g:{group}"), job.id)
        settings, holders, place = await pipe.execute()
        paused = settings[0]
        conc, rlm, rld, rw, rn = (reply_int(v) for v in settings[1:])
        refs = (("group", group),)
        out: list[Reason] = []
        if paused == b"1":
            out.append(
                Reason(
                    "group-paused",
                    f"its message group {group!r} is paused: resume the group to run it",
                    refs=refs,
                    source=FEATURE,
                )
            )
        if blocker == f"g:{group}" and (paused != b"1" or holders):
            out.append(await _turn(q, group, job.id, holders, place, conc or default_conc))
        if blocker == f"gr:{group}" or (
            rlm and rld and rn >= rlm and job.status is JobStatus.WAITING
        ):
            until = rw + rld
            if until > facts.now_ms:
                out.append(
                    Reason(
                        "group-rate",
                        f"its message group {group!r} reached its rate limit ({rlm} "
                        f"starts per {rld} ms); the window ends {at(until, facts.now_ms)}",
                        until_ms=until,
                        refs=refs,
                        source=FEATURE,
                    )
                )
        return out

    return explain


async def _turn(
    q: JobQueue, group: str, job_id: str, holders: list[Any], place: int | None, conc: int
) -> Reason:
    ids = sorted(reply_text(h) for h in holders if reply_text(h) != job_id)
    client = await q.client()
    pipe = client.pipeline(transaction=False)
    for i in ids:
        pipe.hmget(q.keys.job(i), "st", "w")
    rows = await pipe.execute() if ids else []
    held = []
    for i, (st, w) in zip(ids, rows, strict=True):
        where = f" on worker {reply_text(w)}" if st == b"active" and w else ""
        held.append(f"job {i} ({reply_text(st) or 'gone'}{where})")
    ahead = f"; {place} job(s) of the group are ahead of it in line" if place else ""
    who = ", ".join(held) if held else "no job (the next free turn goes to the line's head)"
    return Reason(
        "group-turn",
        f"waiting for its turn in message group {group!r} (at most {conc} at a time): "
        f"the turn is held by {who}{ahead}",
        refs=(("group", group), *(("job", i) for i in ids)),
        source=FEATURE,
    )
