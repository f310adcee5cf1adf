"""``kitium-queue workers APP`` against a real Redis, and the index of live workers that
``presence.live_workers`` keeps clean.

The CLI lists two running workers (text and ``--json``), one whose stop has begun as
``stopping``, says so in one line when no worker is alive, escapes ids, hosts and job
names written by another client, reads every partition of a partitioned APP and names a
damaged index. ``live_workers`` drops the index entries whose record is gone (as its TTL
leaves them when a worker is killed), a bounded number per call and never one whose
worker announced itself again, and still answers for a user that may not write.

The CLI runs in a thread (``asyncio.to_thread``): the workers run in the test's loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from click.testing import CliRunner, Result

from helpers import app_module, user_without, wait_until
from kitium_queue import JobQueue
from kitium_queue.cli import main
from kitium_queue.cli.base import text_field
from kitium_queue.features.groups import FIFOQueueManager
from kitium_queue.features.partitioned import PartitionedQueue
from kitium_queue.presence import PRUNE_MAX, live_workers

pytestmark = pytest.mark.redis_only

COLUMNS = [
    "queue",
    "id",
    "host",
    "pid",
    "concurrency",
    "running",
    "processed",
    "processors",
    "started",
    "heartbeat",
    "state",
    "features",
    "loop blocked",
]
# Written by another client: a terminal escape, a bidi override, a newline, a tab.
EVIL_ID = "w\x1b[31m\u202e\n\tid"
EVIL_HOST = "host\x1b]0;pwn\x07\r"
EVIL_NAME = "name\x1b[2J\nforged\trow"


@pytest.fixture
def app(tmp_path: Path, redis_url: str, prefix: str) -> Iterator[str]:
    """Module with ``queue`` (queue 'cw') and ``parts`` (a factory of a partitioned
    queue 'cwp' of two)."""
    source = (
        "from kitium_queue import JobQueue\n"
        "from kitium_queue.features.partitioned import PartitionedQueue\n"
        f"queue = JobQueue('cw', redis={redis_url!r}, prefix={prefix!r})\n"
        "def parts():\n"
        f"    return PartitionedQueue('cwp', partitions=2, redis={redis_url!r}, "
        f"prefix={prefix!r})\n"
    )
    with app_module(tmp_path, source, "kq_cli_workers") as module:
        yield module


@pytest.fixture
async def queues(redis_url: str, prefix: str) -> AsyncIterator[list[Any]]:
    """Queues made by the test, closed (their workers stopped) after it."""
    made: list[Any] = []
    yield made
    for q in made:
        await q.close()


async def _cli(*args: str, code: int = 0) -> Result:
    result = await asyncio.to_thread(CliRunner().invoke, main, list(args))
    assert result.exit_code == code, (result.output, result.stderr)
    return result


def _rows(result: Result) -> list[list[str]]:
    lines = result.stdout.splitlines()
    assert lines[0].split("\t") == COLUMNS, lines[:1]
    rows = [line.split("\t") for line in lines[1:]]
    assert all(len(r) == len(COLUMNS) for r in rows), rows
    return rows


async def _record(client: Any, q: JobQueue, wid: str, ttl_ms: int = 30_000, **more: Any) -> None:
    """A presence record for ``wid`` and its index entry, as a worker writes them."""
    now = int(time.time() * 1000)
    fields = {"host": "h", "pid": 7, "conc": 2, "run": 0, "done": 0, "start": now,
              "seen": now, "names": '["n"]', "feat": "[]", "stop": "0", **more}  # fmt: skip
    await client.hset(q.keys.worker(wid), mapping=fields)
    await client.pexpire(q.keys.worker(wid), ttl_ms)
    await client.zadd(q.keys.workers, {wid: now})


# ---------------------------------------------------------------------- the command
async def test_two_running_workers_in_json_and_text(
    app: str, queues: list[Any], redis_url: str, prefix: str
) -> None:
    a = JobQueue("cw", redis=redis_url, prefix=prefix)
    b = JobQueue("cw", redis=redis_url, prefix=prefix)
    queues += [a, b]
    FIFOQueueManager(a)
    a.process("report", lambda job: "r")
    a.process("send", lambda job: "s")
    b.process("send", lambda job: "s")
    await a.start(concurrency=3)
    await b.start(concurrency=5)
    assert a.worker is not None and b.worker is not None
    ids = sorted([a.worker.id, b.worker.id])

    listed = json.loads((await _cli("workers", f"{app}:queue", "--json")).stdout)
    assert [w["id"] for w in listed] == ids  # sorted by id
    by_id = {w["id"]: w for w in listed}
    wa, wb = by_id[a.worker.id], by_id[b.worker.id]
    for w in (wa, wb):
        assert w["queue"] == "cw" and w["pid"] == os.getpid() and w["host"]
        assert w["stopping"] is False and w["features_known"] is True
        assert w["running"] == 0 and w["started_at"] <= w["seen_at"]
    assert (wa["concurrency"], wa["processors"]) == (3, ["report", "send"])
    assert (wb["concurrency"], wb["processors"]) == (5, ["send"])
    assert wa["features"] and not wb["features"]  # the groups feature's end step
    assert "message_group_id" in wa["options"]

    rows = _rows(await _cli("workers", f"{app}:queue"))
    assert [r[1] for r in rows] == ids
    shown = {r[1]: r for r in rows}
    ra, rb = shown[a.worker.id], shown[b.worker.id]
    assert ra[0] == "cw" and ra[3] == str(os.getpid())
    assert (ra[4], ra[7], ra[10]) == ("3", "report,send", "running")
    assert (rb[4], rb[7], rb[10], rb[11]) == ("5", "send", "running", "-")
    assert ra[11] == ",".join(wa["features"])
    assert ra[8].endswith(" ago") and ra[9].endswith(" ago")

    # rich: the same escaped values, a table per queue without the queue column.
    result = await asyncio.to_thread(
        CliRunner().invoke, main, ["--rich", "workers", f"{app}:queue"], env={"COLUMNS": "300"}
    )
    assert result.exit_code == 0, result.output
    assert "live workers of queue cw" in result.stdout
    assert a.worker.id in result.stdout and "report,send" in result.stdout


async def test_a_worker_whose_stop_began_is_shown_stopping(
    app: str, queues: list[Any], redis_url: str, prefix: str
) -> None:
    q = JobQueue("cw", redis=redis_url, prefix=prefix)
    queues.append(q)
    release, started = asyncio.Event(), asyncio.Event()

    async def slow(job: Any) -> str:
        started.set()
        await release.wait()
        return "done"

    q.process("slow", slow)
    await q.start(concurrency=2)
    assert q.worker is not None
    worker = q.worker
    await q.add_job("slow", {})
    await asyncio.wait_for(started.wait(), 10)
    stopping = asyncio.create_task(worker.stop(timeout_ms=30_000))
    try:

        async def announced() -> bool:
            return [w.stopping for w in await live_workers(q)] == [True]

        await wait_until(announced, 10)
        (w,) = json.loads((await _cli("workers", f"{app}:queue", "--json")).stdout)
        assert w["id"] == worker.id and w["stopping"] is True and w["running"] == 1
        (row,) = _rows(await _cli("workers", f"{app}:queue"))
        assert (row[1], row[5], row[10]) == (worker.id, "1", "stopping")
    finally:
        release.set()
        await asyncio.wait_for(stopping, 30)
    # Stopped: its record is deleted, nothing is listed.
    assert (await _cli("workers", f"{app}:queue")).stdout == "no live workers in queue 'cw'\n"


async def test_no_live_workers_is_one_clear_line(app: str) -> None:
    result = await _cli("workers", f"{app}:queue")
    assert result.stdout == "no live workers in queue 'cw'\n"
    assert json.loads((await _cli("workers", f"{app}:queue", "--json")).stdout) == []
    rich = await _cli("--rich", "workers", f"{app}:queue")
    assert rich.stdout == "no live workers in queue 'cw'\n"


async def test_hostile_ids_hosts_and_names_are_escaped(
    app: str, redis_client: aioredis.Redis, redis_url: str, prefix: str
) -> None:
    q = JobQueue("cw", redis=redis_url, prefix=prefix)
    names = json.dumps([EVIL_NAME, "ok"])
    await _record(
        redis_client, q, EVIL_ID, host=EVIL_HOST, names=names, feat=json.dumps([EVIL_NAME])
    )
    await _record(redis_client, q, "plain", stop="1")
    # A record overwritten with another type by hand is left out, not fatal.
    await redis_client.zadd(q.keys.workers, {"typed": int(time.time() * 1000)})
    await redis_client.set(q.keys.worker("typed"), "not a hash", px=30_000)

    result = await _cli("workers", f"{app}:queue")
    for raw in ("\x1b", "\u202e", "\r", "\x07"):
        assert raw not in result.stdout, repr(raw)
    rows = _rows(result)  # no forged line or column
    assert len(rows) == 2
    evil = next(r for r in rows if r[1] != "plain")
    assert evil[1] == text_field(EVIL_ID) and evil[2] == text_field(EVIL_HOST)
    assert evil[7] == text_field(f"{EVIL_NAME},ok") and evil[11] == text_field(EVIL_NAME)
    plain = next(r for r in rows if r[1] == "plain")
    assert plain[10] == "stopping"

    rich = await asyncio.to_thread(
        CliRunner().invoke, main, ["--rich", "workers", f"{app}:queue"], env={"COLUMNS": "300"}
    )
    assert rich.exit_code == 0, rich.output
    for raw in ("\x1b", "\u202e", "\r", "\x07"):
        assert raw not in rich.stdout, repr(raw)
    assert text_field(EVIL_ID) in rich.stdout

    listed = json.loads((await _cli("workers", f"{app}:queue", "--json")).stdout)
    assert sorted(w["id"] for w in listed) == sorted([EVIL_ID, "plain"])  # JSON: as written
    (got,) = [w for w in listed if w["id"] == EVIL_ID]
    assert got["host"] == EVIL_HOST and got["processors"] == [EVIL_NAME, "ok"]
    await q.close()


async def test_a_partitioned_app_is_read_queue_by_queue(
    app: str, queues: list[Any], redis_url: str, prefix: str
) -> None:
    p = PartitionedQueue("cwp", partitions=2, redis=redis_url, prefix=prefix)
    queues.append(p)
    p.process("n", lambda job: None)
    await p.start()
    names = [m.name for m in p.queues]
    listed = json.loads((await _cli("workers", f"{app}:parts", "--json")).stdout)
    assert sorted({w["queue"] for w in listed}) == sorted(names)
    assert all(w["processors"] == ["n"] for w in listed)
    rows = _rows(await _cli("workers", f"{app}:parts"))
    assert sorted({r[0] for r in rows}) == sorted(names)


async def test_a_damaged_index_is_named(
    app: str, redis_client: aioredis.Redis, redis_url: str, prefix: str
) -> None:
    q = JobQueue("cw", redis=redis_url, prefix=prefix)
    await redis_client.set(q.keys.workers, "by hand")
    result = await _cli("workers", f"{app}:queue", code=1)
    assert q.keys.workers in result.stderr and "holds a string" in result.stderr
    assert "Traceback" not in result.output
    await q.close()


# ---------------------------------------------------------------------- the index
async def test_live_workers_drops_the_entries_of_gone_records(
    redis_client: aioredis.Redis, redis_url: str, prefix: str
) -> None:
    """A worker killed with SIGKILL leaves its index entry when its record's TTL ends;
    before, only the writers dropped it, an hour later, and every ``live_workers`` call
    read its record again until then."""
    q = JobQueue("cw", redis=redis_url, prefix=prefix)
    try:
        await _record(redis_client, q, "alive")
        await _record(redis_client, q, "killed")
        await redis_client.delete(q.keys.worker("killed"))  # as its TTL would
        assert await redis_client.zscore(q.keys.workers, "killed") is not None
        assert [w.id for w in await live_workers(q)] == ["alive"]
        assert await redis_client.zscore(q.keys.workers, "killed") is None
        assert await redis_client.zscore(q.keys.workers, "alive") is not None

        # Bounded per call: PRUNE_MAX entries a call, the rest at the next.
        dead = [f"dead-{i}" for i in range(PRUNE_MAX + 5)]
        await redis_client.zadd(q.keys.workers, dict.fromkeys(dead, 1))
        assert [w.id for w in await live_workers(q)] == ["alive"]
        assert await redis_client.zcard(q.keys.workers) == 1 + 5
        await live_workers(q)
        assert await redis_client.zrange(q.keys.workers, 0, -1) == [b"alive"]
    finally:
        await q.close()


async def test_an_entry_whose_worker_announced_itself_again_is_kept(
    redis_client: aioredis.Redis, redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The drop checks each record again in the step that removes the entry: a worker
    whose record came back between the read and the drop keeps its entry."""
    from kitium_queue import presence

    q = JobQueue("cw", redis=redis_url, prefix=prefix)
    try:
        await redis_client.zadd(q.keys.workers, {"back": 1})
        drop = presence._prune

        async def comes_back_first(client: Any, keys: Any, ids: list[Any]) -> None:
            await _record(redis_client, q, "back")  # its heartbeat, after the read
            await drop(client, keys, ids)

        monkeypatch.setattr(presence, "_prune", comes_back_first)
        assert await live_workers(q) == []  # read before it came back
        assert await redis_client.zscore(q.keys.workers, "back") is not None
        monkeypatch.undo()
        assert [w.id for w in await live_workers(q)] == ["back"]
    finally:
        await q.close()


