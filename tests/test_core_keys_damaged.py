"""The queue's own keys damaged outside kitium-queue (by hand or by another client).

A key of the layout (``lua/lib_base.lua``: the state sets, meta, the event stream, the
wake-up marker, the id / limiter / lease counters) overwritten with another type, or a
counter holding something that is not an integer. Each defect was reproduced on a real
Redis before it was fixed:

* claim met a damaged event stream or lease counter after popping its jobs from wait:
  the script failed half way, and the jobs were in no set, never to run again; a
  damaged marker failed the claim after it had leased its jobs (they stalled). Claim,
  finish, enqueue, recover and extend now check the keys they write before their first
  write and answer ``KQ_DAMAGED_KEY`` (``DamagedKeyError``), writing nothing;
* finish met a damaged completed set after the call's jobs left active: recorded in no
  set, and the worker then tried to record final failures in their place. It now keeps
  the outcomes and records them once the key is repaired;
* enqueue met a damaged wait set, delayed set, event stream or marker after the batch's
  job records were written (orphan records, a retry with the same ids was a
  duplicate); a damaged id counter gave a bare "value is not an integer";
* a worker logged every failed claim (several a second, a bare WRONGTYPE naming no
  key); it now names the key and how to repair it, once a minute at most, and says when
  work resumes (by itself, once the key is repaired);
* ``health_check()`` and ``kitium-queue health`` called such a queue healthy;
  ``get_stats``, ``list_jobs``, ``get_jobs_by_status``, ``get_dlq_jobs``, the CLI and
  the dashboard's queue page failed with a bare WRONGTYPE (the page answered 500);
  ``explain`` did not mention the key.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from click.testing import CliRunner

from helpers import QueueFactory, damage_key, key_snapshot, wait_until
from kitium_queue import DamagedKeyError, JobQueue
from kitium_queue.cli import EXIT_NOT_READY, main
from kitium_queue.damage import DAMAGE_LOG_S, DamagedKeys
from kitium_queue.dashboard import create_dashboard
from test_dashboard_asgi import OPERATOR, TOKENS, client_for
from workers.harness import Engine

pytestmark = pytest.mark.redis_only

T0 = 1_700_000_000_000
QUEUE = "core"
DAMAGE = "damaged outside kitium-queue"


@pytest.fixture
def engine(redis_url: str, prefix: str) -> Iterator[Engine]:
    client = redis.Redis.from_url(redis_url)
    try:
        yield Engine(client, QUEUE, prefix)
    finally:
        client.close()


def _refused(exc: pytest.ExceptionInfo[Any], key: str) -> None:
    text = str(exc.value)
    assert "KQ_DAMAGED_KEY" in text and key in text, text


# ---------------------------------------------------------------------- scripts


def _busy_queue(engine: Engine) -> None:
    """Waiting jobs, a due delayed one and an expired lease: every path of claim runs."""
    engine.enqueue(T0, job_id="w1")
    engine.enqueue(T0, job_id="w2")
    engine.enqueue(T0, job_id="d1", delay=10)
    engine.enqueue(T0, job_id="r1", priority=65535)
    assert engine.claim(T0, 1, lease=10)[0] == b"ok"  # r1 first: its lease expires


@pytest.mark.parametrize(
    ("part", "how"),
    [
        ("events", "string"),
        ("marker", "hash"),
        ("lease", "hash"),
        ("lease", "abc"),
        ("lease", "1e3"),
        ("wait", "set"),
        ("active", "list"),
        ("dlq", "string"),
        ("meta", "string"),
    ],
)
def test_claim_meeting_a_damaged_key_writes_nothing(
    engine: Engine, prefix: str, part: str, how: str
) -> None:
    _busy_queue(engine)
    key = getattr(engine.keys, part)
    damage_key(engine.client, key, how)
    before = key_snapshot(engine.client, prefix)
    with pytest.raises(redis.ResponseError) as exc:
        engine.claim(T0 + 100, 5, max_stalled=0)  # the expired lease is dead-lettered
    _refused(exc, key)
    assert key_snapshot(engine.client, prefix) == before


def test_claim_checks_the_limiter_only_when_a_limiter_is_set(engine: Engine, prefix: str) -> None:
    engine.enqueue(T0, job_id="a")
    damage_key(engine.client, engine.keys.limiter, "abc")
    before = key_snapshot(engine.client, prefix)
    with pytest.raises(redis.ResponseError) as exc:
        engine.run("claim", T0, 1, 1000, 10, 1000, 2, "1", "w", 1000)
    _refused(exc, engine.keys.limiter)
    assert key_snapshot(engine.client, prefix) == before
    assert engine.claim(T0)[0] == b"ok"  # no limiter: the counter is not used


@pytest.mark.parametrize(
    ("kind", "part"),
    [("C", "completed"), ("C", "events"), ("C", "active"), ("R", "delayed"), ("F", "dlq")],
)
def test_finish_meeting_a_damaged_key_writes_nothing(
    engine: Engine, prefix: str, kind: str, part: str
) -> None:
    engine.enqueue(T0, job_id="a")
    token = int(engine.claim(T0, 1, lease=60_000)[2])
    key = getattr(engine.keys, part)
    damage_key(engine.client, key, "string")
    before = key_snapshot(engine.client, prefix)
    with pytest.raises(redis.ResponseError) as exc:
        engine.finish(T0 + 5, "a", token, kind, delay=1000)
    _refused(exc, key)
    assert key_snapshot(engine.client, prefix) == before
    assert engine.job("a")["st"] == "active"


@pytest.mark.parametrize(
    ("part", "how"),
    [("wait", "string"), ("delayed", "hash"), ("events", "list"), ("marker", "set")],
)
def test_enqueue_meeting_a_damaged_key_writes_nothing(
    engine: Engine, prefix: str, part: str, how: str
) -> None:
    key = getattr(engine.keys, part)
    damage_key(engine.client, key, how)
    before = key_snapshot(engine.client, prefix)
    jobs: list[Any] = []
    for jid, delay in (("a", 0), ("b", 500), ("c", 0)):
        jobs += [jid, "n", "{}", "", 0, delay, "0", ""]
    with pytest.raises(redis.ResponseError) as exc:
        engine.run("enqueue", T0, 86_400_000, *jobs)
    _refused(exc, key)
    assert key_snapshot(engine.client, prefix) == before


@pytest.mark.parametrize("how", ["abc", "hash", "99999999999999999999"])
def test_enqueue_with_a_damaged_id_counter_names_it(engine: Engine, prefix: str, how: str) -> None:
    damage_key(engine.client, engine.keys.id, how)
    before = key_snapshot(engine.client, prefix)
    with pytest.raises(redis.ResponseError) as exc:
        engine.enqueue(T0)
    _refused(exc, engine.keys.id)
    assert key_snapshot(engine.client, prefix) == before


@pytest.mark.parametrize("part", ["wait", "events", "dlq"])
def test_recover_meeting_a_damaged_key_writes_nothing(
    engine: Engine, prefix: str, part: str
) -> None:
    engine.enqueue(T0, job_id="a")
    engine.claim(T0, 1, lease=10)
    key = getattr(engine.keys, part)
    damage_key(engine.client, key, "string")
    before = key_snapshot(engine.client, prefix)
    with pytest.raises(redis.ResponseError) as exc:
        engine.recover(T0 + 100, max_stalled=0 if part == "dlq" else 2)
    _refused(exc, key)
    assert key_snapshot(engine.client, prefix) == before


# ---------------------------------------------------------------------- the API


async def test_add_jobs_refuses_a_damaged_key_whole_and_names_it(
    make_queue: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q = make_queue()
    await redis_client.set(q.keys.events, "x")
    with pytest.raises(DamagedKeyError) as exc:
        await q.add_jobs([("n", {"i": i}) for i in range(3)])
    err = exc.value
    assert err.key == q.keys.events and err.found == "string" and err.expected == "stream"
    assert DAMAGE in str(err) and "delete it (past events are lost)" in str(err)
    assert [k async for k in redis_client.scan_iter(match=q.keys.job("*"))] == []
    await redis_client.delete(q.keys.events)
    assert len(await q.add_jobs([("n", {"i": i}) for i in range(3)])) == 3


async def test_add_job_names_a_damaged_id_counter(
    make_queue: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q = make_queue()
    await redis_client.set(q.keys.id, "nan")
    with pytest.raises(DamagedKeyError) as exc:
        await q.add_job("n", {})
    assert exc.value.key == q.keys.id and "not an integer" in str(exc.value)


@pytest.mark.parametrize(("part", "status"), [("wait", "waiting"), ("dlq", "dlq")])
async def test_reads_name_the_damaged_key(
    make_queue: QueueFactory, redis_client: aioredis.Redis, part: str, status: str
) -> None:
    q = make_queue()
    jid = await q.add_job("n", {})
    key = getattr(q.keys, part)
    await redis_client.delete(key)
    await redis_client.set(key, "x")
    reads = [q.get_stats, lambda: q.list_jobs(status), lambda: q.get_jobs_by_status(status)]
    if part == "dlq":
        reads.append(q.get_dlq_jobs)
    for read in reads:
        with pytest.raises(DamagedKeyError) as exc:
            await read()
        assert exc.value.key == key and DAMAGE in str(exc.value)
    why = await q.explain(jid)
    first = why.reasons[0]
    assert first.code == "damaged-key" and key in first.message and first.blocking


async def test_health_check_reports_the_damaged_key_until_it_is_repaired(
    make_queue: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q = make_queue()
    assert await q.health_check()
    await redis_client.hset(q.keys.lease, "x", "y")
    h = await q.health_check()
    assert not h and h.error is not None and h.redis_latency_ms is not None
    assert h.error.startswith("DamagedKeyError") and q.keys.lease in h.error
    assert "lease token" in h.error  # how to repair this one
    await redis_client.delete(q.keys.lease)
    assert await q.health_check()


# ---------------------------------------------------------------------- the worker


def _errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name.startswith("kitium_queue") and r.levelno >= logging.ERROR
    ]


@pytest.mark.parametrize(("part", "how"), [("lease", "abc"), ("events", "string")])
async def test_a_worker_loses_no_job_on_a_damaged_key_and_resumes_when_repaired(
    make_queue: QueueFactory,
    redis_client: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
    part: str,
    how: str,
) -> None:
    caplog.set_level(logging.INFO, logger="kitium_queue")
    q = make_queue(worker={"concurrency": 4})
    runs: list[str] = []
    q.process("n", lambda job: runs.append(job.id))
    ids = await q.add_jobs([("n", {"i": i}) for i in range(6)])
    key = getattr(q.keys, part)
    await redis_client.delete(key)
    await redis_client.set(key, "x" if how == "string" else how)
    await q.start()
    await wait_until(lambda: any(key in r.getMessage() for r in _errors(caplog)), 10)
    await asyncio.sleep(2.5)  # claims keep failing meanwhile (about one a second a lane)
    errors = _errors(caplog)
    assert len(errors) == 1, [r.getMessage() for r in errors]  # at a bounded rate
    assert DAMAGE in errors[0].getMessage() and "delete it" in errors[0].getMessage()
    assert runs == [] and await redis_client.zcard(q.keys.wait) == len(ids)
    await redis_client.delete(key)  # repaired: work resumes by itself
    await wait_until(lambda: len(runs) == len(ids), 15)
    await asyncio.sleep(0.2)
    assert sorted(runs) == sorted(ids)  # each once
    await wait_until(lambda: any("sound again" in r.getMessage() for r in caplog.records), 10)


async def test_outcomes_meeting_a_damaged_finished_set_are_kept_until_it_is_repaired(
    make_queue: QueueFactory, redis_client: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    q = make_queue(worker={"concurrency": 2})
    gate = asyncio.Event()

    async def n(job: Any) -> str:
        await gate.wait()
        return "ok"

    q.process("n", n)
    ids = await q.add_jobs([("n", {"i": i}) for i in range(3)])
    await q.start()
    await wait_until(lambda: redis_client.zcard(q.keys.active), 10)
    await redis_client.set(q.keys.completed, "x")
    gate.set()
    await wait_until(lambda: any(q.keys.completed in r.getMessage() for r in _errors(caplog)), 10)
    await asyncio.sleep(1.0)
    await redis_client.delete(q.keys.completed)

    async def all_completed() -> bool:
        return await redis_client.zcard(q.keys.completed) == len(ids)

    await wait_until(all_completed, 20)
    for jid in ids:
        info = await q.get_job_status(jid)
        assert info is not None and info.status.value == "completed", info
    assert not any("final failure" in r.getMessage() for r in caplog.records)


async def test_a_damaged_marker_stalls_nothing_and_work_resumes(
    make_queue: QueueFactory, redis_client: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    q = make_queue(worker={"concurrency": 2})
    runs: list[str] = []
    q.process("n", lambda job: runs.append(job.id))
    ids = await q.add_jobs([("n", {"i": i}) for i in range(4)])
    await redis_client.delete(q.keys.marker)
    await redis_client.hset(q.keys.marker, "x", "y")
    await q.start()
    await wait_until(lambda: any(q.keys.marker in r.getMessage() for r in _errors(caplog)), 10)
    await asyncio.sleep(1.5)
    assert runs == [] and await redis_client.zcard(q.keys.active) == 0  # none leased
    assert len(_errors(caplog)) == 1
    assert not [r for r in caplog.records if "wake-up wait interrupted" in r.getMessage()]
    await redis_client.delete(q.keys.marker)
    await wait_until(lambda: len(runs) == len(ids), 15)
    assert sorted(runs) == sorted(ids)


def test_damage_reports_are_rate_limited_and_say_when_work_resumes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    report = DamagedKeys("q", clock=lambda: now[0])
    exc = DamagedKeyError("string zset kq:{q}:wait")
    assert exc.key == "kq:{q}:wait" and "not a sorted set" in str(exc)
    with caplog.at_level(logging.ERROR, logger="kitium_queue"):
        for _ in range(50):
            assert report.failed(exc)
        now[0] += DAMAGE_LOG_S / 2
        report.failed(exc)
        assert len(caplog.records) == 1
        now[0] += DAMAGE_LOG_S
        report.failed(exc)
        assert len(caplog.records) == 2 and "50 more failed calls" in caplog.records[1].message
        other = DamagedKeyError("hash stream kq:{q}:events")
        report.failed(other)  # another key: at once
        assert len(caplog.records) == 3 and "kq:{q}:events" in caplog.records[2].message
    assert not report.failed(ValueError("not about keys"))


# ---------------------------------------------------------------------- tools


def test_cli_health_stats_and_jobs_list_name_the_damaged_key(
    cli_app: str, redis_url: str, prefix: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    key = f"{prefix}:{{cli}}:wait"
    try:
        client.set(key, "x")
        runner = CliRunner()
        health = runner.invoke(main, ["health", cli_app])
        assert health.exit_code == EXIT_NOT_READY, health.output
        assert key in health.output and "not ready" in health.output
        for args in (["stats", cli_app], ["jobs", "list", cli_app]):
            res = runner.invoke(main, args)
            assert res.exit_code != 0, res.output
            assert key in res.output and DAMAGE in res.output, res.output
            assert "Traceback" not in res.output and "WRONGTYPE" not in res.output
    finally:
        client.close()


async def test_dashboard_queue_page_names_the_damaged_key(
    make_queue: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q: JobQueue = make_queue("shop")
    await q.add_job("n", {})
    await redis_client.delete(q.keys.wait)
    await redis_client.set(q.keys.wait, "x")
    app = create_dashboard(queues=[q], tokens=TOKENS, refresh_ms=0)
    c = client_for(app)
    r = await c.post("/login", data={"token": OPERATOR, "next": "/"})
    assert r.status_code == 303
    page = await c.get("/q/shop")
    assert page.status_code == 200, page.text
    assert q.keys.wait.replace("{", "&#123;") in page.text or q.keys.wait in page.text
    assert "damaged outside kitium-queue" in page.text


async def test_a_log_line_meeting_a_damaged_log_list_names_it(
    make_queue: QueueFactory, redis_client: aioredis.Redis
) -> None:
    # Before: job.log() raised a bare WRONGTYPE into the processor.
    q = make_queue("logdmg", worker={"concurrency": 1})
    seen: list[BaseException] = []
    done: list[str] = []

    @q.process("n")
    async def run(job: Any) -> None:
        await redis_client.set(q.keys.logs(job.id), "written by hand")
        try:
            await job.log("hello")
        except Exception as exc:
            seen.append(exc)
        done.append(job.id)

    jid = await q.add_job("n", {})
    await q.start()
    await wait_until(lambda: done == [jid])
    (exc,) = seen
    assert isinstance(exc, DamagedKeyError) and exc.key == q.keys.logs(jid)
    assert exc.found == "string" and exc.expected == "list"
