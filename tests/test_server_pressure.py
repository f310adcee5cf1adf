"""Redis under pressure: an evicting policy refused at connect, memory and persistence in
``health_check``, and a full Redis (``maxmemory`` with ``noeviction``) that refuses
writes with ``WriteRefusedError`` while every transition stays whole and the queue
drains once memory is freed.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from click.testing import CliRunner
from redis.exceptions import ExecAbortError, OutOfMemoryError, ReadOnlyError, ResponseError

from _cluster import LocalCluster
from _redis import RedisServer
from helpers import (
    SAVING_SERVER_ARGS,
    app_module,
    fail_saves,
    health_cli,
    mend_saves,
    user_without,
    wait_until,
)
from kitium_queue import ConfigurationError, JobQueue, SyncJobQueue, WriteRefusedError
from kitium_queue.cli import main as cli_main
from kitium_queue.leader import LeaderService
from kitium_queue.serverinfo import WriteRefusals
from kitium_queue.serverinfo import refuses_writes as refusals_of

STATE_SETS = {
    "waiting": "wait",
    "active": "active",
    "delayed": "delayed",
    "completed": "completed",
    "failed": "failed",
    "dlq": "dlq",
}


async def test_an_evicting_policy_is_refused_unless_allowed(prefix: str) -> None:
    with RedisServer("--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru") as srv:
        q = JobQueue("ev", redis=srv.url, prefix=prefix)
        with pytest.raises(ConfigurationError, match=r"allkeys-lru.*noeviction.*allow_eviction"):
            await q.add_job("n", 1)
        await q.close()
        ok = JobQueue("ev", redis=srv.url, prefix=prefix, settings={"allow_eviction": True})
        assert await ok.add_job("n", 1)
        health = await ok.health_check()
        assert health.memory is not None and health.memory.policy == "allkeys-lru"
        assert health.memory.maxmemory_bytes == 64 * 1024 * 1024
        await ok.close()
    with pytest.raises(ConfigurationError, match="allow_eviction must be True or False"):
        JobQueue("ev", settings={"allow_eviction": "yes"})


async def test_health_reports_memory_and_persistence(prefix: str) -> None:
    with RedisServer(
        "--appendonly", "yes", "--appendfsync", "always", "--maxmemory", "32mb"
    ) as srv:
        q = JobQueue("h", redis=srv.url, prefix=prefix)
        h = await q.health_check()
        assert h.healthy and h.memory is not None
        assert h.memory.persistence == "aof"  # INFO alone: AOF on, fsync not known
        h = await q.queries.health_check(lambda: False, server_config=True)
        assert h.memory is not None
        assert h.memory.persistence == "aof (appendfsync always)"
        assert h.memory.policy == "noeviction" and h.memory.used_bytes > 0
        assert h.memory.used_fraction is not None and 0 < h.memory.used_fraction < 1
        await q.close()
    mem = JobQueue("m")
    assert (await mem.health_check()).memory is None  # memory:// has no server


async def test_persistence_without_config_get_is_what_info_says(prefix: str) -> None:
    """A managed service that disabled CONFIG: ``health`` (with ``server_config``) read
    the refused ``save`` rules as "none" and reported no RDB although the server had
    saved snapshots. What INFO says now stands when CONFIG GET is refused."""
    with RedisServer(
        "--appendonly", "yes", "--save", "3600 1", "--rename-command", "CONFIG", ""
    ) as srv:
        admin = aioredis.from_url(srv.url)
        await admin.set("x", "1")
        await admin.bgsave()
        await wait_until(
            lambda: _rdb_saved(admin), 10, message="the background save did not finish"
        )
        q = JobQueue("h", redis=srv.url, prefix=prefix)
        for server_config in (False, True):
            h = await q.queries.health_check(lambda: False, server_config=server_config)
            assert h.healthy and h.memory is not None
            assert h.memory.persistence == "aof + rdb", (server_config, h.memory)
        await q.close()
        await admin.aclose()


async def test_a_server_without_info_says_its_eviction_policy_was_not_checked(
    prefix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """INFO disabled (rare, but ``acl redis-rules --no-info`` makes such a user): the
    policy cannot be read, so an evicting one cannot be refused. That used to be one
    INFO-level line; it is a warning, and a row of the readiness checks."""
    import kitium_queue.serverinfo as serverinfo

    serverinfo._unchecked_said.clear()
    with RedisServer("--maxmemory-policy", "allkeys-lru") as srv:
        url = await user_without(srv.url, srv.port, "noinfo", "info")
        q = JobQueue("noinfo", redis=url, prefix=prefix)
        with caplog.at_level(logging.WARNING, logger="kitium_queue"):
            assert await q.add_job("n", {})
            await q.close()
        said = [r.getMessage() for r in caplog.records if "not checked" in r.getMessage()]
        assert len(said) == 1 and "noeviction" in said[0], said
        code, report = await health_cli(tmp_path, url, "noinfo", prefix)
        checks = {c["name"]: c for c in report["checks"]}
        assert code == 0 and checks["eviction policy"]["ok"], report
        assert "not checked" in checks["eviction policy"]["detail"]
        # `config show` prints the rest and says INFO was not answered (it failed whole).
        source = f"from kitium_queue import JobQueue\nqueue = JobQueue('noinfo', redis={url!r})\n"
        with app_module(tmp_path, source, "kq_noinfo") as module:
            got = await asyncio.to_thread(
                CliRunner().invoke, cli_main, ["config", "show", f"{module}:queue", "--json"]
            )
        assert got.exit_code == 0, got.output
        shown = json.loads(got.stdout)["server"]
        assert shown["redis_version"] is None and "not answered" in shown["info"], shown


async def _rdb_saved(client: aioredis.Redis) -> bool:
    info = await client.info("persistence")
    return not info["rdb_bgsave_in_progress"] and info["rdb_last_bgsave_status"] == "ok"


async def _consistent(client: aioredis.Redis, q: JobQueue) -> list[str]:
    """Every job hash's state matches the one set that holds it; returns problems."""
    problems: list[str] = []
    where: dict[str, str] = {}
    for st, attr in STATE_SETS.items():
        for jid in await client.zrange(getattr(q.keys, attr), 0, -1):
            j = jid.decode()
            if j in where:
                problems.append(f"{j} in {where[j]} and {st}")
            where[j] = st
    async for key in client.scan_iter(match=q.keys.job("*"), count=1000):
        jid = key.decode()[len(q.keys.job("")) :]
        st = (await client.hget(key, "st") or b"waiting").decode()
        if where.get(jid) != st:
            problems.append(f"{jid}: st={st}, found in {where.get(jid)}")
    return problems


