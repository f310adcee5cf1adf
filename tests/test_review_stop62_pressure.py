"""Redis under pressure from a new user's side (stop 62), on private ``redis-server``
processes:

1. on a full Redis (``maxmemory`` reached, ``noeviction``) a processor calling
   ``job.update_progress()`` or ``job.log()`` failed its job (``WriteRefusedError`` raised
   in the processor: every job dead-lettered within seconds) while the failure outcome
   itself was accepted. A progress value or log line Redis refuses is now dropped and
   reported with the other refusals; the job goes on and completes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from _redis import RedisServer
from helpers import wait_until
from kitium_queue import JobQueue, JobStatus

pytestmark = pytest.mark.redis_only


async def test_progress_and_log_lines_refused_by_a_full_redis_do_not_fail_the_job(
    prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    with RedisServer() as srv:
        client = aioredis.from_url(srv.url)
        q = JobQueue("full", redis=srv.url, prefix=prefix, worker={"concurrency": 3})
        go = asyncio.Event()
        said: list[str] = []

        async def reporting(job: Any) -> str:
            await go.wait()
            for p in (10, 50, 90):
                await job.update_progress(p)
                await job.log(f"step {p}")
            said.append(job.id)
            return "done"

        q.process("report", reporting)
        try:
            ids = [await q.add_job("report", {"n": i}, attempts=2) for i in range(3)]
            await q.start()
            await wait_until(lambda: _active(q, 3), 10)
            await _fill(client)
            with caplog.at_level(logging.ERROR, logger="kitium_queue"):
                go.set()
                await wait_until(lambda: len(said) == 3, 20)
                await client.config_set("maxmemory", 0)

                async def completed() -> bool:
                    return (await q.get_stats()).completed == 3

                await wait_until(completed, 20)
            for jid in ids:
                info = await q.get_job_status(jid)
                assert info is not None and info.status is JobStatus.COMPLETED, info
                assert info.attempts == 1, info  # no attempt spent on a refused write
            assert any("out of memory" in r.getMessage() for r in caplog.records)
        finally:
            await q.close()
            await client.aclose()


async def _active(q: JobQueue, n: int) -> bool:
    return (await q.get_stats()).active == n


async def test_records_deleted_by_the_hundred_are_said_in_a_few_lines_that_add_up(
    prefix: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 500 deleted records gave 500 ERROR lines "dead-lettered on recovery (stalled too
    # often...)" and a missing-records warning that said "5" and never caught up.
    from kitium_queue import missing, observe

    monkeypatch.setattr(observe, "RECOVERY_LOG_S", 1.0)
    monkeypatch.setattr(missing, "MISSING_LOG_S", 1.0)
    with RedisServer() as srv:
        client = aioredis.from_url(srv.url)
        q = JobQueue("gone", redis=srv.url, prefix=prefix, worker={"concurrency": 4})
        q.process("n", lambda job: "ok")
        try:
            ids = [await q.add_job("n", {"i": i}) for i in range(60)]
            gone = ids[1::2]
            await client.delete(*(q.keys.job(j) for j in gone))
            with caplog.at_level(logging.WARNING, logger="kitium_queue"):
                await q.start()

                async def settled() -> bool:
                    s = await q.get_stats()
                    return s.completed == 30 and s.dlq == 30

                await wait_until(settled, 20)
                await asyncio.sleep(2.5)  # the windows end: what they held is said

                def lines(text: str) -> list[str]:
                    return [r.getMessage() for r in caplog.records if text in r.getMessage()]

                recovered = lines("dead-lettered on recovery")
                assert 1 <= len(recovered) <= 4, recovered
                assert sum(int(m.split(": ", 1)[1].split(" ")[0]) for m in recovered) == 30
                assert "record missing" in recovered[0], recovered[0]
                said = lines("found missing")
                assert said and sum(int(m.split(": ", 1)[1].split(" ")[0]) for m in said) == 30
        finally:
            await q.close()
            await client.aclose()


async def test_a_worker_on_a_full_redis_says_so_though_its_claims_go_on(
    prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Its heartbeat was refused in silence ("the claims report it"), but on a full Redis
    # claims go on: the worker said nothing while listings showed no live worker.
    with RedisServer() as srv:
        client = aioredis.from_url(srv.url)
        q = JobQueue("quiet", redis=srv.url, prefix=prefix)
        q.process("n", lambda job: "ok")
        try:
            await q.add_job("n", {})
            await _fill(client)
            with caplog.at_level(logging.ERROR, logger="kitium_queue"):
                await q.start()

                async def done() -> bool:
                    return (await q.get_stats()).completed == 1

                await wait_until(done, 10)  # its claims and outcomes go on
                said = [r.getMessage() for r in caplog.records]
                assert any("out of memory" in m for m in said), said
            await client.config_set("maxmemory", 0)
        finally:
            await q.close()
            await client.aclose()


async def _fill(client: Any) -> None:
    """Fill the server (values of 100 kB, one command each), then put maxmemory under
    what it uses: every write that needs memory is refused (OOM)."""
    for i in range(20):
        await client.set(f"filler:{i}", b"x" * 100_000)
    used = int((await client.info("memory"))["used_memory"])
    await client.config_set("maxmemory", used - 500_000)


def test_the_orphans_listing_says_how_many_it_left_out(
    redis_url: str, prefix: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It listed the first 100 of 260 orphans as if they were all.
    from click.testing import CliRunner

    from helpers import app_module
    from kitium_queue import orphans
    from kitium_queue.cli import main

    monkeypatch.setattr(orphans, "LISTED", 3)
    source = (
        "from kitium_queue import JobQueue\n"
        f"queue = JobQueue('lost', redis={redis_url!r}, prefix={prefix!r})\n"
    )

    async def setup() -> None:
        q = JobQueue("lost", redis=redis_url, prefix=prefix)
        for _ in range(5):
            await q.add_job("work", {})
        await (await q.client()).delete(q.keys.wait)
        await q.close()

    asyncio.run(setup())
    with app_module(tmp_path, source) as module:
        got = CliRunner().invoke(main, ["--plain", "jobs", "orphans", f"{module}:queue"])
    assert got.exit_code == 0, got.output
    assert got.output.count("orphan\t") == 3, got.output
    assert "more\t2 orphans not listed" in got.output, got.output


def test_health_probes_on_a_full_redis_say_what_their_exit_codes_say(
    prefix: str, tmp_path: Any
) -> None:
    # The help listed exit 4 for "refuses writes" with no probe: liveness exits 0 then,
    # while --json's "healthy" (health_check's own) is false.
    import json

    from click.testing import CliRunner

    from kitium_queue.cli import main

    help_text = CliRunner().invoke(main, ["health", "--help"]).output
    assert "4  readiness only" in help_text and "even while it refuses writes" in help_text
    with _full_app(prefix, tmp_path, "probe") as app:
        live = CliRunner().invoke(main, ["health", app, "--probe", "liveness", "--json"])
        ready = CliRunner().invoke(main, ["health", app, "--probe", "readiness", "--json"])
    assert live.exit_code == 0, live.output
    doc = json.loads(live.stdout)
    assert doc["verdict"] == "healthy" and doc["healthy"] is False
    assert ready.exit_code == 4, ready.output
    assert json.loads(ready.stdout)["verdict"] == "not ready"


async def test_jobs_recovered_after_a_long_outage_are_said_in_one_line(
    redis_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    # After a refusal longer than lock_duration every job's lease lapses at once: one
    # WARNING per job was a flood (and each a job-stalled event, which stays).
    q = JobQueue("stalls", redis=redis_url, prefix=prefix)
    seen: list[str] = []
    q.on("job-stalled", lambda e: seen.append(e.job_id))
    ids = [f"s-{i}" for i in range(15)]
    try:
        with caplog.at_level(logging.WARNING, logger="kitium_queue"):
            q._observer.stalled(q.name, ids)
            await asyncio.sleep(0.1)
        lines = [r.getMessage() for r in caplog.records if "stalled" in r.getMessage()]
        assert len(lines) == 1, lines
        assert "15 job(s) stalled (lease expired)" in lines[0] and "and 5 more" in lines[0]
        assert seen == ids
    finally:
        await q.close()


def test_health_text_on_a_full_redis_says_each_thing_once(prefix: str, tmp_path: Any) -> None:
    # Two rows were named "memory" (the figure and the readiness check), and the
    # refusal was printed twice (the error row and the writes check).
    from click.testing import CliRunner

    from kitium_queue.cli import main

    with _full_app(prefix, tmp_path, "text") as app:
        got = CliRunner().invoke(main, ["--plain", "health", app])
    assert got.exit_code == 4, got.output
    names = [line.split("\t", 1)[0] for line in got.stdout.splitlines() if "\t" in line]
    assert len(names) == len(set(names)), names
    assert "memory used" in names and got.stdout.count("out of memory") == 1, got.stdout


def test_the_out_of_memory_advice_starts_with_what_holds_the_memory() -> None:
    # It said to drain the queue and keep fewer finished jobs even when other keys
    # filled Redis and the queue held a few jobs.
    from kitium_queue.serverinfo import write_refused

    err = write_refused("OOM command not allowed when used memory > 'maxmemory'.")
    assert err is not None
    text = str(err)
    assert "redis-cli --bigkeys or MEMORY STATS" in text
    assert text.index("--bigkeys") < text.index("remove_on_complete")


@contextlib.contextmanager
def _full_app(prefix: str, tmp_path: Any, name: str) -> Iterator[str]:
    """APP (``module:queue``) of a queue ``name`` on a private server that is full."""
    from helpers import app_module

    with RedisServer() as srv:
        source = (
            "from kitium_queue import JobQueue\n"
            f"queue = JobQueue({name!r}, redis={srv.url!r}, prefix={prefix!r})\n"
        )

        async def fill() -> None:
            client = aioredis.from_url(srv.url)
            await _fill(client)
            await client.aclose()

        asyncio.run(fill())
        with app_module(tmp_path, source) as module:
            yield f"{module}:queue"
