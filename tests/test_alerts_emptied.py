"""Alerts left firing by a configuration whose alert rules were all removed.

With ``monitoring.alerts`` emptied (or the ``monitoring`` section removed) no
``AlertManager`` was made, so nothing swept: an alert that fired stayed "firing" in
Redis (the dashboard, ``kitium-queue alerts``) for ever and no ``alert-cleared`` was
ever sent. A worker's start now checks once whether alert records are left; only then
does a leader clear them once (``reason`` ``rule-removed``), leaving alone a rule a
running process still announces (a rolling deploy), and the sweep stops. A queue that
never had alerts pays that one check and nothing else.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

import test_encryption
from helpers import EventLog, QueueFactory, app_module, wait_until
from kitium_queue import JobQueue
from kitium_queue.cli import main as cli_main
from kitium_queue.features.alerts.removed import LeftoverSweep
from kitium_queue.features.webhooks import WebhookConfig

BACKLOG = {"name": "backlog", "metric": "queue_depth", "threshold": 1}
FAST = {"evaluation_interval_ms": 50, "leader_lease_ms": 1000}

pytestmark = pytest.mark.redis_only


queues = test_encryption.rq  # a queue factory on the real Redis


def _leftovers(q: JobQueue) -> LeftoverSweep:
    found = [s for s in q.services if isinstance(s, LeftoverSweep)]
    assert len(found) == 1, [s.name for s in q.services]
    return found[0]


async def _fire(queues: QueueFactory, name: str) -> str:
    """The earlier configuration: rule ``backlog`` fires (recorded in Redis)."""
    old = queues(name, advanced={"monitoring": {"enabled": True, "alerts": [BACKLOG], **FAST}})
    await old.add_job("n", {})
    (fired,) = await old.advanced.alerts.evaluate(1)
    assert (fired.rule, fired.state) == ("backlog", "firing")
    await old.drain()
    await old.close()
    return fired.id


def _alerts_cli(tmp_path: Path, redis_url: str, prefix: str, name: str) -> dict[str, Any]:
    """``kitium-queue alerts --json`` for an app that has the rule again."""
    source = (
        "from kitium_queue import JobQueue\n"
        f"queue = JobQueue({name!r}, redis={redis_url!r}, prefix={prefix!r}, advanced="
        f"{{'monitoring': {{'enabled': True, 'alerts': [{BACKLOG!r}]}}}})\n"
    )
    with app_module(tmp_path, source, "kq_alerts_emptied") as module:
        out = CliRunner().invoke(cli_main, ["alerts", f"{module}:queue", "--json"])
    assert out.exit_code == 0, out.output
    report: dict[str, Any] = json.loads(out.stdout)
    return report


@pytest.mark.parametrize("emptied", ["alerts-empty", "monitoring-removed"])
async def test_an_alert_left_firing_by_an_emptied_configuration_is_cleared_once(
    queues: QueueFactory, redis_url: str, prefix: str, tmp_path: Path, receiver: Any,
    emptied: str,
) -> None:  # fmt: skip
    fired_id = await _fire(queues, "emptied")
    webhooks = {"enabled": True, "allow_networks": ["127.0.0.0/8"]}
    advanced: dict[str, Any] = {"webhooks": webhooks}
    if emptied == "alerts-empty":
        advanced["monitoring"] = {"enabled": True, "alerts": [], **FAST}
    new = queues("emptied", worker={"scheduler": False}, advanced=advanced)
    assert new.advanced.alerts is None  # no rules: no AlertManager
    await new.advanced.webhooks.register_webhook(
        WebhookConfig(url=receiver.url, events=["queue-alert"], secret="whsec_" + "k" * 32)
    )
    log = EventLog(new, ["alert-fired", "alert-cleared"])
    client = await new.client()
    await new.start()
    await wait_until(lambda: log.names() == ["alert-cleared"], 10)
    ev = log.of("alert-cleared")[0].extra
    assert (ev["subject"], ev["reason"], ev["state"]) == ("backlog", "rule-removed", "ok")
    await wait_until(lambda: len(receiver.ok()) == 1, 10)
    body = orjson.loads(receiver.ok()[0].body)["data"]
    assert (body["rule"], body["state"], body["reason"]) == ("backlog", "ok", "rule-removed")
    # The sweep ends once nothing is left: no loop, the lease released.
    sweep = _leftovers(new)
    await wait_until(lambda: not sweep.sweeping, 10)
    assert sweep.checks == 1 and sweep.leader is None
    assert await client.exists(new.keys.extra("leader:alerts")) == 0
    assert await client.hgetall(new.keys.extra("alerts:state")) == {}
    assert await client.zcard(new.keys.extra("alerts:unreported")) == 0
    await asyncio.sleep(0.3)
    assert log.names() == ["alert-cleared"] and len(receiver.ok()) == 1

    # What `kitium-queue alerts` (and the API under it) shows: no alert firing.
    report = await asyncio.to_thread(_alerts_cli, tmp_path, redis_url, prefix, "emptied")
    assert report["states"] == [{"rule": "backlog", "state": "ok", "since_ms": None,
                                 "value": None}]  # fmt: skip
    latest = report["history"][0]
    assert (latest["rule"], latest["state"], latest["reason"]) == ("backlog", "ok", "rule-removed")
    assert report["history"][1]["id"] == fired_id


async def test_a_queue_that_never_had_alerts_starts_no_sweep(
    queues: QueueFactory, prefix: str
) -> None:
    q = queues("plain", worker={"scheduler": False}, advanced={"fifo": {"enabled": True}})
    sweep = _leftovers(q)
    client = await q.client()
    await q.start()
    for i in range(5):
        await q.add_job("n", {"i": i})
    await asyncio.sleep(0.3)
    assert sweep.checks == 1  # the one check at the worker's start
    assert not sweep.sweeping and sweep.leader is None
    assert not [s for s in q.services if s.name == "alerts"]  # no leader service
    names = [t.get_name() for t in asyncio.all_tasks()]
    assert not [n for n in names if "alerts" in n], names
    keys = [k.decode() async for k in client.scan_iter(match=f"{prefix}:*")]
    assert keys and not [k for k in keys if "alerts" in k], keys


async def test_a_rule_a_running_process_announces_is_kept_until_it_stops(
    queues: QueueFactory,
) -> None:
    """A rolling deploy: an old process still has the rule (it announces it) while the
    new one, with no rules, leads the sweep: nothing is cleared until the old process
    stopped announcing, then the alert is cleared once."""
    old = queues("rolling", advanced={"monitoring": {"enabled": True, "alerts": [BACKLOG], **FAST}})
    await old.add_job("n", {})
    await old.advanced.alerts.evaluate(1)
    announcer = next(s for s in old.services if s.name == "alerts-rules")
    await announcer.start(old)  # what each worker of the old process runs
    new = queues(
        "rolling",
        worker={"scheduler": False},
        advanced={"monitoring": {"enabled": True, "alerts": [], **FAST}},
    )
    log = EventLog(new, ["alert-fired", "alert-cleared"])
    client = await new.client()
    await new.pause()  # the job stays: the rule would still fire where it is evaluated
    await new.start()
    sweep = _leftovers(new)
    await wait_until(lambda: sweep.leader is not None and sweep.leader.is_leader, 10)
    await asyncio.sleep(1.5)  # well past an announcement's hold (3 x 50 ms + 1 s)
    assert log.names() == []
    state = await client.hget(new.keys.extra("alerts:state"), "backlog")
    assert state is not None and state.startswith(b"firing ")
    assert sweep.sweeping
    await announcer.stop()  # the old process is gone: its announcement ends by itself
    await wait_until(lambda: log.names() == ["alert-cleared"], 10)
    assert log.of("alert-cleared")[0].extra["reason"] == "rule-removed"
    await wait_until(lambda: not sweep.sweeping, 10)
    await asyncio.sleep(0.3)
    assert log.names() == ["alert-cleared"]
    assert await client.hgetall(new.keys.extra("alerts:state")) == {}
