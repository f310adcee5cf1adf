"""More ways a Redis server refuses the queue's writes as a whole, beside the full and
unable-to-save servers of ``test_server_pressure.py``: too few replicas for its
``min-replicas-to-write`` (``NOREPLICAS``), and busy with another client's long script
(``BUSY``: every command refused, reads too). Each is raised as ``WriteRefusedError``
naming the cause, shown by ``health_check`` and ``kitium-queue health``, reported at a
bounded rate by workers that hold their outcomes, and the queue drains once it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from _redis import RedisServer
from helpers import health_cli, wait_replica_online, wait_until
from kitium_queue import ConnectionUnavailableError, DamagedKeyError, JobQueue, WriteRefusedError
from kitium_queue.leader import OutageLog
from kitium_queue.serverinfo import refuses_writes, write_refused

pytestmark = pytest.mark.redis_only


def _gated(queues: tuple[JobQueue, ...], runs: list[str], gate: asyncio.Event) -> None:
    for q in queues:

        @q.process("n")
        async def n(job: Any) -> str:
            runs.append(job.id)
            await gate.wait()
            return "ok"


async def _drained(q: JobQueue, total: int) -> bool:
    st = await q.get_stats()
    return (st.waiting, st.active, st.completed) == (0, 0, total)


def test_the_codes_of_a_server_refusal_are_whole_words() -> None:
    assert write_refused("BUSY Redis is busy running a script.") is not None
    assert write_refused("NOREPLICAS Not enough good replicas to write.") is not None
    # A consumer group that exists already is no refusal of the server.
    assert write_refused("BUSYGROUP Consumer Group name already exists") is None
    assert not refuses_writes(ResponseError("BUSYGROUP Consumer Group name already exists"))
    assert refuses_writes(ResponseError("NOREPLICAS Not enough good replicas to write."))


async def test_the_first_job_of_a_queue_on_a_full_server_is_refused_not_called_damage(
    prefix: str,
) -> None:
    """The id counter of a queue that never had a job does not exist: a full Redis
    refuses its first INCR, which is no damaged key (the message must not tell the user
    to delete one)."""
    with RedisServer() as srv:
        client = aioredis.from_url(srv.url)
        q = JobQueue("first", redis=srv.url, prefix=prefix)
        try:
            # 2 MB in values of 100 kB, one command each: a connection's query buffer
            # then holds at most one, and Redis shrinking it later (2 MB at once before)
            # cannot take the server back under the limit set 500 kB below its use.
            for i in range(20):
                await client.set(f"filler:{i}", b"x" * 100_000)
            used = int((await client.info("memory"))["used_memory"])
            await client.config_set("maxmemory", used - 500_000)
            with pytest.raises(WriteRefusedError, match="out of memory") as got:
                await q.add_job("n", 1)
            assert not isinstance(got.value, DamagedKeyError)
            assert await client.exists(q.keys.id, q.keys.wait) == 0
            health = await q.health_check()
            assert not health.healthy and "out of memory" in (health.error or "")
            assert "(reads go on)" in (health.error or "")
            await client.config_set("maxmemory", 0)
            assert await q.add_job("n", 1) == "1"
            assert (await q.health_check()).healthy
            # A counter that is damaged is still named as such.
            await client.set(q.keys.id, "not a number")
            with pytest.raises(DamagedKeyError, match=r"\{first\}:id"):
                await q.add_job("n", 2)
        finally:
            await q.close()
            await client.aclose()


async def test_too_few_replicas_refuses_writes_whole_and_the_queue_recovers(
    prefix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``min-replicas-to-write`` with fewer replicas connected: Redis answers PING and
    reads, refuses every write (``NOREPLICAS``)."""
    caplog.set_level(logging.ERROR, logger="kitium_queue")
    with RedisServer() as srv:
        client = aioredis.from_url(srv.url)
        q = JobQueue("norep", redis=srv.url, prefix=prefix, worker={"concurrency": 4})
        gate = asyncio.Event()
        runs: list[str] = []
        _gated((q,), runs, gate)
        try:
            ids = await q.add_jobs([("n", {"i": i}) for i in range(12)])
            await q.start()
            await wait_until(lambda: len(runs) == 4, 10)
            await client.config_set("min-replicas-to-write", 1)
            with pytest.raises(WriteRefusedError, match="min-replicas-to-write"):
                await q.add_job("n", {"late": True})
            fresh = JobQueue("norep-new", redis=srv.url, prefix=prefix)  # no id counter yet
            try:
                with pytest.raises(WriteRefusedError, match="NOREPLICAS"):
                    await fresh.add_job("n", 1)
                health = await fresh.health_check()
                assert not health.healthy and health.redis_latency_ms is not None
                assert "fewer replicas" in (health.error or "")
            finally:
                await fresh.close()
            code, report = await health_cli(tmp_path, srv.url, "norep", prefix)
            assert code == 4 and report["verdict"] == "not ready"
            assert {c["name"] for c in report["checks"] if not c["ok"]} == {"writes"}

            gate.set()  # the running jobs end: their outcomes are refused and held
            await asyncio.sleep(1.0)
            st = await q.get_stats()
            assert (st.completed, st.active) == (0, 4) and len(runs) == 4

            await client.config_set("min-replicas-to-write", 0)
            await wait_until(lambda: _drained(q, 12), 30)
            assert sorted(runs) == sorted(ids)  # each ran once: no outcome lost
            assert (await q.health_check()).healthy
        finally:
            gate.set()
            await q.close()
            await client.aclose()
    texts = [r.getMessage() for r in caplog.records]
    assert not [t for t in texts if "claim failed" in t or "heartbeat" in t], texts[:5]
    reports = [t for t in texts if "fewer replicas" in t]
    assert 1 <= len(reports) <= 2, [t[:120] for t in reports]


