"""Compliance, retention and observability under a demanding user's checks, on a real
Redis.

* An erasure deletes the subject's schedules (a job template carrying its
  ``subject_id`` holds its data, and every tick would add its jobs again); other
  subjects' schedules stay.
* A run of the subject that finishes after its erasure (a completion with an
  exactly-once result, a failure headed for the DLQ) writes nothing back; the whole
  keyspace is read by type and DUMPed.
* An erasure of 20,000 jobs and a retention pass over 2,000 expired jobs are split
  into script calls none of which holds Redis 50 ms (SLOWLOG).
* A retention period never removes a job still running, however long it runs.
* Prometheus: job names read back from Redis (hand-written: newlines, quotes,
  backslashes, invalid UTF-8) are escaped in the exposition, which parses; thousands of
  distinct names keep the label values bounded.
* Tracing: a stored traceparent that is huge or malformed, and a span exporter that
  raises, never fail a run.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import redis.asyncio as aioredis
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from _keyspace import holding, raw_keyspace, uncompressed_dump  # noqa: F401 (fixture)
from helpers import QueueFactory, wait_for_status, wait_until
from kitium_queue import JobStatus
from kitium_queue.features.prometheus import PrometheusExporter
from kitium_queue.features.tracing import OpenTelemetryTracing

M, OTHER = "PIIMARK-51c9", "KEEPMARK-7d20"  # markers in each subject's data
SUBJECT, SUBJECT_B = f"cust-{M}", f"cust-{OTHER}"


@pytest.mark.redis_only
@pytest.mark.usefixtures("uncompressed_dump")
async def test_erasure_deletes_the_subjects_schedules(
    make_queue: QueueFactory, prefix: str, redis_client: aioredis.Redis
) -> None:
    q = make_queue(
        "sched",
        worker={"concurrency": 4},
        advanced={"compliance": {"enabled": True}},
    )
    ran: list[str] = []

    async def tick(job: Any) -> Any:
        ran.append(job.data["m"])
        return {"echo": job.data["m"]}

    q.process("tick", tick)
    mine = await q.schedule_every("tick", {"m": M}, 200, subject_id=SUBJECT, schedule_id="a")
    other = await q.schedule_every("tick", {"m": OTHER}, 200, subject_id=SUBJECT_B, schedule_id="b")
    await q.start()
    await wait_until(lambda: ran.count(M) >= 2 and ran.count(OTHER) >= 2, 10)

    report = await q.advanced.compliance.erase_subject(SUBJECT)
    assert report.schedules == 1 and report.jobs >= 2
    assert report.to_dict()["schedules"] == 1
    assert await q.get_schedule(mine.id) is None
    assert await q.get_schedule(other.id) is not None
    seen = ran.count(M)
    # Ticks go on for the other subject only: nothing of the erased one comes back.
    await wait_until(lambda: ran.count(OTHER) >= 4, 10)
    await asyncio.sleep(0.5)
    assert ran.count(M) == seen
    space = await raw_keyspace(redis_client, prefix)
    assert holding(space, M) == [], holding(space, M)
    assert holding(space, OTHER) != []
    assert await q.advanced.compliance.subject_jobs(SUBJECT) == []


async def test_erasure_skips_schedules_it_cannot_read(make_queue: QueueFactory) -> None:
    """Options that are not JSON, or name the subject elsewhere than ``subject_id``,
    do not select a schedule; a schedule without options neither."""
    q = make_queue("sched2", advanced={"compliance": {"enabled": True}})
    await q.schedule_every("t", {"note": SUBJECT}, 60_000, schedule_id="data-only")
    await q.schedule_every("t", {}, 60_000, schedule_id="plain")
    await q.schedule_every("t", {}, 60_000, subject_id=SUBJECT_B, schedule_id="b")
    report = await q.advanced.compliance.erase_subject(SUBJECT)
    assert report.schedules == 0
    assert sorted(s.id for s in await q.get_schedules()) == ["b", "data-only", "plain"]


@pytest.mark.redis_only
@pytest.mark.usefixtures("uncompressed_dump")
async def test_runs_finishing_after_their_erasure_write_nothing_back(
    make_queue: QueueFactory, prefix: str, redis_client: aioredis.Redis
) -> None:
    q = make_queue(
        "race",
        settings={"lock_duration": 5000, "lock_renew_time": 2000},
        worker={"concurrency": 6, "scheduler": False},
        retry={"max_attempts": 1},
        advanced={"exactly_once": {"enabled": True}, "compliance": {"enabled": True}},
    )
    gate = asyncio.Event()
    ended: list[str] = []

    async def hold(job: Any) -> Any:
        await gate.wait()
        ended.append(job.name)
        if job.name == "fail":
            raise ValueError(f"cannot serve {job.data['m']}")
        return {"echo": job.data["m"]}

    q.process("*", hold)
    await q.start()
    ok = await q.add_job(
        "ok",
        {"m": M},
        subject_id=SUBJECT,
        delivery_guarantee="exactly-once",
        idempotency_key=f"k-{M}",
    )
    bad = await q.add_job("fail", {"m": M}, subject_id=SUBJECT)
    keep = await q.add_job("ok", {"m": OTHER}, subject_id=SUBJECT_B)
    for jid in (ok, bad, keep):
        await wait_for_status(q, jid, JobStatus.ACTIVE)
    report = await q.advanced.compliance.erase_subject(SUBJECT)
    assert report.jobs == 2 and report.active == 2
    gate.set()
    await wait_for_status(q, keep, JobStatus.COMPLETED)
    await wait_until(lambda: len(ended) == 3, 10)
    await asyncio.sleep(0.3)
    space = await raw_keyspace(redis_client, prefix)
    assert holding(space, M) == [], holding(space, M)
    assert await q.get_job_status(ok) is None and await q.get_job_status(bad) is None
    assert (await q.get_stats()).dlq == 0


@pytest.mark.redis_only
async def test_record_execution_after_the_erasure_leaves_nothing(
    make_queue: QueueFactory, prefix: str, redis_client: aioredis.Redis
) -> None:
    q = make_queue(
        "rec",
        settings={"lock_duration": 30_000, "lock_renew_time": 10_000},
        worker={"scheduler": False},
        advanced={"exactly_once": {"enabled": True}, "compliance": {"enabled": True}},
    )
    gate = asyncio.Event()
    recorded = asyncio.Event()

    async def hold(job: Any) -> Any:
        await gate.wait()
        try:
            await q.advanced.exactly_once.record_execution(
                job.idempotency_key, job.id, job.name, {"receipt": job.data["m"]}
            )
        finally:
            recorded.set()
        return None

    q.process("*", hold)
    await q.start()
    jid = await q.add_job("ok", {"m": M}, subject_id=SUBJECT, idempotency_key=f"k-{M}")
    await wait_for_status(q, jid, JobStatus.ACTIVE)
    await q.advanced.compliance.erase_subject(SUBJECT)
    gate.set()
    await asyncio.wait_for(recorded.wait(), 10)
    space = await raw_keyspace(redis_client, prefix)
    assert holding(space, M) == [], holding(space, M)


@pytest.mark.redis_only
async def test_erasure_of_many_jobs_is_bounded_per_call(
    make_queue: QueueFactory, redis_client: aioredis.Redis
) -> None:
    n = 20_000
    q = make_queue("big", advanced={"compliance": {"enabled": True}})
    for i in range(0, n, 2000):
        await q.add_jobs(
            [
                {"name": "x", "data": {"i": j}, "options": {"subject_id": SUBJECT}}
                for j in range(i, i + 2000)
            ]
        )
    old = (await redis_client.config_get("slowlog-log-slower-than"))["slowlog-log-slower-than"]
    await redis_client.config_set("slowlog-log-slower-than", 50_000)
    await redis_client.slowlog_reset()
    try:
        report = await q.advanced.compliance.erase_subject(SUBJECT)
        slow = await redis_client.slowlog_get(10)
    finally:
        await redis_client.config_set("slowlog-log-slower-than", old)
    assert report.jobs == n
    assert (await q.get_stats()).waiting == 0
    assert slow == [], [(e["duration"], e["command"][:60]) for e in slow]


@pytest.mark.redis_only
async def test_retention_pass_is_bounded_and_spares_a_running_job(
    make_queue: QueueFactory, redis_client: aioredis.Redis
) -> None:
    n = 2_000
    q = make_queue(
        "ret",
        settings={"lock_duration": 5000, "lock_renew_time": 1000},
        worker={"concurrency": 50, "scheduler": False},
        advanced={
            "exactly_once": {"enabled": True},
            "compliance": {"enabled": True, "retention": {"completed": 300}},
        },
    )
    q.advanced.retention.interval_ms = 3_600_000  # passes run here, by hand
    release = asyncio.Event()

    async def run(job: Any) -> Any:
        if job.name == "long":
            await release.wait()
        return {"r": job.data["i"]}

    q.process("*", run)
    long_id = await q.add_job("long", {"i": -1}, subject_id=SUBJECT)
    for i in range(0, n, 1000):
        await q.add_jobs(
            [
                {
                    "name": "x",
                    "data": {"i": j},
                    "options": {
                        "subject_id": SUBJECT,
                        "delivery_guarantee": "exactly-once",
                        "idempotency_key": f"k{j}",
                        "remove_on_complete": False,  # kept: the period removes them
                    },
                }
                for j in range(i, i + 1000)
            ]
        )
    await q.start()

    async def all_done() -> bool:
        return (await q.get_stats()).completed >= n

    await wait_until(all_done, 120)
    await wait_for_status(q, long_id, JobStatus.ACTIVE)
    await asyncio.sleep(0.5)  # every finished job is past its period; the long one runs
    old = (await redis_client.config_get("slowlog-log-slower-than"))["slowlog-log-slower-than"]
    await redis_client.config_set("slowlog-log-slower-than", 50_000)
    await redis_client.slowlog_reset()
    try:
        report = await q.advanced.retention.run_once()
        slow = await redis_client.slowlog_get(10)
    finally:
        await redis_client.config_set("slowlog-log-slower-than", old)
    assert report.erased["completed"] == n
    assert slow == [], [(e["duration"], e["command"][:60]) for e in slow]
    assert (await q.get_job_status(long_id)).status is JobStatus.ACTIVE  # type: ignore[union-attr]
    assert await q.advanced.exactly_once.get_result("k1") is None
    release.set()
    await wait_for_status(q, long_id, JobStatus.COMPLETED)
    # Finished now: it stays for its own period, then goes.
    await q.advanced.retention.run_once()
    assert await q.get_job_status(long_id) is not None
    await asyncio.sleep(0.4)
    await q.advanced.retention.run_once()
    assert await q.get_job_status(long_id) is None


@pytest.mark.redis_only
async def test_prometheus_labels_from_redis_are_escaped_and_bounded(
    make_queue: QueueFactory, prefix: str, redis_client: aioredis.Redis
) -> None:
    q = make_queue("prom", worker={"concurrency": 10, "scheduler": False})
    exporter = PrometheusExporter(q, max_job_names=20)
    done: list[str] = []

    async def run(job: Any) -> None:
        done.append(job.id)

    q.process("*", run)
    odd = [await q.add_job("plain", {}) for _ in range(3)]
    names = [b'quo"te', b"new\nline\\back", b"bad\xff\xfeutf8"]
    for jid, name in zip(odd, names, strict=True):
        await redis_client.hset(f"{prefix}:{{prom}}:job:{jid}", "n", name)
    await q.start()
    await wait_until(lambda: len(done) == 3, 30)
    await q.add_jobs([{"name": f"name-{i}", "data": {}} for i in range(500)])
    await wait_until(lambda: len(done) == 503, 30)
    # The counters follow the recorded outcomes, which land a round after the runs.
    await wait_until(lambda: q.worker is not None and q.worker.processed == 503, 30)
    await exporter.collector.refresh()
    text = generate_latest(exporter.registry).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    processed = families["kitium_queue_jobs_processed"].samples
    labels = {s.labels["job_name"] for s in processed if s.name.endswith("_total")}
    assert {'quo"te', "new\nline\\back"} <= labels
    assert len(labels) <= 21  # the cap, and "other"
    assert "other" in labels
    assert sum(s.value for s in processed if s.name.endswith("_total")) == 503


class _Failing(SpanExporter):
    def __init__(self) -> None:
        self.calls = 0

    def export(self, spans: Any) -> SpanExportResult:
        self.calls += 1
        raise ConnectionError("collector down")

    def shutdown(self) -> None:
        return None


@pytest.mark.redis_only
async def test_tracing_survives_bad_stored_context_and_a_failing_exporter(
    make_queue: QueueFactory, prefix: str, redis_client: aioredis.Redis
) -> None:
    memory = InMemorySpanExporter()
    failing = _Failing()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(failing))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    q = make_queue("trace", worker={"scheduler": False})
    OpenTelemetryTracing(q, tracer_provider=provider)
    seen: list[str] = []

    async def run(job: Any) -> str:
        seen.append(job.id)
        return "ok"

    q.process("*", run)
    ids = [await q.add_job("t", {"secret": M}) for _ in range(3)]
    key = f"{prefix}:{{trace}}:job:"
    raw = await redis_client.hget(key + ids[0], "o")
    assert raw is not None
    for jid, bad in zip(
        ids, ["00-" + "a" * 1_000_000, "zz-not-a-context", {"nested": [1, 2]}], strict=True
    ):
        opts = json.loads(raw)
        opts["traceparent"] = bad
        await redis_client.hset(key + jid, "o", json.dumps(opts))
    await q.start()
    for jid in ids:
        await wait_for_status(q, jid, JobStatus.COMPLETED)
    assert sorted(seen) == sorted(ids)
    assert failing.calls > 0
    runs = [s for s in memory.get_finished_spans() if s.name == "trace process"]
    assert len(runs) == 3
    for span in runs:
        assert isinstance(span, ReadableSpan)
        assert span.parent is None  # a context of its own, not the bad one
        assert M not in repr(dict(span.attributes or {}))
