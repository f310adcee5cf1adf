"""Prometheus series of the features (issue 16, item 1): idempotency hits, schedule lag
(how late each tick was enqueued, and how overdue an unfired schedule is), webhook
deliveries and the webhook DLQ, circuit breaker transitions. A known workload on a real
Redis, then ``GET /metrics`` over HTTP: the series carry the right values, with labels
of bounded cardinality."""

from __future__ import annotations

import asyncio
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from _loopback import closed_port
from helpers import QueueFactory, wait_until
from kitium_queue.features.breakers import CircuitBreakerManager
from kitium_queue.features.breakers.events import EVENT_NAME as BREAKER_EVENT
from kitium_queue.features.prometheus import PrometheusExporter, PrometheusSubscriber
from kitium_queue.features.prometheus import subscriber as prom
from kitium_queue.features.scheduler import LAG_EVENT, Scheduler
from kitium_queue.features.webhooks import (
    WebhookConfig,
    WebhookEvent,
    WebhookManager,
    generate_secret,
)
from kitium_queue.features.webhooks.service import DELIVERY_EVENT
from kitium_queue.hooks import FeatureEvent

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from chaos.receiver import Receiver  # noqa: E402

pytestmark = pytest.mark.redis_only
N = "kitium_queue_"


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


async def _scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    def go() -> str:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return str(resp.read().decode())

    return _samples(await asyncio.to_thread(go))


def _get(s: dict[Any, float], name: str, **labels: str) -> float | None:
    return s.get((N + name, frozenset(labels.items())))


def test_the_feature_event_names_are_the_features_own() -> None:
    assert prom.SCHEDULE_LAG_EVENT == LAG_EVENT
    assert prom.WEBHOOK_DELIVERY_EVENT == DELIVERY_EVENT
    assert prom.BREAKER_STATE_EVENT == BREAKER_EVENT


async def test_feature_series_after_a_known_workload(make_queue: QueueFactory) -> None:
    q = make_queue("pf", worker={"scheduler": False})
    q2 = make_queue("pf-breakers")
    exporter = PrometheusExporter([q, q2])
    server = await exporter.serve("127.0.0.1", 0)
    rec = await Receiver().start()
    try:
        # Idempotency hits: adds that found their job (by job_id or idempotency key).
        await q.add_job("send", {}, job_id="order-1")
        await q.add_job("send", {}, job_id="order-1")
        await q.add_job("charge", {}, idempotency_key="pay-1")
        await q.add_jobs([("charge", {}, {"idempotency_key": "pay-1"})] * 2)

        # Schedule lag: one tick fired 250 ms late, one missed by 1.5 s (run once).
        beat = await q.schedule_every("beat", {}, 60_000, schedule_id="beat")
        sched = Scheduler()
        sched.queue = q
        assert beat.next_run_at is not None
        await sched.run_due(now_ms=beat.next_run_at + 250)
        later = await q.get_schedule("beat")
        assert later is not None and later.next_run_at is not None
        await sched.run_due(now_ms=later.next_run_at + 1500)
        assert sched.fired == 2
        # A schedule no scheduler fires falls behind.
        await q.schedule_every("fast", {}, 100, schedule_id="fast")
        await asyncio.sleep(0.8)

        # Webhook deliveries: two delivered, one dead-lettered (a closed port, no retry).
        m = WebhookManager(
            q, allow_networks=["127.0.0.0/8"], poll_ms=10, backoff_ms=10, run_service=False
        )
        await m.register_webhook(
            WebhookConfig(url=rec.url, id="ok", events=["paid"], secret=generate_secret())
        )
        await m.register_webhook(
            WebhookConfig(
                url=f"http://127.0.0.1:{closed_port()}/h",
                id="gone",
                events=["refund"],
                max_retries=0,
                secret=generate_secret(),
            )
        )
        await m.service.start(q)
        for i in range(2):
            await m.send_event(WebhookEvent("paid", {"i": i}))
        await m.send_event(WebhookEvent("refund", {}))
        await wait_until(lambda: len(rec.ok()) == 2, 10)
        await wait_until(lambda: _at_least(exporter, "webhook_deliveries_total", 3), 10)
        await m.service.stop()

        # Breaker transitions, reported by the breakers' leader.
        breakers = CircuitBreakerManager(q2)
        assert breakers.events is not None
        breakers.events.interval_s = 0.02
        await breakers.create_breaker({"id": "api"})
        await q2.start()
        await wait_until(lambda: breakers.events is not None and breakers.events.is_leader, 5)
        # The first leader reports changes from when it first read the log: wait for it.
        client = await q2.client()
        await wait_until(lambda: client.exists(breakers.events.cursor_key), 5)  # type: ignore[union-attr]
        await breakers.force_open("api", 60_000, reason="drill")
        await breakers.reset("api")
        await wait_until(lambda: _at_least(exporter, "breaker_transitions_total", 2), 10)

        s = await _scrape(server.url)
        assert _get(s, "idempotency_hits_total", queue="pf", job_name="send") == 1
        assert _get(s, "idempotency_hits_total", queue="pf", job_name="charge") == 2
        assert _get(s, "jobs_added_total", queue="pf", job_name="charge") == 1  # hits: not adds
        assert _get(s, "schedule_lag_seconds_count", queue="pf") == 2
        assert _get(s, "schedule_lag_seconds_sum", queue="pf") == pytest.approx(1.75)
        assert _get(s, "schedule_lag_seconds_bucket", queue="pf", le="0.1") == 0
        assert _get(s, "schedule_lag_seconds_bucket", queue="pf", le="0.25") == 1
        assert _get(s, "schedule_lag_seconds_bucket", queue="pf", le="2.5") == 2
        overdue = _get(s, "schedule_overdue_seconds", queue="pf")
        assert overdue is not None and overdue >= 0.7  # slept 0.8 s; its tick was <= 0.1 s on
        assert _get(s, "schedule_overdue_seconds", queue="pf-breakers") == 0
        assert (
            _get(s, "webhook_deliveries_total", queue="pf", webhook="ok", outcome="delivered") == 2
        )
        assert (
            _get(s, "webhook_deliveries_total", queue="pf", webhook="gone", outcome="dead-lettered")
            == 1
        )
        assert _get(s, "webhook_dlq_size", queue="pf") == 1
        assert _get(s, "webhook_retries_scheduled", queue="pf") == 0
        assert _get(s, "webhook_dlq_size", queue="pf-breakers") is None  # not enabled there
        assert (
            _get(s, "breaker_transitions_total", queue="pf-breakers", breaker="api", state="open")
            == 1
        )
        assert (
            _get(s, "breaker_transitions_total", queue="pf-breakers", breaker="api", state="closed")
            == 1
        )
        assert _get(s, "breaker_state", queue="pf-breakers", breaker="api", state="closed") == 1

        # Fired now, the fast schedule's earliest tick is its next one (at most 0.1 s
        # later): far less overdue than before.
        before = sched.fired
        await sched.run_due()
        s = await _scrape(server.url)
        after = _get(s, "schedule_overdue_seconds", queue="pf")
        assert after is not None and after < overdue - 0.3
        assert _get(s, "schedule_lag_seconds_count", queue="pf") == 2 + sched.fired - before
    finally:
        await server.close()
        await rec.stop()


