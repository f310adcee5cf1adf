"""kitium-queue on a real Redis Cluster (3 masters + 3 replicas on loopback).

Covers the connection forms, scripts on every primary (and NOSCRIPT per node), the core
behaviours (process, retry, dead-letter, replay, delay, priority, pause, stats, events),
partitioned queues spread over the masters, and failovers under load: a coordinated
``CLUSTER FAILOVER`` loses nothing; a master killed with SIGKILL loses at most the jobs
acknowledged just before it died (Redis replicates asynchronously). After every test no
node has answered a single CROSSSLOT error.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from _cluster import LocalCluster, key_slot
from _docs import run_doc_example
from _failover import LoadRun
from helpers import EventLog, QueueFactory, wait_for_status, wait_until
from kitium_queue import JobQueue, JobStatus, NonRetryableError, PartitionedQueue
from kitium_queue.scripts import SCRIPT_NAMES


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(masters=3, replicas=1) as c:
        yield c


def crossslot_errors(cluster: LocalCluster) -> int:
    total = 0
    for node in cluster.alive():
        stats = cluster.info(node, "errorstats")
        entry = stats.get("errorstat_CROSSSLOT")
        if isinstance(entry, dict):
            total += int(entry.get("count", 0))
    return total


@pytest.fixture(autouse=True)
def no_crossslot(cluster: LocalCluster) -> Iterator[None]:
    yield
    assert crossslot_errors(cluster) == 0, "a command spanned two hash slots"


@pytest.fixture
async def make_queue(cluster: LocalCluster, prefix: str) -> AsyncIterator[QueueFactory]:
    factory = QueueFactory(cluster.url, prefix)
    yield factory
    await factory.aclose()


async def _started_quickly(q: JobQueue, seconds: float = 2.5) -> float:
    """Add a job to an idle worker and return how long it took to complete. The idle
    pump sleeps up to 5 s, so a start well under that (half, leaving room for a loaded
    machine) proves the blocking wake-up works."""
    done = asyncio.Event()

    async def ping(job: Any) -> str:
        done.set()
        return "pong"

    q.process("ping", ping)
    await q.start(concurrency=2)
    await asyncio.sleep(0.3)  # let the worker go idle on its wake-up key
    t0 = time.monotonic()
    await q.add_job("ping")
    await asyncio.wait_for(done.wait(), timeout=seconds)
    return time.monotonic() - t0


# ---------------------------------------------------------------- connections


async def test_cluster_url_dict_and_client_forms(cluster: LocalCluster, prefix: str) -> None:
    seeds = [f"127.0.0.1:{p}" for p in cluster.ports[:2]]
    client = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", cluster.ports[0])])
    forms: list[Any] = [
        cluster.url,
        {"cluster": True, "startup_nodes": seeds, "socket_timeout": 5},
        client,
    ]
    try:
        for i, form in enumerate(forms):
            q = JobQueue(f"forms{i}", redis=form, prefix=prefix)
            try:
                assert q.connection.is_cluster
                took = await _started_quickly(q)
                assert took < 2.5
                # The processor ran; its outcome is flushed a moment later.
                await wait_until(
                    lambda q=q: _completed(q, 1), 5, message="the completion to be recorded"
                )
            finally:
                await q.close()
    finally:
        await client.aclose()


async def test_more_calls_at_once_than_redis_py_s_default_pool(make_queue: QueueFactory) -> None:
    """redis-py's Cluster client raises MaxConnectionsError past 100 calls at once per
    node (its default); the clients the queue builds are not bounded that way."""
    q = make_queue("burst")
    await asyncio.gather(*(q.add_job("t") for _ in range(300)))
    stats = await asyncio.gather(*(q.get_stats() for _ in range(400)))
    details = await asyncio.gather(*(q.get_job_detail(f"m{i}") for i in range(400)))
    assert {s.waiting for s in stats} == {300} and details == [None] * 400
    await wait_until(lambda: _waiting(q, 300), 5, message="300 jobs waiting")


async def _waiting(q: JobQueue, n: int) -> bool:
    return (await q.get_stats()).waiting == n


async def test_scripts_are_loaded_on_every_primary(cluster: LocalCluster, prefix: str) -> None:
    q = JobQueue("scripts", redis=cluster.url, prefix=prefix)
    try:
        await q.client()
        shas = [q.scripts.get(n).sha for n in SCRIPT_NAMES]
        for master in cluster.masters():
            c = aioredis.Redis(port=master.port)
            try:
                assert all(await c.script_exists(*shas)), f"scripts missing on {master.port}"
            finally:
                await c.aclose()
    finally:
        await q.close()


async def test_noscript_on_a_node_falls_back_to_eval(
    cluster: LocalCluster, make_queue: QueueFactory
) -> None:
    q = make_queue("noscript")
    await q.add_job("x", 1)  # scripts loaded, cache warm
    owner = cluster.master_for_key(q.keys.wait)
    c = aioredis.Redis(port=owner.port)
    try:
        await c.script_flush()  # as after a failover to a replica that never saw a LOAD
        q.process("x", lambda job: job.data * 2)
        jid = await q.add_job("x", 21)
        await q.start()
        info = await wait_for_status(q, jid, JobStatus.COMPLETED)
        assert info.result == 42
        assert await c.script_exists(q.scripts.get("enqueue").sha) == [True]
    finally:
        await c.aclose()


# ---------------------------------------------------------------- behaviour


async def test_process_retry_dead_letter_and_replay(make_queue: QueueFactory) -> None:
    q = make_queue("behaviour", dlq={"enabled": True})
    events = EventLog(q, ["job-completed", "job-retrying", "job-dlq"])
    tries: dict[str, int] = {}
    fail_for_good = {"on": True}

    async def flaky(job: Any) -> str:
        tries[job.id] = tries.get(job.id, 0) + 1
        if job.data == "flaky" and job.attempts < 3:
            raise RuntimeError("transient")
        if job.data == "poison" and fail_for_good["on"]:
            raise NonRetryableError("bad input")
        return f"ok:{job.data}"

    q.process("work", flaky)
    ok = await q.add_job("work", "plain")
    retried = await q.add_job("work", "flaky", attempts=3, backoff={"type": "fixed", "delay": 20})
    poison = await q.add_job("work", "poison")
    await q.start(concurrency=4)

    assert (await wait_for_status(q, ok, JobStatus.COMPLETED)).result == "ok:plain"
    info = await wait_for_status(q, retried, JobStatus.COMPLETED)
    assert (info.result, info.attempts, tries[retried]) == ("ok:flaky", 3, 3)
    dead = await wait_for_status(q, poison, JobStatus.DLQ)
    assert "bad input" in (dead.failed_reason or "")
    assert [j.id for j in await q.get_dlq_jobs()] == [poison]
    await wait_until(lambda: events.of("job-dlq", poison))
    assert len(events.of("job-retrying", retried)) == 2

    fail_for_good["on"] = False
    assert await q.replay_dlq() == 1
    assert (await wait_for_status(q, poison, JobStatus.COMPLETED)).result == "ok:poison"
    stats = await q.get_stats()
    assert (stats.completed, stats.dlq, stats.waiting, stats.active) == (3, 0, 0, 0)


async def test_delay_priority_and_pause(make_queue: QueueFactory) -> None:
    q = make_queue("order")
    order: list[str] = []

    async def record(job: Any) -> None:
        order.append(job.data)

    q.process("p", record)
    await q.pause()
    for name, pri in (("low", 1), ("high", 9), ("mid", 5), ("high2", 9)):
        await q.add_job("p", name, priority=pri)
    t0 = time.monotonic()
    delayed = await q.add_job("p", "later", delay=300)
    # Read before the worker starts: a start slower than 300 ms (a loaded machine) lets
    # its scheduler move the due job on, to the paused list, before a read after it.
    stats = await q.get_stats()
    assert stats.is_paused and stats.paused == 4 and stats.delayed == 1
    await q.start(concurrency=1)
    await asyncio.sleep(0.2)
    assert order == []  # paused: nothing starts

    await q.resume()
    await wait_until(lambda: len(order) == 5, 5)
    assert order[:4] == ["high", "high2", "mid", "low"]
    info = await q.get_job_status(delayed)
    assert info is not None and info.started_at is not None and info.created_at is not None
    assert info.started_at - info.created_at >= 300
    assert time.monotonic() - t0 >= 0.3


async def test_events_stream_and_stats(make_queue: QueueFactory) -> None:
    q = make_queue("events")
    q.process("e", lambda job: job.data)
    ids = await q.add_jobs([("e", i) for i in range(20)])
    await q.start(concurrency=5)
    await wait_until(lambda: _completed(q, 20), 10)
    seen: dict[str, set[str]] = {}
    async for ev in q.events(last_id="0", block_ms=200, follow=False):
        seen.setdefault(ev.event, set()).add(ev.job_id)
    assert seen["job-added"] >= set(ids)
    assert seen["job-completed"] >= set(ids)
    listed = await q.get_jobs_by_status(JobStatus.COMPLETED, limit=100)
    assert {j.id for j in listed} == set(ids)
    assert (await q.health_check()).healthy


async def _completed(q: JobQueue, n: int) -> bool:
    return (await q.get_stats()).completed >= n


# ---------------------------------------------------------------- partitions


async def test_partitioned_queue_uses_every_master(cluster: LocalCluster, prefix: str) -> None:
    pq = PartitionedQueue("orders", partitions=3, redis=cluster.url, prefix=prefix)
    try:
        owners = {cluster.master_for_key(q.keys.wait).port for q in pq.queues}
        assert owners == {m.port for m in cluster.masters()}  # one partition per master
        per_queue: dict[str, int] = {}

        async def work(job: Any) -> None:
            per_queue[job.queue_name] = per_queue.get(job.queue_name, 0) + 1

        pq.process("o", work)
        ids = await pq.add_jobs([("o", {"i": i}) for i in range(300)])
        same = {await pq.add_job("o", {"i": i}, partition_key="customer-7") for i in range(5)}
        assert len({s.split(":")[0] for s in same}) == 1
        await pq.start(concurrency=6)
        await wait_until(lambda: _completed_pq(pq, 305), 15)
        assert sorted(per_queue.values()) == sorted(s.completed for s in await pq.partition_stats())
        assert all(n >= 100 for n in per_queue.values())
        info = await pq.get_job_status(ids[-1])
        assert info is not None and info.status is JobStatus.COMPLETED and info.id == ids[-1]
    finally:
        await pq.close()


async def test_fifo_groups_and_effectively_once_on_a_cluster(
    cluster: LocalCluster,
    prefix: str,
) -> None:
    from kitium_queue import FIFOQueueManager, IdempotencyManager

    pq = PartitionedQueue(
        "grp", partitions=3, redis=cluster.url, prefix=prefix, worker={"concurrency": 10}
    )
    try:
        fifo = FIFOQueueManager(pq)
        idem = IdempotencyManager(pq)
        order: dict[str, list[int]] = {}

        async def step(job: Any) -> int:
            order.setdefault(job.data["g"], []).append(job.data["i"])
            return int(job.data["i"])

        pq.process("step", step)
        for i in range(10):
            await pq.add_jobs(
                [("step", {"g": f"c{g}", "i": i}, {"message_group_id": f"c{g}"}) for g in range(6)]
            )
        a = await pq.add_job(
            "step",
            {"g": "eo", "i": 0},
            idempotency_key="k1",
            delivery_guarantee="exactly-once",
            remove_on_complete=True,
        )
        await pq.start(concurrency=10)
        await wait_until(lambda: sum(map(len, order.values())) == 61, 15)
        assert all(order[f"c{g}"] == list(range(10)) for g in range(6))
        res = await wait_until(lambda: idem.get_result("k1"), 5)
        assert res.job_id == a and res.result == 0

        async def all_groups_empty() -> bool:
            return (await fifo.list_groups()).groups == []

        # All empty again once each group's last outcome is recorded (it may still be on
        # its way when the processor has returned).
        await wait_until(all_groups_empty, 5, message="every group to be empty again")
        await pq.clear(force=True)
    finally:
        await pq.close()


async def _completed_pq(pq: PartitionedQueue, n: int) -> bool:
    return (await pq.get_stats()).completed >= n


# ---------------------------------------------------------------- failover


async def test_failover_under_load_keeps_every_acknowledged_job(prefix: str) -> None:
    """A coordinated failover (CLUSTER FAILOVER on the replica) loses nothing; then the
    new master is SIGKILLed and only jobs acknowledged within the replication window
    before the crash may be missing. The same worker carries on throughout."""
    with LocalCluster(masters=3, replicas=1) as c:
        q = JobQueue(
            "failover", redis=c.url, prefix=prefix,
            settings={"lock_duration": 1000, "max_stalled_count": 5},
        )  # fmt: skip
        slot = key_slot(q.keys.wait)
        try:
            async with LoadRun(q) as run:
                worker = q.worker
                await run.produce_for(1.0)

                old = c.master_for_slot(slot)
                (replica,) = c.replicas_of(old)
                c.failover_to(replica)
                new = await asyncio.to_thread(c.wait_master_change, old, slot)
                assert new is replica
                await run.produce_for(1.0)
                await run.settle()
                assert run.missing() == [], run.report()  # coordinated: nothing lost

                with run.window("SIGKILL"):
                    c.kill(new)
                    await asyncio.to_thread(c.wait_master_change, new, slot)
                    await asyncio.to_thread(c.wait_ok)
                await run.produce_for(1.0)
                await run.produce_until(301)  # a real load, on any machine
            await run.settle()
            print(run.report())
            assert q.worker is worker and worker.running
            assert run.lost_outside_windows() == [], run.report()
            assert len(run.acked) > 300 and run.runs >= len(run.processed)
            stats = await q.get_stats()
            assert (stats.waiting, stats.active) == (0, 0), (stats, run.report())
            assert crossslot_errors(c) == 0
        finally:
            await q.close()


async def test_doc_example_runs(cluster: LocalCluster, tmp_path: Path) -> None:
    out = await asyncio.to_thread(run_doc_example, "cluster", tmp_path, KQ_CLUSTER_URL=cluster.url)
    assert "sent to a@example.com" in out and "completed=1" in out


# ---------------------------------------------------------------- server checks per node
async def test_server_checks_read_the_node_that_holds_the_queue(
    cluster: LocalCluster, make_queue: QueueFactory, prefix: str
) -> None:
    """``health_check`` memory, ``replication_status``, ``kitium-queue health``'s role
    and the dashboard's server page read the primary that holds the queue's slot (not
    the client's default node); the eviction check at connect reads every primary and
    names the one whose policy may evict."""
    from kitium_queue.errors import ConfigurationError
    from kitium_queue.features.replicas.acks import replication_status

    q = make_queue("held")
    await q.get_stats()
    home = cluster.master_for_key(q.keys.meta)
    others = [m for m in cluster.masters() if m.port != home.port]
    limits = {home.port: 3 << 30, others[0].port: 1 << 30, others[1].port: 2 << 30}
    try:
        for m in cluster.masters():
            cluster._cmd(m, "CONFIG", "SET", "maxmemory", limits[m.port])
        h = await q.health_check()
        assert h.memory is not None
        assert (h.memory.node, h.memory.maxmemory_bytes) == (f"127.0.0.1:{home.port}", 3 << 30)
        rep = await replication_status(q)
        assert rep["role"] == "master" and len(rep["replicas"]) == 1
        want = {r["address"] for r in rep["replicas"]}
        assert want == {f"127.0.0.1:{r.port}" for r in cluster.replicas_of(home)}

        # A primary that does not hold the queue, set to evict: refused, named.
        cluster._cmd(others[1], "CONFIG", "SET", "maxmemory-policy", "allkeys-lru")
        fresh = JobQueue("fresh", redis=cluster.url, prefix=prefix)
        try:
            with pytest.raises(
                ConfigurationError, match=f"allkeys-lru on node 127.0.0.1:{others[1].port}"
            ):
                await fresh.get_stats()
        finally:
            await fresh.close()
    finally:
        for m in cluster.masters():
            cluster._cmd(m, "CONFIG", "SET", "maxmemory", 0)
            cluster._cmd(m, "CONFIG", "SET", "maxmemory-policy", "noeviction")


async def test_orphaned_records_are_found_on_the_node_that_holds_the_queue(
    make_queue: QueueFactory,
) -> None:
    """find_orphans walks the records with SCAN on a Cluster (every primary: one holds
    the queue's slot) and puts them back without a cross-slot command."""
    from kitium_queue.orphans import find_orphans

    q = make_queue("orphans")
    ids = await q.add_jobs([("t", {"i": i}) for i in range(40)])
    client = await q.client()
    await client.delete(q.keys.wait)
    report = await find_orphans(q, repair=True)
    assert report.orphans == 40 and set(report.job_ids) == set(ids)
    assert (await q.get_stats()).waiting == 40