@pytest.mark.parametrize("refused", ["zrem", "@scripting", "@write"])
async def test_a_user_that_may_not_write_still_reads(
    app: str,
    tmp_path: Path,
    redis_client: aioredis.Redis,
    redis_url: str,
    redis_server: Any,
    prefix: str,
    refused: str,
) -> None:
    """A read-only user (no ZREM, no scripts, no writes at all) reads the live workers
    (the dashboard, explain, the CLI) as before: the entries of gone records stay for a
    writer to drop, and the refused drop is not tried again at every call."""
    port = redis_server.port
    user = f"ro-{uuid.uuid4().hex[:8]}"
    url = await user_without(redis_url, port, user, refused)
    q = JobQueue("cw", redis=url, prefix=prefix)
    try:
        await _record(redis_client, q, "alive")
        await redis_client.zadd(q.keys.workers, {"killed": 1})
        await redis_client.acl_log_reset()
        for _ in range(3):
            assert [w.id for w in await live_workers(q)] == ["alive"]
        assert await redis_client.zscore(q.keys.workers, "killed") is not None
        # The drop's refusal (EVAL, or ZREM in the script), not the connection's own.
        log = await redis_client.acl_log()
        mine = [e for e in log if e["username"] == user and e["object"] in ("eval", "zrem")]
        assert sum(int(e["count"]) for e in mine) == 1, mine  # tried once, not per call

        source = (
            "from kitium_queue import JobQueue\n"
            f"queue = JobQueue('cw', redis={url!r}, prefix={prefix!r})\n"
        )
        with app_module(tmp_path, source, "kq_cli_workers_ro") as module:
            (w,) = json.loads((await _cli("workers", f"{module}:queue", "--json")).stdout)
        assert w["id"] == "alive"
    finally:
        await q.close()
        await redis_client.acl_deluser(user)


