"""Item 16 (issue 18, item 5): replica-acknowledged writes through a Sentinel failover.

Per round, a fresh deployment (a primary, one replica replicating through a loopback
proxy, three sentinels; ``tests/_replica_loss.py``): four producers add jobs with their
own ids while a worker consumes them; the replication link is stalled for ``stall_s``
(the replica falls behind), the primary is SIGKILLed, the link dropped with what it
held, and Sentinel promotes the replica. Every acknowledged id is then looked up on the
new primary. Rounds alternate between a queue without the option and one with
``ReplicaAcks(replicas=1, timeout_ms=100)``.

Checks: with the option no acknowledged enqueue is lost (those written during the stall
raised ``ReplicaAckError`` instead of being acknowledged); without it, the ones
acknowledged during the stall are lost (the gap the option closes). Figures per round
and in total: acknowledged, lost, written-but-not-acknowledged, failover time, add_job
p50 latency.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..core import Context, Result, scenario
from ..infra import TESTS  # noqa: F401  (puts tests/ on sys.path)


@scenario("replica-acks", 16, "Replica-acknowledged writes: primary SIGKILL with a lagging replica")
def run(ctx: Context, res: Result) -> None:
    from _replica_loss import primary_kill_run

    rounds = ctx.pick(1, 5)
    stall = ctx.pick(0.5, 1.0)
    load = ctx.pick(1.0, 5.0)
    per_round: list[dict[str, Any]] = []
    for r in range(rounds):
        for acks in (False, True):
            fig = asyncio.run(primary_kill_run(ctx.prefix(), acks=acks, load_s=load, stall_s=stall))
            fig["round"] = r + 1
            per_round.append(fig)
    with_acks = [f for f in per_round if f["replica_acks"]]
    without = [f for f in per_round if not f["replica_acks"]]
    lost_with = sum(f["lost_acknowledged"] for f in with_acks)
    lost_without = sum(f["lost_acknowledged"] for f in without)
    res.expect(
        "with ReplicaAcks: 0 acknowledged enqueues lost",
        lost_with == 0,
        [f["lost_examples"] for f in with_acks if f["lost_acknowledged"]],
    )
    res.expect(
        "with ReplicaAcks: writes during the stall were refused, not acknowledged",
        all(f["written_not_acknowledged"] > 0 for f in with_acks),
        [f["written_not_acknowledged"] for f in with_acks],
    )
    res.expect(
        "without: the enqueues acknowledged during the stall were lost",
        all(f["lost_acknowledged"] > 0 for f in without),
        [f["lost_acknowledged"] for f in without],
    )
    res.figures.update(
        {
            "rounds": rounds,
            "stall_s": stall,
            "lost_acknowledged_without": lost_without,
            "lost_acknowledged_with": lost_with,
            "acknowledged_without": sum(f["acknowledged"] for f in without),
            "acknowledged_with": sum(f["acknowledged"] for f in with_acks),
            "per_round": per_round,
        }
    )