def _long_script(url: str, started: threading.Event, out: list[BaseException]) -> None:
    """Another client's read-only script that runs until it is killed (at most 60 s)."""
    c = redis.Redis.from_url(url)
    try:
        started.set()
        c.eval(
            "local t = redis.call('TIME')[1] while redis.call('TIME')[1] - t < 60 do end return 1",
            0,
        )
    except BaseException as exc:  # SCRIPT KILL ends it with an error: expected
        out.append(exc)
    finally:
        c.close()


async def test_a_server_busy_with_a_long_script_refuses_every_call_and_the_queue_recovers(
    prefix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Past ``busy-reply-threshold``, Redis answers every command but ``SCRIPT KILL``
    (and a few others) with ``BUSY``, reads included, PING included: a process that
    starts then still connects; its calls raise ``WriteRefusedError`` saying so;
    running workers hold their outcomes; all goes on once the script ends."""
    caplog.set_level(logging.ERROR, logger="kitium_queue")
    with RedisServer("--busy-reply-threshold", "100") as srv:
        client = aioredis.from_url(srv.url)
        q = JobQueue("busy", redis=srv.url, prefix=prefix, worker={"concurrency": 4})
        gate = asyncio.Event()
        runs: list[str] = []
        _gated((q,), runs, gate)
        started = threading.Event()
        ended: list[BaseException] = []
        thread = threading.Thread(target=_long_script, args=(srv.url, started, ended))
        try:
            ids = await q.add_jobs([("n", {"i": i}) for i in range(12)])
            await q.start()
            await wait_until(lambda: len(runs) == 4, 10)
            thread.start()
            started.wait(5)

            async def busy() -> bool:
                try:
                    await client.get("x")
                except ResponseError as exc:
                    return str(exc).startswith("BUSY")
                return False

            await wait_until(busy, 10)
            gate.set()  # outcomes meet BUSY: held
            with pytest.raises(WriteRefusedError, match="busy running a script"):
                await q.add_job("n", {"late": True})
            # A process that connects now: the checks at connect cannot read, so it
            # raises the refusal (and connects again on its next call).
            fresh = JobQueue("busy", redis=srv.url, prefix=prefix)
            try:
                with pytest.raises(WriteRefusedError, match="BUSY"):
                    await fresh.add_job("n", 1)
                assert (await fresh.health_check()).error.startswith("WriteRefusedError: ")
            finally:
                await fresh.close()
            health = await q.health_check()  # connected before: PING answered with BUSY
            assert not health.healthy and health.redis_latency_ms is not None
            error = health.error or ""
            assert error.startswith("WriteRefusedError: ") and "reads too" in error
            assert "(reads go on)" not in error and "SCRIPT KILL" in error
            code, report = await health_cli(tmp_path, srv.url, "busy", prefix)
            assert code == 4 and report["verdict"] == "not ready"
            assert "writes" in {c["name"] for c in report["checks"] if not c["ok"]}
            await asyncio.sleep(1.0)
            assert len(runs) == 4 and await busy()  # nothing completed, nothing claimed

            await client.execute_command("SCRIPT", "KILL")
            await asyncio.to_thread(thread.join, 10)
            assert ended and "killed" in str(ended[0]).lower()
            await wait_until(lambda: _drained(q, 12), 30)
            assert sorted(runs) == sorted(ids)  # each ran once
            assert (await q.health_check()).healthy
        finally:
            gate.set()
            if thread.is_alive():
                with contextlib.suppress(ResponseError):
                    await client.execute_command("SCRIPT", "KILL")
                await asyncio.to_thread(thread.join, 10)
            await q.close()
            await client.aclose()
    texts = [r.getMessage() for r in caplog.records]
    assert not [t for t in texts if "claim failed" in t or "heartbeat" in t], texts[:5]
    assert not [r for r in caplog.records if r.exc_info], "no traceback is logged"
    reports = [t for t in texts if "busy running a script" in t]
    assert 1 <= len(reports) <= 2, [t[:120] for t in reports]


async def test_a_server_at_its_maxclients_names_the_setting_and_open_connections_go_on(
    prefix: str,
) -> None:
    """Every connection slot taken (``maxclients``): a process that connects now is told
    which setting to raise, not to check that the server runs; a worker connected
    before goes on draining."""
    with RedisServer("--maxclients", "40") as srv:
        q = JobQueue("full-clients", redis=srv.url, prefix=prefix)
        done: list[str] = []

        @q.process("n")
        async def n(job: Any) -> None:
            done.append(job.id)

        held: list[redis.Redis] = []
        try:
            await q.start()
            ids = [await q.add_job("n", {"i": i}) for i in range(5)]
            while True:  # take every free slot
                c = redis.Redis.from_url(srv.url)
                try:
                    c.ping()
                except redis.ConnectionError:
                    c.close()
                    break
                held.append(c)
                assert len(held) < 100
            fresh = JobQueue("full-clients", redis=srv.url, prefix=prefix)
            try:
                with pytest.raises(ConnectionUnavailableError, match="maxclients") as got:
                    await fresh.add_job("n", 1)
                assert "that the server is running" not in str(got.value)
                health = await fresh.health_check()
                assert not health.healthy and "raise maxclients" in (health.error or "")
            finally:
                await fresh.close()
            # Connected before: adds and the worker go on (on the connections they hold;
            # a call that needs one more connection meets the same refusal).
            ids += [await q.add_job("n", {"i": i}) for i in range(5, 20)]
            await wait_until(lambda: len(done) == 20, 20)
            assert sorted(done) == sorted(ids)
            for c in held:
                c.close()
            held.clear()
            again = JobQueue("full-clients", redis=srv.url, prefix=prefix)
            try:
                assert await again.add_job("n", {"after": True})
            finally:
                await again.close()
        finally:
            for c in held:
                c.close()
            await q.close()


async def test_a_password_change_during_an_outage_is_said_once_with_what_to_check(
    prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The worker's connections are cut and the server now wants another password: the
    worker says so once (not "unreachable" alone, not once per retry), and resumes once
    the credentials work again."""
    caplog.set_level(logging.WARNING, logger="kitium_queue")
    with RedisServer() as srv:
        q = JobQueue("auth", redis=srv.url, prefix=prefix)
        done: list[str] = []

        @q.process("n")
        async def n(job: Any) -> None:
            done.append(job.id)

        admin = redis.Redis.from_url(srv.url)
        try:
            await q.start()
            first = await q.add_job("n", 1)
            await wait_until(lambda: done == [first], 10)
            admin.config_set("requirepass", "rotated")
            admin.client_kill_filter(_type="normal", skipme=True)
            await asyncio.sleep(2.5)  # the worker retries many times meanwhile
            texts = [r.getMessage() for r in caplog.records]
            # The first error met may already be the refusal (a loaded machine) or the
            # cut connection first, then the refusal: either way it is said once.
            assert len([t for t in texts if "Redis unreachable" in t]) == 1, texts
            # The queue gives no password: it is told that one is needed, and how.
            auth = [t for t in texts if "requires a password and none was given" in t]
            assert len(auth) == 1 and "redis://:PASSWORD@host" in auth[0], texts
            assert len([t for t in texts if "still no Redis" in t]) <= 1, texts
            admin.execute_command("AUTH", "rotated")
            admin.config_set("requirepass", "")
            later = JobQueue("auth", redis=srv.url, prefix=prefix)
            try:
                second = await later.add_job("n", 2)
            finally:
                await later.close()
            await wait_until(lambda: done == [first, second], 15)
            assert any("reachable again" in r.getMessage() for r in caplog.records)
        finally:
            admin.close()
            await q.close()


def test_a_leader_services_outage_log_says_a_new_cause_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="kitium_queue")
    outage = OutageLog("leader service s")
    outage.failed(redis.ConnectionError("Connection refused"))
    for _ in range(5):
        outage.failed(redis.AuthenticationError("invalid password"))
        outage.failed(redis.ConnectionError("Connection refused"))
    outage.ok()
    texts = [r.getMessage() for r in caplog.records]
    assert len(texts) == 3, texts
    assert "Redis unreachable (ConnectionError" in texts[0]
    assert "still no Redis, now: AuthenticationError" in texts[1]
    assert "check the username and password" in texts[1]
    assert "reachable again" in texts[2]


