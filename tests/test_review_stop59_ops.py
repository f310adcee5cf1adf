"""Alerts of removed rules swept by a queue configured with no rules (``LeftoverSweep``)
while another process still runs an ``AlertManager`` with rules on the same queue: the
sweep must not keep the ``alerts`` lead from it for as long as that process runs."""

from __future__ import annotations

import pytest

import test_encryption
from helpers import QueueFactory, wait_until
from kitium_queue.features.alerts.removed import LeftoverSweep

BACKLOG = {"name": "backlog", "metric": "queue_depth", "threshold": 1}
FAST = {"evaluation_interval_ms": 50, "leader_lease_ms": 1000}

pytestmark = pytest.mark.redis_only

queues = test_encryption.rq  # a queue factory on the real Redis


async def test_a_sweep_leading_first_lets_a_process_with_rules_lead(
    queues: QueueFactory,
) -> None:
    ruled = {"monitoring": {"enabled": True, "alerts": [BACKLOG], **FAST}}
    first = queues("mixed", advanced=ruled)
    await first.add_job("n", {})
    (fired,) = await first.advanced.alerts.evaluate(1)
    assert fired.state == "firing"
    await first.drain()  # the backlog is gone: the rule, evaluated, clears
    await first.close()

    # A process that still has the rule runs alongside one configured with none.
    old = queues("mixed", worker={"scheduler": False}, advanced=ruled)
    announcer = next(s for s in old.services if s.name == "alerts-rules")
    await announcer.start(old)
    new = queues(
        "mixed",
        worker={"scheduler": False},
        advanced={"monitoring": {"enabled": True, "alerts": [], **FAST}},
    )
    sweep = next(s for s in new.services if isinstance(s, LeftoverSweep))
    await new.start()
    await wait_until(lambda: sweep.leader is not None and sweep.leader.is_leader, 10)
    await old.start()  # its AlertManager campaigns for the same role
    manager = old.advanced.alerts
    assert manager is not None
    # The rule is evaluated where it is configured, and clears (not as rule-removed).
    await wait_until(lambda: manager.evaluations > 0, 10)
    client = await old.client()

    async def cleared() -> bool:
        raw = await client.hget(old.keys.extra("alerts:state"), "backlog")
        return raw is not None and raw.startswith(b"ok")

    await wait_until(cleared, 10)
