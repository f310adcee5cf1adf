"""Dependents of jobs that finished without releasing them, released.

A tracked job's dependents are released (or its ``on_failure`` policy applied) in the
atomic step that records its end, by the feature's release fragment. A process of the
queue that has not created ``JobChainManager`` (an older worker during a rolling
deploy, a script that forgot it) runs a plain parent or a workflow step and finishes it
without that fragment: its step stays open and its dependents wait for good, parked
behind ``wp:<parent>`` or their own ``wn:<id>``. ``heal_dependents`` walks those
blockers in the queue's parked index (``ZSCAN``, a page per ``wf_heal.lua`` call) and
gives each such job the end the release fragment would have given it; the queue's
workers with ``JobChainManager`` run it every ``HEAL_INTERVAL_S`` in one process at a
time (``LeaderService`` ``workflow-heal``).

The same walk drops from the index of workflows (``wfs``) the entries of workflows whose
records are gone (their retention ended): nothing else removes them, so the index grew
by one entry per workflow ever created, and the id of an ended workflow could never be
used again (``execute_workflow`` found it in the index). ``forget_ended`` looks at the
oldest entries first, a page at a time, up to ``INDEX_BUDGET`` entries per walk; the
next walk goes on from there, so long-running workflows at the head of the index do not
keep the ended ones behind them indexed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from ...errors import JobStateError
from ...leader import LeaderService, every
from ...limits import get_logger
from ...presence import PRUNE_INDEX

if TYPE_CHECKING:
    from ...queue import JobQueue

__all__ = [
    "HEAL_INTERVAL_S",
    "DependentsHealReport",
    "forget_ended",
    "heal_dependents",
    "heal_service",
]

log = get_logger(__name__)

#: Seconds between two walks of a queue's blockers by its workers.
HEAL_INTERVAL_S = 30.0
#: Blockers sent per script call.
PAGE = 200
#: Jobs checked per script call (a blocker ``wn:<id>`` checks each of the job's parents).
CHECKS = 1000
#: The blockers of this feature in the parked index (prelude.lua names them).
MATCH = "w[pn]:*"
#: Entries of the index of workflows checked per call of ``forget_ended``, and at most
#: per walk.
INDEX_PAGE, INDEX_BUDGET = 500, 20_000


@dataclass(frozen=True, slots=True)
class DependentsHealReport:
    """What one walk of a queue's dependents released.

    Attributes:
        parents: jobs that had finished (or whose record was gone) without releasing
            their dependents, given the end the release fragment would have given them.
        dependents: dependents those releases made ready to run (a parent that failed
            for good applies its ``on_failure`` policy instead: skipped or cancelled
            dependents are not counted here).
    """

    parents: int = 0
    dependents: int = 0


def _text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


async def _call(queue: JobQueue, client: Any, blockers: list[str]) -> tuple[int, int]:
    """Run ``wf_heal.lua`` over ``blockers`` until every one is done."""
    parents = dependents = 0
    while blockers:
        got = await queue.scripts.call(
            client, "wf_heal", queue.keys.all, [*queue.ctx.argv_head(), CHECKS, *blockers]
        )
        # The script does at least one blocker per call: the loop ends.
        blockers = blockers[max(1, int(got[0])) :]
        parents, dependents = parents + int(got[1]), dependents + int(got[2])
    return parents, dependents


async def heal_dependents(queue: JobQueue) -> DependentsHealReport:
    """Walk every blocker of dependents of ``queue`` once: a parent that finished
    without releasing its dependents (a process without ``JobChainManager`` ran it) is
    given the end the release fragment would have given it. Logs a warning naming the
    likely cause when it released any."""
    client = await queue.client()
    parents = dependents = 0
    page: list[str] = []
    index = queue.keys.parked_index
    try:
        async for member, _ in client.zscan_iter(index, match=MATCH, count=500):
            page.append(_text(member))
            if len(page) >= PAGE:
                p, d = await _call(queue, client, page)
                parents, dependents, page = parents + p, dependents + d, []
    except ResponseError as exc:
        if "WRONGTYPE" not in str(exc):
            raise
        raise JobStateError(
            f"the parked index {index} holds another type than a sorted set (damaged by "
            "hand?): the blockers of dependents cannot be walked; repair it with "
            "parking.rebuild_parked(queue) (CLI: kitium-queue parked rebuild APP), then heal"
        ) from None
    if page:
        p, d = await _call(queue, client, page)
        parents, dependents = parents + p, dependents + d
    if parents:
        log.warning(
            "queue %s: %d job(s) had finished without releasing their dependents (or "
            "applying their on_failure policy); done now, %d dependent(s) made ready. A "
            "process of the queue without JobChainManager (an older worker, a script) "
            "ran them: create JobChainManager, with the same arguments, in every process "
            "that adds or runs the queue's jobs",
            queue.name,
            parents,
            dependents,
        )
    return DependentsHealReport(parents, dependents)


async def forget_ended(queue: JobQueue, start: int = 0) -> tuple[int, int]:
    """Drop the entries of the index of workflows (``wfs``) whose records are gone (their
    retention ended), oldest first from the ``start``-th, until the index ends or
    ``INDEX_BUDGET`` entries were looked at; returns how many were dropped and where the
    next call starts (0 once the end was reached). Workflows still running, however many
    and however old, never hold back the younger ones: each walk goes on from where the
    last one stopped. An index of another type (damaged by hand) is left as it is
    (``execute_workflow`` and ``list_workflows`` report it)."""
    client = await queue.client()
    index = queue.keys.extra("wfs")
    seen = dropped = 0
    try:
        while seen < INDEX_BUDGET:
            wids = [_text(w) for w in await client.zrange(index, start, start + INDEX_PAGE - 1)]
            if not wids:
                return dropped, 0
            seen += len(wids)
            keys = [index, *(queue.keys.extra(f"wf:{w}") for w in wids)]
            n = int(await client.eval(PRUNE_INDEX, len(keys), *keys, *wids))
            dropped += n
            start += len(wids) - n  # the live ones of this page stay ahead
    except ResponseError as exc:
        if "WRONGTYPE" not in str(exc):
            raise
        return dropped, 0
    return dropped, start


def heal_service(queue: JobQueue, interval_s: float = HEAL_INTERVAL_S) -> LeaderService:
    """The workers' walk of ``queue``'s dependents and of its index of workflows: when
    this process starts leading, then every ``interval_s``, in one process at a time."""

    at = 0  # where the next walk of the index of workflows starts

    async def step() -> None:
        nonlocal at
        _, at = await forget_ended(queue, at)
        await heal_dependents(queue)

    async def serve(term: int) -> None:
        await every(int(interval_s * 1000), step, f"queue {queue.name}: workflow heal")

    return LeaderService("workflow-heal", serve)