async def test_a_full_redis_refuses_writes_whole_and_the_queue_recovers(prefix: str) -> None:
    with RedisServer("--maxmemory", "6mb", "--maxmemory-policy", "noeviction") as srv:
        client = aioredis.from_url(srv.url)
        q = JobQueue("oom", redis=srv.url, prefix=prefix, worker={"concurrency": 10})
        done: list[str] = []
        gate = asyncio.Event()

        @q.process("n")
        async def n(job: Any) -> str:
            await gate.wait()
            done.append(job.id)
            return "x" * 200  # results take memory too

        added: list[str] = []
        refused: WriteRefusedError | None = None
        try:
            for _ in range(2000):
                before = (await q.get_stats()).waiting
                try:
                    added += await q.add_jobs([("n", {"pad": "p" * 1500}) for _ in range(50)])
                except WriteRefusedError as exc:
                    refused = exc
                    # The refused call wrote nothing: one script call, refused up front.
                    assert (await q.get_stats()).waiting == before
                    break
            assert refused is not None, "Redis never filled up"
            text = str(refused)
            assert "out of memory" in text and "nothing of this call was written" in text
            # The worker drains the full queue: claims and outcomes still go through.
            await q.start()
            gate.set()
            await wait_until(lambda: len(done) == len(added), 30)

            async def recorded() -> bool:
                # Every outcome recorded (completed ones beyond the default retention of
                # 1,000 are removed as they complete).
                st = await q.get_stats()
                return (st.waiting, st.active, st.completed) == (0, 0, min(len(added), 1000))

            await wait_until(recorded, 30)
            assert await _consistent(client, q) == []
            assert sorted(done) == sorted(added)  # each ran once
            # Memory freed (here: a higher limit): adds go through again.
            await client.config_set("maxmemory", "64mb")
            assert await q.add_job("n", {"pad": "after"})
            await wait_until(lambda: len(done) == len(added) + 1, 10)
            assert await _consistent(client, q) == []
        finally:
            await q.close()
            await client.aclose()


