"""An alert rule removed from the configuration (or renamed) while it fires.

Its record stayed in ``alerts:state`` for ever and no ``cleared`` was ever sent: a
``queue.on`` handler, a webhook receiver, the dashboard and ``kitium-queue alerts`` went
on believing it fired, and the rule configured again under that name stayed "firing"
without firing. The leader's evaluation now clears it once (``reason`` ``rule-removed``)
through the same reporter as every change, then drops its record; a rule some running
process still has (a rolling deploy) is left alone until that process is gone; the work
per evaluation is bounded.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from helpers import EventLog, QueueFactory, wait_until
from kitium_queue import AlertManager, JobQueue
from kitium_queue.features.alerts.removed import SWEEP_PAGE
from kitium_queue.features.webhooks import WebhookConfig
from workers.procs import WorkerProcs

ALERT_WORKER = Path(__file__).resolve().parent / "workers" / "alert_worker.py"
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from chaos.receiver import Receiver  # noqa: E402

BACKLOG = {"name": "backlog", "metric": "queue_depth", "threshold": 1}
KEEP = {"name": "keep", "metric": "queue_depth", "threshold": 1000}


def _monitoring(*rules: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"monitoring": {"enabled": True, "alerts": list(rules), **extra}}


async def _stored(client: Any, q: JobQueue) -> dict[str, str]:
    raw = await client.hgetall(q.keys.extra("alerts:state"))
    return {k.decode(): v.decode() for k, v in raw.items()}


async def test_a_removed_rule_is_cleared_once_dropped_and_starts_afresh_when_back(
    make_queue: QueueFactory,
) -> None:
    old = make_queue("gone", advanced=_monitoring(BACKLOG, KEEP))
    await old.add_job("n", {})
    (fired,) = await old.advanced.alerts.evaluate(1)
    assert (fired.rule, fired.state) == ("backlog", "firing")
    client = await old.client()
    await old.close()

    # The queue made again (same name and prefix) without the rule.
    new = make_queue("gone", advanced=_monitoring(KEEP))
    m: AlertManager = new.advanced.alerts
    log = EventLog(new, ["alert-fired", "alert-cleared"])
    (cleared,) = await m.evaluate(2)
    assert (cleared.rule, cleared.state, cleared.reason) == ("backlog", "ok", "rule-removed")
    assert (cleared.metric, cleared.threshold, cleared.value) == ("queue_depth", "1", "")
    assert await m.evaluate(2) == []  # once
    assert log.names() == ["alert-cleared"]
    ev = log.of("alert-cleared")[0].extra
    assert (ev["subject"], ev["reason"], ev["state"]) == ("backlog", "rule-removed", "ok")
    assert ev["event_id"] == cleared.id
    assert "backlog" not in await _stored(client, new)
    latest = (await m.history(1))[0]
    assert (latest.rule, latest.state, latest.reason) == ("backlog", "ok", "rule-removed")
    assert await client.zcard(new.keys.extra("alerts:unreported")) == 0
    await new.close()

    # Configured again: no record left, so it fires anew (it stayed "firing" before).
    back = make_queue("gone", advanced=_monitoring(BACKLOG))
    (again,) = await back.advanced.alerts.evaluate(3)
    assert (again.rule, again.state, again.reason) == ("backlog", "firing", "")
    assert again.id != fired.id


async def test_a_removed_rule_that_was_ok_is_dropped_without_a_report(
    make_queue: QueueFactory,
) -> None:
    old = make_queue("okgone", advanced=_monitoring(BACKLOG))
    await old.add_job("n", {})
    await old.advanced.alerts.evaluate(1)
    await old.drain()
    (ok,) = await old.advanced.alerts.evaluate(1)
    assert ok.state == "ok"
    client = await old.client()
    assert "backlog" in await _stored(client, old)
    new = make_queue("okgone", advanced=_monitoring(KEEP))
    log = EventLog(new, ["alert-fired", "alert-cleared"])
    assert await new.advanced.alerts.evaluate(2) == []
    assert log.names() == []
    assert "backlog" not in await _stored(client, new)


@pytest.mark.redis_only
async def test_the_clearing_goes_out_after_the_unreported_firing_it_follows(
    redis_url: str, prefix: str
) -> None:
    """The old leader recorded the firing and died before reporting it: the new
    leader (a worker, its own service) sends the firing first, then the clearing, as
    webhooks and as queue.on events, in that order."""
    receiver = await Receiver().start()
    old = JobQueue("hooked", redis=redis_url, prefix=prefix)
    AlertManager(old, [BACKLOG], run_service=False)
    new = JobQueue(
        "hooked",
        redis=redis_url,
        prefix=prefix,
        worker={"scheduler": False},
        advanced={
            "webhooks": {"enabled": True, "allow_networks": ["127.0.0.0/8"]},
            **_monitoring(KEEP, evaluation_interval_ms=50),
        },
    )
    try:
        await new.advanced.webhooks.register_webhook(
            WebhookConfig(url=receiver.url, events=["queue-alert"], secret="whsec_" + "k" * 32)
        )
        # Recorded, never reported (its leader died in between).
        term = "leader:alerts:term"
        reply = await old.run(
            "alerts_state", ["backlog", "firing", 1, "3", "queue_depth", "1", term]
        )
        assert reply[0] == b"changed"
        log = EventLog(new, ["alert-fired", "alert-cleared"])
        await new.start()
        await wait_until(lambda: len(receiver.ok()) == 2, 10)
        assert log.names() == ["alert-fired", "alert-cleared"]
        bodies = [orjson.loads(r.body)["data"] for r in receiver.ok()]
        assert [(b["rule"], b["state"]) for b in bodies] == [
            ("backlog", "firing"),
            ("backlog", "ok"),
        ]
        assert "reason" not in bodies[0] and bodies[1]["reason"] == "rule-removed"
        await asyncio.sleep(0.3)  # more evaluations: nothing more
        assert len(receiver.ok()) == 2 and len(log.names()) == 2
    finally:
        await new.close()
        await old.close()
        await receiver.stop()


async def test_a_record_an_earlier_release_wrote_is_found_through_the_log(
    make_queue: QueueFactory,
) -> None:
    """A record without the index (and without metric and threshold), as a release
    before this one left it: the log holds its firing, so it is cleared too."""
    q = make_queue("legacy", advanced=_monitoring(KEEP))
    client = await q.client()
    await client.hset(q.keys.extra("alerts:state"), "backlog", "firing 1 1 5")
    await client.xadd(
        q.keys.extra("alerts:log"),
        {"rule": "backlog", "state": "firing", "metric": "queue_depth", "value": "5",
         "threshold": "3"},
    )  # fmt: skip
    (cleared,) = await q.advanced.alerts.evaluate(1)
    assert (cleared.rule, cleared.reason, cleared.metric) == ("backlog", "rule-removed", "")
    assert await _stored(client, q) == {}


async def test_the_work_per_evaluation_is_bounded(make_queue: QueueFactory) -> None:
    """Many records of removed rules (renamed again and again, or written by hand):
    each evaluation clears at most SWEEP_PAGE of them; every one is cleared once."""
    q = make_queue("many", advanced=_monitoring(KEEP))
    client = await q.client()
    n = 3 * SWEEP_PAGE + 7
    names = [f"r{i}" for i in range(n)]
    await client.hset(
        q.keys.extra("alerts:state"),
        mapping={r: "firing 1 1 5 queue_depth 3" for r in names},
    )
    await client.zadd(q.keys.extra("alerts:stored"), {r: 0 for r in [*names, "*"]})
    log = EventLog(q, ["alert-cleared"])
    m: AlertManager = q.advanced.alerts
    per: list[int] = []
    for _ in range(6):
        per.append(len(await m.evaluate(1)))
    assert max(per) == SWEEP_PAGE and sum(per) == n, per
    assert sorted(e.extra["subject"] for e in log.of("alert-cleared")) == sorted(names)
    assert await _stored(client, q) == {}


async def test_a_damaged_index_stops_no_rule_and_is_swept_once_repaired(
    make_queue: QueueFactory,
) -> None:
    old = make_queue("dmg", advanced=_monitoring(BACKLOG))
    await old.add_job("n", {})
    client = await old.client()
    stored = old.keys.extra("alerts:stored")
    await client.set(stored, "written by hand")
    (fired,) = await old.advanced.alerts.evaluate(1)  # the rule still fires
    assert fired.state == "firing"
    new = make_queue("dmg", advanced=_monitoring(KEEP))
    assert await new.advanced.alerts.evaluate(2) == []  # nothing written
    assert await client.get(stored) == b"written by hand"
    await client.delete(stored)
    (cleared,) = await new.advanced.alerts.evaluate(2)  # found again through the log
    assert (cleared.rule, cleared.reason) == ("backlog", "rule-removed")


async def test_a_rule_another_running_process_announces_is_kept(make_queue: QueueFactory) -> None:
    old = make_queue("both", advanced=_monitoring(BACKLOG))
    await old.add_job("n", {})
    (fired,) = await old.advanced.alerts.evaluate(1)
    assert fired.state == "firing"
    new = make_queue("both", advanced=_monitoring(KEEP))
    client = await old.client()
    # The old configuration's process announces its rule: what its worker service does
    # every evaluation interval.
    announcer = next(s for s in old.services if s.name == "alerts-rules")
    await announcer.announce(old)
    assert await new.advanced.alerts.evaluate(2) == []
    assert (await _stored(client, new))["backlog"].startswith("firing ")
    # Its announcement ended (that process stopped): cleared.
    await client.zadd(old.keys.extra("alerts:configured"), {"backlog": 1})
    (cleared,) = await new.advanced.alerts.evaluate(2)
    assert cleared.reason == "rule-removed"


@pytest.mark.redis_only
async def test_rolling_deploy_keeps_the_rule_while_an_old_process_runs_then_clears_it_once(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    """An old worker process (rule ``backlog``, tests/workers/alert_worker.py) fires the
    alert; a new one (without the rule) takes over the lead while the old one still
    runs: it leaves the rule alone (no clearing that the old one's next term would
    undo). Once the old process is gone, the new leader clears it, once."""
    procs = WorkerProcs(redis_url, prefix, "rolling", tmp_path, script=ALERT_WORKER)
    new = JobQueue(
        "rolling",
        redis=redis_url,
        prefix=prefix,
        worker={"scheduler": False},
        advanced=_monitoring(KEEP, evaluation_interval_ms=50, leader_lease_ms=1000),
    )
    log = EventLog(new, ["alert-fired", "alert-cleared"])
    client = await new.client()
    seen_key = f"{prefix}:alerts"

    async def seen() -> list[dict[str, Any]]:
        return [orjson.loads(x) for x in await client.lrange(seen_key, 0, -1)]

    try:
        await new.pause()
        await procs.start(1)
        for i in range(6):
            await new.add_job("n", {"i": i})
        got = await wait_until(seen, 15, message="the old process to fire")
        assert [(e["event"], e["rule"]) for e in got] == [("alert-fired", "backlog")]
        await new.start()
        service = next(s for s in new.services if s.name == "alerts")

        async def new_leads() -> bool:
            if not service.is_leader:  # hand the lead over: the old one loses its lease
                await client.delete(new.keys.extra("leader:alerts"))
                await asyncio.sleep(0.05)
            return bool(service.is_leader)

        await wait_until(new_leads, 15, interval=0.2, message="the new process to lead")
        await asyncio.sleep(2.0)  # well past an announcement's hold (3 x 50 ms + 1 s)
        assert service.is_leader
        assert log.names() == []
        assert (await _stored(client, new))["backlog"].startswith("firing ")
        procs.kill(0)  # the old process is gone
        await wait_until(lambda: log.names() == ["alert-cleared"], 10)
        ev = log.of("alert-cleared")[0].extra
        assert (ev["subject"], ev["reason"]) == ("backlog", "rule-removed")
        await asyncio.sleep(0.5)
        assert log.names() == ["alert-cleared"]
        assert [e["event"] for e in await seen()] == ["alert-fired"]
        assert "backlog" not in await _stored(client, new)
    finally:
        await new.close()
        await procs.close()


async def test_a_manager_with_no_rules_runs_the_sweep(make_queue: QueueFactory) -> None:
    old = make_queue("none", advanced=_monitoring(BACKLOG))
    await old.add_job("n", {})
    await old.advanced.alerts.evaluate(1)
    new = make_queue("none", worker={"scheduler": False})
    m = AlertManager(new, [], interval_ms=50)
    assert any(s.name == "alerts" for s in new.services)
    log = EventLog(new, ["alert-cleared"])
    await new.start()
    await wait_until(lambda: len(log.of("alert-cleared")) == 1, 10)
    assert m.rules == () and await m.states() == []