def test_an_outage_that_starts_with_refused_credentials_says_what_to_check(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="kitium_queue")
    outage = OutageLog("leader service s")
    for _ in range(3):
        outage.failed(redis.AuthenticationError("invalid password"))
    texts = [r.getMessage() for r in caplog.records]
    assert len(texts) == 1 and "Redis unreachable (AuthenticationError" in texts[0]
    assert "check the username and password" in texts[0]


async def test_a_queue_pointed_at_a_replica_is_unhealthy_and_says_where_to_point_it() -> None:
    """A replica answers PING and reads: only a write tells it is no primary."""
    # The primary serves the replica's full sync at once (Redis waits 5 s by default).
    primary = RedisServer("--repl-diskless-sync-delay", "0").start()
    replica = RedisServer(
        "--replicaof", "127.0.0.1", str(primary.port), "--repl-diskless-sync-delay", "0"
    ).start()
    q = JobQueue("on-replica", redis=replica.url)
    try:
        await asyncio.to_thread(wait_replica_online, primary.port, replica.port)
        health = await q.health_check()
        assert not health.healthy and health.redis_latency_ms is not None
        assert "read-only replica" in (health.error or "")
        assert "point the queue at the primary" in (health.error or "")
        with pytest.raises(WriteRefusedError, match="read-only replica"):
            await q.add_job("n", 1)
    finally:
        await q.close()
        replica.close()
        primary.close()
