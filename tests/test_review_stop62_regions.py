"""Multi-region from a new user's side, on private ``redis-server`` processes (free
ports, and 24810-24832 for single tests): ``regions status`` reads and writes nothing,
and exits 1 when no primary serves; ``regions resubmit`` without a manager running;
unknown stranded ids; the last outcomes of a close reach the secondaries; other
commands given a GlobalQueueManager; no unretrieved task errors in sync mode; the
warning of a first primary elected elsewhere than configured."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner, Result

from _redis import RedisServer
from helpers import app_module
from kitium_queue import JobQueue
from kitium_queue.cli import main
from kitium_queue.features.regions import GlobalQueueManager
from kitium_queue.features.regions.stranded import collect
from regionpair import EU, US, region_pair

pytestmark = pytest.mark.redis_only

NAMES = ("us-east-1", "eu-west-1", "ap-southeast-1")
#: The three servers every CLI test shares (each test its own queue name).
PORTS = {"close": 24810, "sync": 24820, "gone": 24830}
#: The failover timeout of the CLI tests: a lease of 600 ms.
TIMEOUT_MS = 1200


@pytest.fixture(scope="module")
def trio() -> Iterator[list[RedisServer]]:
    # Free ports: with --dist worksteal each pytest process may start this fixture.
    servers = [RedisServer().start() for _ in range(3)]
    try:
        yield servers
    finally:
        for s in servers:
            s.close()


def config(urls: list[str], name: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "regions": [
            {"region": n, "redis": u, "is_primary": i == 0, "priority": i or 9}
            for i, (n, u) in enumerate(zip(NAMES, urls, strict=False))
        ],
        "replication": {"enabled": True},
        "failover": {"enabled": True, "timeout_ms": TIMEOUT_MS},
        **extra,
    }


App = Callable[[str], tuple[str, str]]


@pytest.fixture
def apps(tmp_path: Path, trio: list[RedisServer]) -> Iterator[App]:
    """``make(name)``: module:attribute of a GlobalQueueManager of queue ``name`` over the
    three servers, and of a JobQueue of the same name at the second region's server."""
    with ExitStack() as stack:

        def make(name: str) -> tuple[str, str]:
            cfg = config([s.url for s in trio], name)
            source = (
                "from kitium_queue import JobQueue\n"
                "from kitium_queue.features.regions import GlobalQueueManager\n"
                f"regions = GlobalQueueManager({cfg!r})\n"
                f"copy = JobQueue({name!r}, redis={trio[1].url!r})\n"
            )
            module = stack.enter_context(app_module(tmp_path, source, "kq_rg62"))
            return f"{module}:regions", f"{module}:copy"

        yield make


def fresh() -> str:
    return f"rg62-{uuid.uuid4().hex[:8]}"


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def keys(servers: list[RedisServer], name: str) -> dict[int, dict[bytes, Any]]:
    """Every key of queue ``name`` on each server, with the content of its hashes."""
    out: dict[int, dict[bytes, Any]] = {}
    for i, s in enumerate(servers):
        with redis.Redis.from_url(s.url) as c:
            found: dict[bytes, Any] = {}
            for k in c.scan_iter(match=f"*{name}*"):
                found[k] = c.hgetall(k) if c.type(k) == b"hash" else c.type(k)
            out[i] = found
    return out


async def bootstrap(servers: list[RedisServer], name: str) -> None:
    """The queue's first primary elected (by a manager without the background loop)."""
    m = GlobalQueueManager()
    await m.initialize({**config([s.url for s in servers], name), "background": False})
    await m.close()


def lease_ended() -> None:
    time.sleep(TIMEOUT_MS / 2 / 1000 + 0.3)


# ---------------------------------------------------------------------- regions status
def test_status_of_a_queue_never_used_writes_nothing_and_exits_1(
    apps: App, trio: list[RedisServer]
) -> None:
    name = fresh()
    app, copy = apps(name)
    got = cli("regions", "status", app)
    assert got.exit_code == 1, got.output
    assert "no region holds a record of queue" in got.output
    assert "serving" not in got.output
    assert keys(trio, name) == {0: {}, 1: {}, 2: {}}
    assert cli("regions", "status", app, "--json").exit_code == 1
    assert keys(trio, name) == {0: {}, 1: {}, 2: {}}
    # A JobQueue APP that is no copy of a global queue: not a probe's success either.
    one = cli("regions", "status", copy)
    assert one.exit_code == 1 and "no region record" in one.output
    assert keys(trio, name) == {0: {}, 1: {}, 2: {}}


def test_status_is_a_probe_and_takes_no_part_in_leases_or_epochs(
    apps: App, trio: list[RedisServer]
) -> None:
    name = fresh()
    app, copy = apps(name)
    asyncio.run(bootstrap(trio, name))
    # The primary's lease still runs: it serves.
    ok = cli("regions", "status", app)
    assert ok.exit_code == 0, ok.output
    assert "serving\tTrue" in ok.output
    assert cli("regions", "status", copy).exit_code == 0
    # A region that missed an election (its record knows an older epoch).
    with redis.Redis.from_url(trio[2].url) as c:
        c.hset(JobQueue(name).keys.extra("rg"), "epoch", "0")
    lease_ended()  # no manager runs: nobody renews the lease
    before = keys(trio, name)
    down = cli("regions", "status", app)
    assert down.exit_code == 1, down.output
    assert "serving\tFalse" in down.output
    assert cli("regions", "status", app, "--json").exit_code == 1
    # Nothing written: no lease renewed, no epoch told to the region behind.
    assert keys(trio, name) == before