async def _at_least(exporter: PrometheusExporter, name: str, n: float) -> bool:
    """The counter's series, as the registry exposes them now, add up to ``n`` or more."""
    s = _samples((await exporter.render()).decode())
    return sum(v for (k, _), v in s.items() if k == N + name) >= n


def test_feature_labels_are_capped_and_bad_fields_ignored() -> None:
    sub = PrometheusSubscriber(CollectorRegistry(), max_job_names=2)
    for i in range(5):
        sub.feature_event(
            FeatureEvent(
                "q",
                "webhooks",
                DELIVERY_EVENT,
                f"hook-{i}",
                {"outcome": "delivered" if i else "exploded"},
            )
        )
    sub.feature_event(FeatureEvent("q", "schedules", LAG_EVENT, "s", {"lag_ms": "nan?"}))
    sub.feature_event(FeatureEvent("q", "schedules", LAG_EVENT, "s", {"lag_ms": "-5"}))
    sub.duplicate("q", ["1", "2", "3"], ["a", "b", "c"])
    s = {
        (x.name, tuple(sorted(x.labels.items()))): x.value for m in sub.collect() for x in m.samples
    }
    deliveries = {k[1]: v for k, v in s.items() if k[0] == N + "webhook_deliveries_total"}
    assert deliveries == {
        (("outcome", "other"), ("queue", "q"), ("webhook", "hook-0")): 1,
        (("outcome", "delivered"), ("queue", "q"), ("webhook", "hook-1")): 1,
        (("outcome", "delivered"), ("queue", "q"), ("webhook", "other")): 3,
    }
    assert s[(N + "schedule_lag_seconds_count", (("queue", "q"),))] == 1  # "-5" counts as 0
    assert s[(N + "schedule_lag_seconds_sum", (("queue", "q"),))] == 0
    hits = {k[1]: v for k, v in s.items() if k[0] == N + "idempotency_hits_total"}
    assert hits == {
        (("job_name", "a"), ("queue", "q")): 1,
        (("job_name", "b"), ("queue", "q")): 1,
        (("job_name", "other"), ("queue", "q")): 1,
    }