async def test_a_server_that_cannot_save_refuses_writes_whole_and_the_queue_recovers(
    prefix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """MISCONF (a failed background save: a full or broken disk) refuses every write and
    also PING, which redis-py sends on every new connection: a process that starts then
    still reads, gets ``WriteRefusedError`` for its writes, and its worker starts and
    waits; a worker holds its outcomes; all of it goes on once a save succeeds."""
    caplog.set_level(logging.ERROR, logger="kitium_queue")
    with RedisServer(*SAVING_SERVER_ARGS) as srv:
        client = aioredis.from_url(srv.url)
        first = JobQueue("nosave", redis=srv.url, prefix=prefix, worker={"concurrency": 4})
        late = JobQueue("nosave", redis=srv.url, prefix=prefix, worker={"concurrency": 4})
        gate = asyncio.Event()
        runs: list[str] = []
        for q in (first, late):

            @q.process("n")
            async def n(job: Any) -> str:
                runs.append(job.id)
                await gate.wait()
                return "ok"

        try:
            ids = await first.add_jobs([("n", {"i": i}) for i in range(20)])
            await first.start()
            await wait_until(lambda: len(runs) == 4, 10)
            await asyncio.to_thread(fail_saves, srv.port)

            # A process that starts now: its reads work, its writes are refused whole.
            fresh = JobQueue("nosave", redis=srv.url, prefix=prefix)
            try:
                stats = await fresh.get_stats()
                assert (stats.waiting, stats.active) == (16, 4)
                with pytest.raises(WriteRefusedError, match="background save failed"):
                    await fresh.add_job("n", {"late": True})
                with pytest.raises(WriteRefusedError, match="MISCONF"):
                    await fresh.add_jobs([("n", {"i": i}) for i in range(3)])
                health = await fresh.health_check()
                assert not health.healthy and health.redis_latency_ms is not None
                assert "background save failed" in (health.error or "")
                assert health.memory is not None and health.memory.persistence == "rdb"
            finally:
                await fresh.close()
            source = (
                "from kitium_queue import JobQueue\n"
                f"queue = JobQueue('nosave', redis={srv.url!r}, prefix={prefix!r})\n"
            )
            with app_module(tmp_path, source, "kq_nosave") as module:
                got = await asyncio.to_thread(
                    CliRunner().invoke, cli_main, ["health", f"{module}:queue", "--json"]
                )
            report = json.loads(got.stdout)
            assert got.exit_code == 4 and report["verdict"] == "not ready"  # Redis answers
            failed = {c["name"] for c in report["checks"] if not c["ok"]}
            assert failed == {"writes"} and report["redis_latency_ms"] is not None
            sync = SyncJobQueue("nosave", redis=srv.url, prefix=prefix)
            try:
                with pytest.raises(WriteRefusedError, match="MISCONF"):
                    await asyncio.to_thread(sync.add_job, "n", {"sync": True})
            finally:
                await asyncio.to_thread(sync.close)
            # A worker started now starts (it waits for writes) instead of failing.
            await late.start()
            gate.set()  # the four running jobs end: their outcomes are refused, held
            await asyncio.sleep(1.0)
            assert (await first.get_stats()).completed == 0
            assert len(runs) == 4 and await _consistent(client, first) == []

            await asyncio.to_thread(mend_saves, srv.port, tmp_path)
            await wait_until(lambda: len(runs) == 20, 30)

            async def drained() -> bool:
                st = await first.get_stats()
                return (st.waiting, st.active, st.completed) == (0, 0, 20)

            await wait_until(drained, 30)
            assert sorted(runs) == sorted(ids)  # each ran once: no outcome was lost
            assert await _consistent(client, first) == []
            assert await first.add_job("n", {"after": True})
        finally:
            gate.set()
            await first.close()
            await late.close()
            await client.aclose()
    # The refusal is reported once per queue and process, not once per refused call.
    reports = [r for r in caplog.records if "refuses writes" in r.getMessage()]
    assert 1 <= len(reports) <= 2, [r.getMessage()[:120] for r in reports]


def test_a_write_refusal_is_reported_when_it_starts_while_it_lasts_and_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="kitium_queue")
    now = [0.0]
    refusals = WriteRefusals("q", lambda: now[0])
    # As redis-py raises them: it takes the code (OOM, READONLY) off the message.
    oom = OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")
    assert refusals_of(ReadOnlyError("You can't write against a read only replica."))
    pipelined = ExecAbortError("Transaction discarded because of previous errors.")
    pipelined.__cause__ = ResponseError(
        "Command # 1 (HSET kq:{q}:worker:w host h) of pipeline caused error: MISCONF Redis "
        "is configured to save RDB snapshots, but it's currently unable to persist to disk."
    )
    assert not refusals.failed(ResponseError("WRONGTYPE Operation against a key"))
    assert not refusals.failed(ValueError("MISCONF in a message of another kind"))
    for t in range(30):  # one refused call a second for 30 s: one report
        now[0] = float(t)
        assert refusals.failed(pipelined if t % 2 else oom)
    texts = [r.getMessage() for r in caplog.records]
    assert len(texts) == 1 and "out of memory" in texts[0] and "nothing is lost" in texts[0]
    now[0] = 30.0
    assert refusals.failed(pipelined)  # still refused 30 s on: reported again, with counts
    texts = [r.getMessage() for r in caplog.records]
    assert len(texts) == 2 and "background save failed" in texts[1]
    assert "30 calls refused in 30 s; refused for 30 s" in texts[1]
    now[0] = 31.0
    refusals.ok()  # a call went through 1 s after a refusal: not over yet
    assert len(caplog.records) == 2 and refusals.since == 0.0
    now[0] = 32.5
    refusals.ok()
    assert "accepts writes again (refused for 30.0 s)" in caplog.records[-1].getMessage()
    assert refusals.since is None
    refusals.ok()
    assert len(caplog.records) == 3


