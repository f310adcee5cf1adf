"""Payload encryption, its rotation pass and the read-only operations views (Prometheus
collector and exporter, ``measure_footprint``) under hostile input and keys damaged by
hand or by another client. Against a real Redis.

Each test pins one defect found by probing:

* the queue's key record ``enc`` of another type, or with a current key id that is
  none (non-UTF-8 bytes), made every worker fail or dead-letter every encrypted job it
  took (a raw ``WRONGTYPE``, or a ``NonRetryableError``); they are now deferred, no
  attempt spent, with one error logged saying how to repair, and run once repaired;
* a producer, ``initialize`` or ``add_key`` meeting such a record (or ``enc:keys`` of
  another type) got a raw Redis error; now a ``KeyRecordDamagedError`` naming the key
  and the repair, never the stored garbage;
* ``rotation_status`` (and ``kitium-queue encryption status``) failed as a whole on
  any of the three records of another type; it now reads what it can and says in
  ``damaged`` what is wrong and how to repair; a rotation record whose number is no
  integer reads as state ``damaged`` instead of a ``running`` pass that never runs;
* a ``rotations`` counter that is no integer (``inf``) was taken by ``tonumber`` and
  left a rotation record no pass could match; ``rotate_key`` now refuses it, writing
  nothing;
* a rotation record with ``rotated_at`` in the future held the pass back that long (a
  year); a damaged ``clean_rounds`` ended it as ``done`` before it swept anything; a
  counter that is no integer made ``HINCRBY`` fail the pass after its first writes,
  for ever; a job key or a state set of another type, or a parked count that is no
  number, failed every round: the pass now waits at most its grace, sweeps, skips what
  it cannot read and finishes;
* the CLI's redacted view echoed an envelope's key id read back from Redis (10 kB with
  control characters);
* the collector reported a whole queue as ``up 0``, its job counts dropped, when only
  its schedule index was damaged (another type, a score of ``inf``); the counts are now
  served and the part is flagged by ``kitium_queue_read_error``;
* ``measure_footprint`` (``kitium-queue memory``) failed as a whole on one state set of
  another type; that state is now reported in ``problems`` and the rest measured;
* bad arguments: exporter host and port (``True`` bound port 1, ``2.5`` port 2, ``""``
  every interface; others raised ``OverflowError``/``TypeError``), collector namespace
  and timeout (an invalid namespace failed every scrape), subscriber ``max_job_names``
  (``True``) and buckets (NaN), ``encrypt_all``/``run_rotation`` that are not bools,
  are refused with a ``ConfigurationError``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from helpers import QueueFactory, wait_for_status
from kitium_queue import JobQueue, JobStatus
from kitium_queue.errors import ConfigurationError, KitiumQueueError
from kitium_queue.features.encryption import (
    EncryptionError,
    EncryptionManager,
    KeyConfig,
    generate_key,
)
from kitium_queue.features.encryption.crypto import KeyRecordDamagedError
from kitium_queue.features.footprint import measure_footprint
from kitium_queue.features.prometheus import PrometheusExporter
from kitium_queue.features.prometheus.collector import KitiumCollector
from kitium_queue.features.prometheus.subscriber import PrometheusSubscriber

pytestmark = pytest.mark.redis_only

K1, K2 = generate_key(), generate_key()
MARK = "PLAINTEXT-MARKER-7c1a"


def _manager(q: JobQueue, **kw: Any) -> EncryptionManager:
    kw.setdefault("run_rotation", False)
    return EncryptionManager(q, keys=[KeyConfig("k1", K1), KeyConfig("k2", K2)], **kw)


def _no_secrets(text: str) -> None:
    assert MARK not in text and K1 not in text and K2 not in text


# ------------------------------------------------------------------ key records
@pytest.mark.parametrize("damage", ["another type", "not a key id"])
async def test_a_damaged_key_record_defers_encrypted_jobs_until_it_is_repaired(
    make_queue: QueueFactory,
    redis_client: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
    damage: str,
) -> None:
    q = make_queue("defer", dlq={"enabled": True}, worker={"concurrency": 2})
    m = _manager(q, refresh_ms=1)
    assert await m.initialize() == "k1"
    job = await q.add_job("pay", {"v": MARK}, encrypted=True, attempts=1)
    plain = await q.add_job("pay", {"v": "plain"}, attempts=1)
    meta = q.keys.extra("enc")
    if damage == "another type":
        await redis_client.delete(meta)
        await redis_client.set(meta, "written by hand")
    else:
        await redis_client.hset(meta, "current", b"\xff\xfe\x00k1")
    ran: list[Any] = []

    @q.process("*")
    async def anything(j: Any) -> str:
        ran.append(j.data)
        return "ok"

    with caplog.at_level(logging.WARNING):
        await q.start()
        await wait_for_status(q, plain, JobStatus.COMPLETED, timeout=10)  # others go on
        info = await wait_for_status(q, job, JobStatus.DELAYED, timeout=10)
    assert info.attempts == 0 and ran == [{"v": "plain"}]  # deferred, not dead-lettered
    logged = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    assert logged and meta in logged[0]
    assert f"DEL {meta}" in logged[0] and f"HSET {meta} current" in logged[0]
    for r in caplog.records:
        _no_secrets(r.getMessage())
    # Repaired: the job runs, once.
    if damage == "another type":
        await redis_client.delete(meta)
    else:
        await redis_client.hset(meta, "current", "k1")
    done = await wait_for_status(q, job, JobStatus.COMPLETED, timeout=20)
    assert done.attempts == 1
    assert ran == [{"v": "plain"}, {"v": MARK}]


async def test_a_producer_meeting_a_damaged_key_record_is_told_how_to_repair_it(
    make_queue: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q = make_queue("prod")
    m = _manager(q)
    meta = q.keys.extra("enc")
    await redis_client.set(meta, "x" * 5000)
    with pytest.raises(KeyRecordDamagedError) as err:
        await q.add_job("pay", {"v": MARK}, encrypted=True)
    assert isinstance(err.value, EncryptionError) and isinstance(err.value, KitiumQueueError)
    text = str(err.value)
    assert meta in text and f"DEL {meta}" in text and "xxxxx" not in text
    _no_secrets(text)
    assert (await q.get_stats()).waiting == 0
    with pytest.raises(KeyRecordDamagedError, match=r"holds another type|string"):
        await m.rotate_key("k1", "k2")
    # The record of key ids, likewise (initialize and add_key record ids there).
    await redis_client.delete(meta)
    ids = q.keys.extra("enc:keys")
    await redis_client.set(ids, "x")
    with pytest.raises(KeyRecordDamagedError, match=f"DEL {ids}"):
        await m.initialize()
    with pytest.raises(KeyRecordDamagedError, match=f"DEL {ids}"):
        await m.add_key(KeyConfig("k3", generate_key()))
    await redis_client.delete(ids)
    assert await m.initialize() == "k1"
    await q.add_job("pay", {"v": MARK}, encrypted=True)


async def test_rotation_status_reads_damaged_records_and_says_how_to_repair(
    make_queue: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q = make_queue("status")
    m = _manager(q)
    meta, ids, rot = (q.keys.extra(k) for k in ("enc", "enc:keys", "enc:rotation"))
    for key in (meta, ids, rot):
        await redis_client.set(key, "x")
    st = await m.rotation_status()
    assert st.current_key_id is None and st.key_ids == [] and st.state == "none"
    for key in (meta, ids, rot):
        assert f"{key} holds another type (DEL it" in st.damaged
    await redis_client.delete(meta, ids, rot)
    await redis_client.hset(meta, "current", "\x1b[2J" + "k" * 10_000)
    await redis_client.hset(ids, mapping={"k1": 1, b"\xff\x00": 1})
    st = await m.rotation_status()
    assert st.current_key_id is None and st.key_ids == ["k1"]
    assert f"{meta} current is not a key id" in st.damaged and f"{ids} has fields" in st.damaged
    assert "\x1b" not in st.damaged and len(st.damaged) < 1000
    # A rotation record whose number is no integer: no pass can run it; it says so.
    await redis_client.delete(meta, ids)
    await m.initialize()
    await m.rotate_key("k1", "k2")
    await redis_client.hset(rot, "n", "1e400")
    st = await m.rotation_status()
    assert st.state == "damaged" and f"{rot} is not a rotation record" in st.damaged
    done = await asyncio.wait_for(m.run_rotation(), 30)
    assert done.state == "damaged"


async def test_a_damaged_rotations_counter_refuses_rotate_key_and_writes_nothing(
    make_queue: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q = make_queue("counter")
    m = _manager(q)
    await m.initialize()
    meta, rot = q.keys.extra("enc"), q.keys.extra("enc:rotation")
    for bad in ("inf", "nan", "1e3", "-1", "abc"):
        await redis_client.hset(meta, "rotations", bad)
        with pytest.raises(KeyRecordDamagedError, match=f"HSET {meta} rotations"):
            await m.rotate_key("k1", "k2")
        assert await redis_client.hget(meta, "current") == b"k1"
        assert await redis_client.exists(rot) == 0
    await redis_client.hset(meta, "rotations", "4")
    st = await m.rotate_key("k1", "k2")
    assert (st.rotation, st.state, st.to_key_id) == (5, "running", "k2")


# ------------------------------------------------------------------ rotation pass
async def _rotated(q: JobQueue, m: EncryptionManager) -> str:
    await m.initialize()
    job = await q.add_job("pay", {"v": MARK}, encrypted=True)
    await m.rotate_key("k1", "k2")
    return job


async def _kid(redis_client: aioredis.Redis, q: JobQueue, job: str) -> str:
    raw = await redis_client.hget(q.keys.job(job), "d")
    assert raw is not None and MARK.encode() not in raw
    kid: str = orjson.loads(raw)["kid"]
    return kid


@pytest.mark.parametrize(
    "fields",
    [
        {"rotated_at": "future"},
        {"rotated_at": "9" * 40},
        {"clean_rounds": "99"},
        {"reencrypted": "not a number"},
        {"reencrypted": str(2**63 - 1)},
    ],
    ids=["rotated_at-next-year", "rotated_at-huge", "clean_rounds", "counter", "overflow"],
)
async def test_a_damaged_rotation_record_neither_holds_nor_ends_the_pass_early(
    make_queue: QueueFactory, redis_client: aioredis.Redis, fields: dict[str, str]
) -> None:
    q = make_queue("pass")
    m = _manager(q, rotation_grace_ms=0)
    job = await _rotated(q, m)
    if fields.get("rotated_at") == "future":
        fields = {"rotated_at": str(int(time.time() * 1000) + 365 * 86_400_000)}
    await redis_client.hset(q.keys.extra("enc:rotation"), mapping=fields)
    st = await asyncio.wait_for(m.run_rotation(), 60)
    assert st.state == "done"
    assert await _kid(redis_client, q, job) == "k2"  # swept, not skipped


async def test_the_pass_skips_damaged_job_keys_and_sets_and_rotates_the_rest(
    make_queue: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q = make_queue("skip")
    m = _manager(q, rotation_grace_ms=0)
    job = await _rotated(q, m)
    broken = await q.add_job("pay", {"v": 2}, encrypted=True)
    await redis_client.delete(q.keys.job(broken))
    await redis_client.set(q.keys.job(broken), "written by hand")
    await redis_client.set(q.keys.failed, "x")
    await redis_client.hset(q.keys.meta, "parked", "many")
    st = await asyncio.wait_for(m.run_rotation(), 60)
    assert st.state == "done"
    assert await _kid(redis_client, q, job) == "k2"


async def test_the_redacted_view_does_not_echo_a_hostile_key_id(
    make_queue: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q = make_queue("view")
    m = _manager(q)
    await m.initialize()
    job = await q.add_job("pay", {"v": MARK}, encrypted=True)
    env = orjson.loads(await redis_client.hget(q.keys.job(job), "d"))
    env["kid"] = "\x1b[31m" + "k" * 10_000
    env["alg"] = "\x07" * 1000
    await redis_client.hset(q.keys.job(job), "d", orjson.dumps(env))
    q.ctx.redact_payloads = True
    info = await q.get_job_status(job)
    assert info is not None and info.data == "<encrypted key=<malformed> ?>"


# ------------------------------------------------------------------ read-only views
def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


@pytest.mark.parametrize("damage", ["another type", "infinite score"])
async def test_a_damaged_schedule_index_is_flagged_and_the_queue_still_reported(
    make_queue: QueueFactory,
    redis_client: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
    damage: str,
) -> None:
    good, bad = make_queue("good"), make_queue("bad")
    await good.add_job("n", {})
    await bad.add_jobs([("n", {}), ("n", {})])
    if damage == "another type":
        await redis_client.set(bad.keys.schedules_due, "x")
    else:
        await redis_client.zadd(bad.keys.schedules_due, {"s": float("inf")})
    exporter = PrometheusExporter([good, bad], subscribe=False)
    with caplog.at_level(logging.WARNING):
        s = _samples((await exporter.render()).decode())
    for name, waiting in (("good", 1), ("bad", 2)):
        assert s[("kitium_queue_up", frozenset({("queue", name)}))] == 1
        key = ("kitium_queue_jobs", frozenset({("queue", name), ("state", "waiting")}))
        assert s[key] == waiting
    flag = ("kitium_queue_read_error", frozenset({("queue", "bad"), ("part", "schedules")}))
    assert s[flag] == 1
    assert not any(k[0] == "kitium_queue_read_error" and ("queue", "good") in k[1] for k in s)
    assert any("schedules of queue bad" in r.getMessage() for r in caplog.records)


async def test_the_memory_report_measures_what_it_can_beside_a_damaged_set(
    make_queue: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q = make_queue("mem")
    await q.add_jobs([("n", {"x": "y" * 100}) for _ in range(3)])
    await redis_client.set(q.keys.dlq, "x")
    fp = await measure_footprint(q, samples=5)
    by_state = {s.state: s for s in fp.states}
    assert by_state["waiting"].jobs == 3 and by_state["waiting"].sampled == 3
    assert by_state["dlq"].jobs == 0
    [problem] = fp.problems
    assert problem.startswith("dlq:") and q.keys.dlq in problem
    assert fp.to_dict()["problems"] == [problem]


# ------------------------------------------------------------------ bad arguments
@pytest.mark.parametrize(
    ("host", "port"),
    [
        ("127.0.0.1", True),
        ("127.0.0.1", 2.5),
        ("127.0.0.1", -1),
        ("127.0.0.1", 70_000),
        ("127.0.0.1", math.nan),
        ("127.0.0.1", "9464"),
        ("", 0),
        (None, 0),
        (5, 0),
        ("127.0.0.1\x00", 0),
        ("bad host", 0),
        ("no-such-host.invalid", 0),
    ],
)
async def test_the_exporter_refuses_a_bad_host_or_port(
    make_queue: QueueFactory, host: Any, port: Any
) -> None:
    exporter = PrometheusExporter(make_queue("srv"), subscribe=False)
    with pytest.raises(ConfigurationError, match=r"host|port|listen"):
        server = await exporter.serve(host, port)
        await server.close()


@pytest.mark.parametrize(
    "kw",
    [
        {"namespace": "bad name"},
        {"namespace": ""},
        {"namespace": "9x"},
        {"namespace": 5},
        {"timeout": math.nan},
        {"timeout": -1},
        {"timeout": True},
        {"timeout": math.inf},
        {"timeout": "5"},
    ],
)
async def test_the_collector_refuses_bad_options(make_queue: QueueFactory, kw: Any) -> None:
    with pytest.raises(ConfigurationError):
        KitiumCollector([make_queue("c")], **kw)


def test_the_collector_and_subscriber_refuse_bad_values() -> None:
    for bad in ([], "queue", 5):
        with pytest.raises(ConfigurationError):
            KitiumCollector(bad)  # type: ignore[arg-type]
    for kw in (
        {"max_job_names": True},
        {"buckets": [math.nan]},
        {"buckets": [1.0, math.inf]},
        {"buckets": ["x"]},
        {"namespace": "a b"},
    ):
        with pytest.raises(ConfigurationError):
            PrometheusSubscriber(CollectorRegistry(), **kw)  # type: ignore[arg-type]
    assert generate_latest(CollectorRegistry()) == b""


@pytest.mark.parametrize("kw", [{"encrypt_all": "no"}, {"run_rotation": 1}])
async def test_the_manager_refuses_flags_that_are_not_bools(
    make_queue: QueueFactory, kw: Any
) -> None:
    with pytest.raises(ConfigurationError, match="True or False"):
        _manager(make_queue("flags"), **kw)