# ---------------------------------------------------------------------- stranded work
async def strand(servers: list[RedisServer], name: str) -> str:
    """A job the primary never replicated, recorded as stranded in eu's copy."""
    m = GlobalQueueManager()
    await m.initialize({**config([s.url for s in servers], name), "background": False})
    try:
        jid = await m.add_job("n", {"k": 1})
        found = await collect(m.region(NAMES[1]), m.region(NAMES[0]), 1)
        assert [s.id for s in found] == [jid]
        return jid
    finally:
        await m.close()


def test_resubmit_without_a_manager_running_and_unknown_ids(
    apps: App, trio: list[RedisServer]
) -> None:
    name = fresh()
    app, _ = apps(name)
    jid = asyncio.run(strand(trio, name))
    lease_ended()
    done = cli("regions", "resubmit", app, jid)
    assert done.exit_code == 0, done.output
    assert done.output == f"{jid}\texists\n"
    assert cli("regions", "stranded", app, "--json").output.strip() == "[]"

    for command in ("resubmit", "discard"):
        got = cli("regions", command, app, "no-such-id")
        assert got.exit_code == 1, (command, got.output)
        assert "'no-such-id' is not a stranded job" in got.output, command


# ---------------------------------------------------------------------- other commands
@pytest.mark.parametrize("command", ["health", "stats", "worker"])
def test_commands_of_one_queue_given_a_global_queue_manager_say_what_to_use(
    apps: App, command: str
) -> None:
    app, _ = apps(fresh())
    got = cli(command, app)
    assert got.exit_code == 2, got.output
    text = " ".join(got.output.split())
    assert "not initialized" not in text
    assert "takes a JobQueue" in text and "regions status" in text


# ---------------------------------------------------------------------- close
async def test_the_outcomes_written_while_a_close_stops_the_workers_are_replicated() -> None:
    async with region_pair(PORTS["close"], "flush", 5000) as (m, servers):

        @m.process("w")
        async def w(job: Any) -> int:
            await asyncio.sleep(0.4)
            return 1

        ids = [await m.add_job("w", {"n": i}) for i in range(8)]
        await m.start(concurrency=4)
        await asyncio.sleep(0.2)  # four jobs run: they end while the workers stop
        await m.close()
        states: dict[str, dict[str, str | None]] = {}
        for region, s in zip((US, EU), servers, strict=True):
            q = JobQueue("flush", redis=s.url)
            try:
                got = [await q.get_job_status(j) for j in ids]
            finally:
                await q.close()
            states[region] = {
                j: (None if g is None else g.status.value) for j, g in zip(ids, got, strict=True)
            }
        assert list(states[US].values()).count("completed") >= 4
        assert states[EU] == states[US]


# ---------------------------------------------------------------------- sync mode
async def test_sync_mode_leaves_no_task_exception_unretrieved_when_a_secondary_dies(
    caplog: pytest.LogCaptureFixture,
) -> None:
    servers = [RedisServer(port=PORTS["sync"] + i).start() for i in range(3)]
    m = GlobalQueueManager()
    try:
        cfg = config([s.url for s in servers], "acks")
        cfg["replication"] = {"enabled": True, "mode": "sync", "min_acks": 1}
        cfg["failover"] = {"enabled": True, "timeout_ms": 20_000}
        await m.initialize(cfg)
        await m.add_job("n", {"k": 0})
        servers[2].kill()
        with caplog.at_level(logging.DEBUG):
            for i in range(20):
                await m.add_job("n", {"k": i})
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)
            gc.collect()
            await asyncio.sleep(0.05)
        unread = [r for r in caplog.records if "never retrieved" in r.getMessage()]
        assert unread == []
    finally:
        await m.close()
        for s in servers:
            s.close()


# ---------------------------------------------------------------------- warnings
async def test_a_first_primary_elected_elsewhere_is_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    servers = [RedisServer(port=PORTS["gone"] + 1 + i).start() for i in range(2)]
    gone = f"redis://127.0.0.1:{PORTS['gone']}"  # nothing listens there
    m = GlobalQueueManager()
    try:
        cfg = {**config([gone, *(s.url for s in servers)], "elsewhere"), "background": False}
        with caplog.at_level(logging.INFO, logger="kitium_queue.features.regions"):
            await m.initialize(cfg)
        assert m.primary == NAMES[1]
        warned = [
            r.getMessage()
            for r in caplog.records
            if r.levelno == logging.WARNING and NAMES[0] in r.getMessage()
        ]
        assert any("unreachable" in w and NAMES[1] in w for w in warned), warned
    finally:
        await m.close()
        for s in servers:
            s.close()