async def test_a_server_that_holds_writes_does_not_hold_the_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``CLIENT PAUSE ... WRITE`` (as during a failover) holds the drop, a script that
    writes: the read answers once ``PRUNE_WAIT_S`` is over, and the next call after the
    pause drops the entry. A server of its own: pausing the shared one would hold the
    other tests."""
    from _redis import RedisServer
    from kitium_queue import presence

    monkeypatch.setattr(presence, "PRUNE_WAIT_S", 0.2)
    with RedisServer() as srv:
        admin = aioredis.from_url(srv.url)
        q = JobQueue("cw", redis=srv.url, prefix="kqw")
        try:
            await _record(admin, q, "alive")
            await admin.zadd(q.keys.workers, {"killed": 1})
            await admin.client_pause(10_000, all=False)  # WRITE: reads go on
            try:
                got = await asyncio.wait_for(live_workers(q), 5)
                assert [w.id for w in got] == ["alive"]
            finally:
                await admin.client_unpause()
            # The drop held by the pause may still run once it ends (its connection is
            # closed after the timeout, on Python 3.12+ a moment later): either way the
            # next call leaves only the live worker listed.
            assert [w.id for w in await live_workers(q)] == ["alive"]
            assert await admin.zrange(q.keys.workers, 0, -1) == [b"alive"]
        finally:
            await q.close()
            await admin.aclose()
