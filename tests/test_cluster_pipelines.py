"""Reads that pipeline the server clock, on a Redis Cluster: a Cluster pipeline refuses
``TIME`` (redis-py's ``PIPELINE_BLOCKED_COMMANDS``), so there the clock is read on its
own. Each public entry point is run on a real cluster: the encryption key rotation and
its status (``encryption.status.read_status``), the Prometheus collector's schedule
overdue reading (``scheduler.overdue_ms``) and ``kitium-queue limits``
(``flowstate.flow_state``)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from _cluster import LocalCluster
from helpers import QueueFactory, app_module
from kitium_queue.cli import main
from kitium_queue.features.encryption import EncryptionManager, KeyConfig, generate_key
from kitium_queue.features.prometheus.collector import KitiumCollector

K1, K2 = generate_key(), generate_key()


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(masters=3, replicas=0) as c:
        yield c


async def test_key_rotation_and_its_status_on_a_cluster(cluster: LocalCluster, prefix: str) -> None:
    factory = QueueFactory(cluster.url, prefix)
    try:
        q = factory("rot-cluster")
        m = EncryptionManager(
            q,
            keys=[KeyConfig("k1", K1), KeyConfig("k2", K2)],
            rotation_grace_ms=0,
            run_rotation=False,
        )
        await m.initialize()
        jid = await q.add_job("pay", {"card": "4111"}, encrypted=True)
        before = await m.rotation_status()
        assert before.state == "none" and before.current_key_id == "k1"
        rotated = await m.rotate_key("k1", "k2")
        assert rotated.current_key_id == "k2" and not rotated.damaged
        done = await m.run_rotation()
        assert done.state == "done" and done.scanned >= 1
        assert (await m.rotation_status()).state == "done"
        raw = await (await q.client()).hget(q.keys.job(jid), "d")
        assert raw is not None and orjson.loads(raw)["kid"] == "k2"
    finally:
        await factory.aclose()


async def test_collector_reads_schedule_overdue_on_a_cluster(
    cluster: LocalCluster, prefix: str
) -> None:
    factory = QueueFactory(cluster.url, prefix)
    try:
        q = factory("prom-cluster", worker={"scheduler": False})
        collector = KitiumCollector([q])
        [idle] = await collector.refresh()
        assert idle.up and "schedules" not in idle.unread and idle.schedule_overdue_ms == 0
        # A schedule no scheduler fires falls behind, by the server's clock.
        await q.schedule_every("fast", {}, 100, schedule_id="fast")
        await asyncio.sleep(0.5)
        [late] = await collector.refresh()
        assert late.up and "schedules" not in late.unread, late.unread
        assert late.schedule_overdue_ms > 0
    finally:
        await factory.aclose()


def test_cli_limits_on_a_cluster(cluster: LocalCluster, prefix: str, tmp_path: Path) -> None:
    source = (
        "from kitium_queue import JobQueue\n"
        f"queue = JobQueue('fl-cluster', redis={cluster.url!r}, prefix={prefix!r})\n"
        "queue.set_concurrency_limit('k', 1)\n"
        "queue.set_rate_limit('r-exact', max=2, duration=1000)\n"
    )
    with app_module(tmp_path, source, "kq_cluster_limits") as module:
        result = CliRunner().invoke(main, ["limits", f"{module}:queue", "--json"])
    assert result.exit_code == 0, (result.output, result.stderr)
    shown = json.loads(result.output)
    assert shown["declared"] is True and shown["active"] == 0
    assert shown["now_ms"] > 0  # the server's clock was read
    counters = {(c["kind"], c["key"]): c for c in shown["counters"]}
    assert counters[("concurrency", "k")]["running"] == 0
    assert counters[("concurrency", "k")]["damaged"] is None
    rate = counters[("rate", "r-exact")]
    assert (rate["max"], rate["full"], rate["damaged"]) == (2, False, None)
