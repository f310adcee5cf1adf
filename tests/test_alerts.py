"""Alert rules (issue 22, monitoring): each metric fires when crossed and clears when
back, once per crossing, reported as a ``FeatureEvent`` (``queue.on``) and a webhook;
changes are fenced by the leader's term; across 2 worker processes only the leader
reports, and a new leader neither repeats nor misses a change."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from helpers import EventLog, QueueFactory, wait_for_status, wait_until
from kitium_queue import AlertManager, AlertRule, ConfigurationError, JobQueue, JobStatus
from kitium_queue.features.webhooks import WebhookConfig, verify_webhook
from workers.procs import WorkerProcs

ALERT_WORKER = Path(__file__).resolve().parent / "workers" / "alert_worker.py"
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from chaos.receiver import Receiver  # noqa: E402


def _monitoring(*rules: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"monitoring": {"enabled": True, "alerts": list(rules), **extra}}


async def test_queue_depth_fires_and_clears_once_with_hysteresis(make_queue: QueueFactory) -> None:
    q = make_queue(
        "depth",
        advanced=_monitoring(
            {"name": "backlog", "metric": "queue_depth", "threshold": 3, "clear_below": 1}
        ),
    )
    m: AlertManager = q.advanced.alerts
    log = EventLog(q, ["alert-fired", "alert-cleared"])
    ids = [await q.add_job("n", {}) for _ in range(2)]
    assert await m.evaluate(1) == []
    ids.append(await q.add_job("n", {}))
    (fired,) = await m.evaluate(1)
    assert (fired.rule, fired.state, fired.value) == ("backlog", "firing", "3")
    assert await m.evaluate(1) == []  # still above: no second event
    await q.remove_job(ids.pop())
    assert await m.evaluate(1) == []  # 2: between clear_below and the threshold
    for jid in ids:
        await q.remove_job(jid)
    (cleared,) = await m.evaluate(1)
    assert cleared.state == "ok"
    assert await m.evaluate(1) == []
    assert log.names() == ["alert-fired", "alert-cleared"]
    ev = log.of("alert-fired")[0]
    assert ev.extra["subject"] == "backlog" and ev.extra["feature"] == "alerts"
    assert ev.extra["metric"] == "queue_depth" and ev.extra["threshold"] == "3"
    assert ev.extra["event_id"] == fired.id
    assert [t.state for t in await m.history()] == ["ok", "firing"]
    (state,) = await m.states()
    assert state.state == "ok" and state.since_ms is not None


async def test_each_metric(make_queue: QueueFactory) -> None:
    """Evaluated by the queue's own leader-only service (every 50 ms) once the worker
    runs; the changes are read from the events it reports."""
    q = make_queue(
        "metrics",
        retry={"max_attempts": 1},
        worker={"scheduler": False},
        advanced={
            "circuit_breaker": {"enabled": True, "events": False},
            **_monitoring(
                {"name": "old", "metric": "oldest_waiting_age_ms", "threshold": 200},
                {"name": "dlq", "metric": "dlq_growth", "threshold": 2, "window_ms": 60_000},
                {"name": "fail", "metric": "failure_rate", "threshold": 50, "min_samples": 4},
                {"name": "open", "metric": "breaker_open", "threshold": 1},
                {"name": "api", "metric": "breaker_open", "threshold": 1, "breaker_id": "api"},
                evaluation_interval_ms=50,
            ),
        },
    )
    m: AlertManager = q.advanced.alerts
    log = EventLog(q, ["alert-fired", "alert-cleared"])

    def changes() -> list[tuple[str, str]]:
        return [(e.extra["subject"], e.event.split("-")[1]) for e in log.of("alert-fired")] + [
            (e.extra["subject"], e.event.split("-")[1]) for e in log.of("alert-cleared")
        ]

    def process(job: Any) -> Any:
        if job.data.get("fail"):
            raise ValueError("no")
        return 1

    q.process("n", process)
    await q.pause()
    first = await q.add_job("n", {"fail": True})
    await asyncio.sleep(0.3)
    await q.add_job("n", {"fail": True}, priority=9)  # newer, runs first: not the oldest
    values = await m.values()
    assert values["old"] >= 250 and values["dlq"] == 0 and values["fail"] == 0
    await q.start()
    await wait_until(lambda: changes() == [("old", "fired")])
    await q.resume()
    await wait_for_status(q, first, JobStatus.DLQ)
    for _ in range(2):
        await q.add_job("n", {"fail": False})
    await wait_until(lambda: _stats_done(q, 4))
    values = await m.values()
    assert values["dlq"] == 2 and values["fail"] == 50.0 and values["old"] == 0
    expect = {("old", "fired"), ("old", "cleared"), ("dlq", "fired"), ("fail", "fired")}
    await wait_until(lambda: set(changes()) == expect)
    breakers = q.advanced.circuit_breaker
    await breakers.create_breaker({"id": "other"})
    await breakers.create_breaker({"id": "api"})
    await breakers.force_open("other")
    expect.add(("open", "fired"))
    await wait_until(lambda: set(changes()) == expect)
    await breakers.force_open("api")
    expect.add(("api", "fired"))
    await wait_until(lambda: set(changes()) == expect)
    await breakers.reset("api")
    await breakers.reset("other")
    expect |= {("api", "cleared"), ("open", "cleared")}
    await wait_until(lambda: set(changes()) == expect)
    await asyncio.sleep(0.2)  # a few more evaluations: nothing repeated
    assert sorted(changes()) == sorted(expect)


async def _stats_done(q: JobQueue, n: int) -> bool:
    s = await q.get_stats()
    return s.completed + s.dlq == n


async def test_for_ms_and_term_fencing(make_queue: QueueFactory) -> None:
    q = make_queue(
        "fence",
        advanced=_monitoring(
            {"name": "slow", "metric": "queue_depth", "threshold": 1, "for_ms": 300}
        ),
    )
    m: AlertManager = q.advanced.alerts
    await q.add_job("n", {})
    assert await m.evaluate(5) == []  # above, but not for 300 ms yet
    await asyncio.sleep(0.35)
    (t,) = await m.evaluate(5)
    assert t.state == "firing"
    # A deposed leader (older term) cannot record a change.
    await q.drain()
    m._above_since.clear()
    assert await m.evaluate(4) == []
    (state,) = await m.states()
    assert state.state == "firing"
    (t,) = await m.evaluate(6)
    assert t.state == "ok"


async def test_rules_are_checked() -> None:
    for bad, needle in [
        ({"name": "a b", "metric": "queue_depth", "threshold": 1}, "alert rule name"),
        ({"name": "a", "metric": "queue_depth", "threshold": float("nan")}, "finite number"),
        ({"name": "a", "metric": "queue_depth", "threshold": 1, "clear_below": 2}, "clear_below"),
        ({"name": "a", "metric": "dlq_growth", "threshold": 1, "window_ms": 10}, "window_ms"),
        ({"name": "a", "metric": "queue_depth", "threshold": 1, "breaker_id": "x"}, "breaker_id"),
        ({"name": "a", "metric": "queue_depth", "threshold": 1, "min_samples": 0}, "min_samples"),
    ]:
        with pytest.raises(ConfigurationError, match=needle):
            AlertRule(**bad)
    q = JobQueue("rules")
    with pytest.raises(ConfigurationError, match="must be unique"):
        AlertManager(q, [AlertRule("a", "queue_depth", 1), AlertRule("a", "dlq_growth", 1)])
    with pytest.raises(ConfigurationError, match=r"enable advanced\.circuit_breaker"):
        JobQueue(
            "rules2",
            advanced=_monitoring({"name": "o", "metric": "breaker_open", "threshold": 1}),
        )


@pytest.mark.redis_only
async def test_alert_webhook(redis_url: str, prefix: str) -> None:
    receiver = await Receiver().start()
    secret = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    q = JobQueue(
        "hooked",
        redis=redis_url,
        prefix=prefix,
        worker={"scheduler": False},
        advanced={
            "webhooks": {"enabled": True, "allow_networks": ["127.0.0.0/8"]},
            **_monitoring(
                {"name": "backlog", "metric": "queue_depth", "threshold": 1},
                evaluation_interval_ms=50,
            ),
        },
    )
    try:
        await q.advanced.webhooks.register_webhook(
            WebhookConfig(url=receiver.url, events=["queue-alert"], secret=secret)
        )
        await q.pause()
        await q.add_job("n", {})
        await q.start()  # the leader-only alert service starts with the worker
        await wait_until(lambda: len(receiver.ok()) == 1, 10)
        req = receiver.ok()[0]
        verify_webhook(req.body, req.headers, secret)
        body = orjson.loads(req.body)
        assert body["type"] == "queue-alert"
        assert body["data"]["rule"] == "backlog" and body["data"]["state"] == "firing"
        assert req.headers["webhook-id"].startswith("alert_")
    finally:
        await q.close()
        await receiver.stop()


@pytest.fixture
async def procs(redis_url: str, prefix: str, tmp_path: Path) -> AsyncIterator[WorkerProcs]:
    wp = WorkerProcs(redis_url, prefix, "alerted", tmp_path, script=ALERT_WORKER)
    try:
        yield wp
    finally:
        await wp.close()


@pytest.mark.redis_only
async def test_fire_and_clear_once_across_two_workers(
    procs: WorkerProcs, redis_url: str, prefix: str
) -> None:
    """Two worker processes evaluate the same rule; only the leader reports. The leader
    is SIGKILLed after the alert fired: the other one takes over and clears it, without
    firing it again."""
    q = JobQueue("alerted", redis=redis_url, prefix=prefix)
    client = await q.client()
    key = f"{prefix}:alerts"

    async def seen() -> list[dict[str, Any]]:
        return [orjson.loads(x) for x in await client.lrange(key, 0, -1)]

    try:
        await q.pause()
        await procs.start(2)
        for i in range(10):
            await q.add_job("n", {"i": i})
        got = await wait_until(seen, 15, message="the alert to fire")
        assert [e["event"] for e in got] == ["alert-fired"]
        leader = got[0]["pid"]
        index = next(i for i, p in enumerate(procs.procs) if p.pid == leader)
        await asyncio.sleep(0.5)  # ten more evaluations: still one event
        assert len(await seen()) == 1
        procs.kill(index)
        await asyncio.sleep(1.5)  # the lease (1 s) ends, the other process leads
        assert len(await seen()) == 1  # it did not fire again
        await q.resume()
        await wait_until(lambda: _stats_done(q, 10), 20)

        async def cleared() -> Any:
            return len(await seen()) >= 2 and await seen()

        got = await wait_until(cleared, 15, message="the alert to clear")
        await asyncio.sleep(0.5)
        got = await seen()
        assert [e["event"] for e in got] == ["alert-fired", "alert-cleared"], got
        assert got[1]["pid"] != leader and got[1]["pid"] in [p.pid for p in procs.procs]
        assert got[0]["id"] != got[1]["id"]
    finally:
        await q.close()