async def test_leader_services_and_schedules_outlive_a_refusal_of_writes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A leader service's campaign met the refusal as an exception it did not expect and
    ended for good (retention, alerts, replication stopped); the scheduler logged a
    traceback a second. Both wait it out and go on."""
    caplog.set_level(logging.WARNING, logger="kitium_queue")
    with RedisServer(*SAVING_SERVER_ARGS) as srv:
        q = JobQueue("lead", redis=srv.url)
        beats: list[int] = []
        ticks: list[str] = []

        async def body(term: int) -> None:
            while True:
                beats.append(term)
                await asyncio.sleep(0.05)

        writes: list[int] = []

        async def writer(term: int) -> None:  # fails at its first refused write
            client = await q.client()
            while True:
                await client.set("lead-probe", term)
                writes.append(term)
                await asyncio.sleep(0.05)

        q.add_service(LeaderService("probe", body, lease_ms=1000))
        q.add_service(LeaderService("writer", writer, lease_ms=1000))

        @q.process("tick")
        async def tick(job: Any) -> None:
            ticks.append(job.id)

        try:
            await q.schedule_every("tick", {}, 200)
            await q.start()
            await wait_until(lambda: beats and writes and len(ticks) >= 2, 10)
            await asyncio.to_thread(fail_saves, srv.port)
            await asyncio.sleep(2.0)  # longer than the lease: the leader steps down
            led, ran, wrote = len(beats), len(ticks), len(writes)
            await asyncio.to_thread(mend_saves, srv.port, tmp_path)
            await wait_until(
                lambda: len(beats) > led + 5 and len(ticks) > ran + 2 and len(writes) > wrote + 5,
                15,
            )
            assert beats[-1] > beats[0]  # elected again: a later term
        finally:
            await q.close()
    texts = [r.getMessage() for r in caplog.records]
    assert any("leader service probe: Redis refuses writes" in t for t in texts), texts
    assert any("leader service probe: Redis accepts writes again" in t for t in texts), texts
    # The writer's body failed (its own error, logged with its traceback); nothing else.
    assert [r.getMessage()[:60] for r in caplog.records if r.exc_info] == [
        "leader service writer: body failed in term 1; stepping down"
    ], texts


async def test_on_a_cluster_a_node_that_cannot_save_refuses_writes_whole(
    prefix: str, tmp_path: Path
) -> None:
    """On a Cluster (whose node connections redis-py builds itself) a process that
    starts while the node holding the queue cannot save reads, and gets
    ``WriteRefusedError`` for its writes."""
    with LocalCluster(masters=1, replicas=0, extra_args=SAVING_SERVER_ARGS) as cluster:
        q = JobQueue("cns", redis=cluster.url, prefix=prefix)
        try:
            assert await q.add_job("n", {"before": True})
            node = cluster.master_for_key(q.keys.meta)
            await asyncio.to_thread(fail_saves, node.port)
            fresh = JobQueue("cns", redis=cluster.url, prefix=prefix)
            try:
                assert (await fresh.get_stats()).waiting == 1  # reads go on
                with pytest.raises(WriteRefusedError, match="background save failed"):
                    await fresh.add_job("n", {"during": True})
                health = await fresh.health_check()
                assert not health.healthy
                assert (health.error or "").startswith("WriteRefusedError: ")
            finally:
                await fresh.close()
            await asyncio.to_thread(mend_saves, node.port, tmp_path)
            assert await q.add_job("n", {"after": True})
            assert (await q.get_stats()).waiting == 2
        finally:
            await q.close()
