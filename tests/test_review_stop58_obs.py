"""The operations surface (alerts, Prometheus, tracing) under a demanding user's review,
each finding reproduced against a real Redis before it was fixed:

* an alert whose webhook could not be handed over when it changed (Redis unreachable at
  that moment, a webhook key damaged by hand) was marked reported all the same: the
  receiver never heard of it. It now stays in ``alerts:unreported`` and is sent at the
  next evaluation, before the changes after it, whose ``queue.on`` events are not held
  back or repeated;
* ``for_ms`` was timed on the wall clock: a clock stepped back by an hour held a firing
  alert back for that hour;
* rules that can never fire were accepted (``failure_rate`` above 100 %,
  ``breaker_open`` on one breaker above 1), and rules using more than 16 windows made
  every evaluation fail; both are refused at configuration;
* ``pending_timeout`` of ``OpenTelemetryTracing`` was never checked: a string or None
  made every add after a failed one raise ``TypeError``;
* a ``PrometheusExporter`` refused for a bad argument left its subscriber in the
  caller's registry (the corrected call then failed with ``Duplicated timeseries``);
  two queues of one name in one collector gave every gauge twice with different values,
  an exposition OpenMetrics parsers refuse.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from helpers import EventLog, QueueFactory
from kitium_queue import AlertManager, AlertRule, ConfigurationError, JobQueue
from kitium_queue.errors import SerializationError
from kitium_queue.features.prometheus import PrometheusExporter
from kitium_queue.features.tracing import OpenTelemetryTracing
from kitium_queue.features.webhooks import WebhookConfig


@pytest.fixture
async def make_queue(redis_url: str, prefix: str) -> AsyncIterator[QueueFactory]:
    factory = QueueFactory(redis_url, prefix)
    yield factory
    await factory.aclose()


def _monitoring(*rules: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"monitoring": {"enabled": True, "alerts": list(rules), **extra}}


# ------------------------------------------------------------------ alerts
async def _outbox_alerts(q: JobQueue) -> list[str]:
    """The webhook event ids of the alert events handed to the outbox, in order."""
    client = await q.client()
    key = q.keys.extra("outbox")
    if await client.type(key) != b"stream":
        return []
    out = []
    for _, fields in await client.xrange(key):
        eid = fields.get(b"i", b"").decode()
        if eid.startswith("alert_"):
            out.append(eid)
    return out


async def test_an_alert_webhook_not_handed_over_is_sent_at_the_next_evaluation_in_order(
    redis_url: str, prefix: str
) -> None:
    q = JobQueue(
        "wh-alerts",
        redis=redis_url,
        prefix=prefix,
        advanced={
            "webhooks": {"enabled": True, "allow_networks": ["127.0.0.0/8"]},
            **_monitoring({"name": "backlog", "metric": "queue_depth", "threshold": 1}),
        },
    )
    try:
        await q.advanced.webhooks.register_webhook(
            WebhookConfig(url="http://127.0.0.1:9/hook", events=["queue-alert"])
        )
        m: AlertManager = q.advanced.alerts
        log = EventLog(q, ["alert-fired", "alert-cleared"])
        client = await q.client()
        outbox = q.keys.extra("outbox")
        await client.delete(outbox)
        await client.set(outbox, "not a stream")  # the webhook cannot be handed over
        job = await q.add_job("n", {})
        (fired,) = await m.evaluate(1)
        await q.remove_job(job)
        (cleared,) = await m.evaluate(1)
        # Both reported at once in this process; neither webhook went anywhere.
        assert log.names() == ["alert-fired", "alert-cleared"]
        assert await _outbox_alerts(q) == []
        await m.evaluate(1)
        assert await _outbox_alerts(q) == []
        await client.delete(outbox)  # repaired
        assert await m.evaluate(1) == []
        # Sent now, oldest first; the queue.on events are not repeated.
        assert await _outbox_alerts(q) == [f"alert_{fired.id}", f"alert_{cleared.id}"]
        assert log.names() == ["alert-fired", "alert-cleared"]
        assert await client.zcard(q.keys.extra("alerts:unreported")) == 0
        await m.evaluate(1)
        assert len(await _outbox_alerts(q)) == 2  # sent once
    finally:
        await q.close()


async def test_for_ms_holds_across_a_wall_clock_step(
    make_queue: QueueFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = make_queue(
        "clock",
        advanced=_monitoring(
            {"name": "slow", "metric": "queue_depth", "threshold": 1, "for_ms": 200}
        ),
    )
    m: AlertManager = q.advanced.alerts
    await q.add_job("n", {})
    assert await m.evaluate(1) == []  # above, not for 200 ms yet
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - 3600)  # NTP steps the clock back
    await asyncio.sleep(0.3)
    (t,) = await m.evaluate(1)
    assert t.state == "firing"


@pytest.mark.parametrize(
    ("rule", "needle"),
    [
        ({"metric": "failure_rate", "threshold": 101}, "at most 100"),
        ({"metric": "failure_rate", "threshold": 1e9, "clear_below": 50}, "at most 100"),
        ({"metric": "breaker_open", "threshold": 2, "breaker_id": "api"}, "at most 1"),
    ],
)
def test_a_rule_that_could_never_fire_is_refused(rule: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigurationError, match=needle):
        AlertRule("never", **rule)


def test_rules_at_the_top_of_their_range_are_accepted() -> None:
    AlertRule("all", "failure_rate", 100)
    AlertRule("one", "breaker_open", 1, clear_below=0.5, breaker_id="api")
    AlertRule("many", "breaker_open", 5)  # open breakers of the queue: any number


async def test_more_windows_than_one_probe_reads_are_refused_at_configuration(
    make_queue: QueueFactory,
) -> None:
    rules = [
        {"name": f"d{i}", "metric": "dlq_growth", "threshold": 1, "window_ms": 1000 * (i + 1)}
        for i in range(17)
    ]
    with pytest.raises(ConfigurationError, match="17 different window_ms"):
        make_queue("windows", advanced=_monitoring(*rules))
    # 16 windows, and any window_ms on rules that read none, evaluate.
    depth = [
        {"name": f"q{i}", "metric": "queue_depth", "threshold": 1, "window_ms": 1000 * (i + 1)}
        for i in range(20)
    ]
    q = make_queue("windows16", advanced=_monitoring(*rules[:16], *depth))
    await q.add_job("n", {})
    fired = await q.advanced.alerts.evaluate(1)
    assert sorted(t.rule for t in fired) == sorted(f"q{i}" for i in range(20))


# ------------------------------------------------------------------ tracing
@pytest.mark.parametrize(
    "bad",
    ["30", None, True, 0, -5, float("nan"), float("inf"), 10**400],
    ids=["str", "none", "bool", "zero", "negative", "nan", "inf", "huge"],
)
async def test_a_pending_timeout_that_is_no_duration_is_refused(
    make_queue: QueueFactory, bad: Any
) -> None:
    q = make_queue("pending")
    with pytest.raises(ConfigurationError, match="pending_timeout"):
        OpenTelemetryTracing(q, tracer_provider=TracerProvider(), pending_timeout=bad)


async def test_an_unwritten_publish_span_ends_unconfirmed_and_the_next_add_goes_on(
    make_queue: QueueFactory,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    q = make_queue("pending-ok")
    OpenTelemetryTracing(q, tracer_provider=provider, pending_timeout=0.05)
    with pytest.raises(SerializationError):
        await q.add_job("n", object())  # its publish span waits for a write that never comes
    await asyncio.sleep(0.1)
    assert await q.get_job_status(await q.add_job("n", {})) is not None
    confirmed = [
        s.attributes.get("kitium_queue.enqueue.confirmed") for s in exporter.get_finished_spans()
    ]
    assert confirmed == [False, None]


# ------------------------------------------------------------------ prometheus
@pytest.mark.parametrize("bad", [[], "orders", [object()]])
async def test_a_refused_exporter_leaves_the_callers_registry_as_it_was(
    make_queue: QueueFactory, bad: Any
) -> None:
    registry = CollectorRegistry()
    with pytest.raises(ConfigurationError):
        PrometheusExporter(bad, registry=registry)
    q = make_queue("orders")
    exporter = PrometheusExporter(q, registry=registry)  # the corrected call
    await q.add_job("n", {})
    text = (await exporter.render()).decode()
    assert 'kitium_queue_jobs_added_total{job_name="n",queue="orders"} 1.0' in text


async def test_two_queues_of_one_name_in_one_collector_are_refused(
    make_queue: QueueFactory, redis_url: str, prefix: str
) -> None:
    a = make_queue("emails")
    b = make_queue("emails", prefix=f"{prefix}-eu")  # the same name, another deployment
    await a.add_job("n", {})
    registry = CollectorRegistry()
    for queues in ([a, b], [a, a]):
        with pytest.raises(ConfigurationError, match=r"\['emails'\] given twice"):
            PrometheusExporter(queues, registry=registry, subscribe=False)
    # One registry per deployment: each exposition parses, one series per state.
    for q, waiting in ((a, 1.0), (b, 0.0)):
        exporter = PrometheusExporter(q, subscribe=False)
        await exporter.render()
        text = openmetrics_latest(exporter.registry).decode()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        (sample,) = [
            s for s in families["kitium_queue_jobs"].samples if s.labels["state"] == "waiting"
        ]
        assert sample.value == waiting
