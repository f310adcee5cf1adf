"""A server that answers late or drops a connection on its own: the event stream's
follower after a server-side close (``CLIENT KILL``) or an outage, ``health_check`` and
``kitium-queue health`` during ``CLIENT PAUSE``, opening a connection to a paused
server, and a reply cut off by ``client-output-buffer-limit``.

Each test runs its own ``redis-server`` (pausing or killing clients of the shared one
would disturb other tests); pauses are a few seconds, with the library's deadlines
shortened to fit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis

from _redis import RedisServer
from helpers import health_cli, wait_until
from kitium_queue import ConnectionUnavailableError, JobQueue, SyncJobQueue
from kitium_queue.cli.base import EXIT_ERROR, EXIT_NOT_READY, EXIT_UNREACHABLE
from kitium_queue.connerrors import ReplyCutOffError
from kitium_queue.eventfeed import GAP_EVENT
from kitium_queue.events import StreamEvent
from kitium_queue.pools import HandshakeTimeoutError

pytestmark = pytest.mark.redis_only

SRC = Path(__file__).resolve().parents[1] / "src"
#: How long the tests pause the server's clients (ms); the library's deadlines are
#: shortened to ``DEADLINE_S`` so that each runs out while the pause lasts.
PAUSE_MS = 3000
DEADLINE_S = 1.0


@pytest.fixture
def short_deadlines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("kitium_queue.queries.CONNECT_TIMEOUT_S", DEADLINE_S)


def _paused_out(admin: redis.Redis) -> None:
    """Wait until the pause the test set has ended (a paused server also holds CLIENT
    UNPAUSE): a write, which writes nothing, is held until then."""
    admin.set("pause-over", "", xx=True)


@pytest.fixture
def server() -> Iterator[RedisServer]:
    srv = RedisServer().start()
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture
def admin(server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis(port=server.port, decode_responses=True)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
async def queue(server: RedisServer) -> AsyncIterator[JobQueue]:
    q = JobQueue("pauses", redis=server.url)
    try:
        yield q
    finally:
        await q.close()


def _kill_blocked(admin: redis.Redis) -> int:
    """Close, from the server's side, every connection blocked in a command (the
    follower's ``XREAD BLOCK``); the number closed."""
    ids = [c["id"] for c in admin.client_list() if c.get("cmd") in ("xread", "xread|block")]
    for cid in ids:
        admin.client_kill_filter(_id=cid)
    return len(ids)


async def _follow(q: JobQueue, got: list[StreamEvent]) -> None:
    async for ev in q.events(last_id="$", block_ms=200):
        got.append(ev)


# ----------------------------------------------------------------- events() follows
async def test_events_follow_a_connection_the_server_closed(
    queue: JobQueue, admin: redis.Redis
) -> None:
    got: list[StreamEvent] = []
    follower = asyncio.create_task(_follow(queue, got))
    try:
        await queue.add_job("t", {"i": 0})
        await wait_until(lambda: len(got) == 1, timeout=10)
        # Killed while blocked in XREAD: the follower reconnects and reads on.
        await wait_until(lambda: _kill_blocked(admin) > 0, timeout=10)
        ids = [await queue.add_job("t", {"i": i}) for i in (1, 2)]
        await wait_until(lambda: len(got) == 3, timeout=10)
        # Killed again with events added meanwhile: none lost, none repeated.
        await wait_until(lambda: _kill_blocked(admin) > 0, timeout=10)
        ids += [await queue.add_job("t", {"i": i}) for i in (3, 4)]
        await wait_until(lambda: len(got) == 5, timeout=10)
        await asyncio.sleep(0.3)
        assert not follower.done()
        assert [e.job_id for e in got][1:] == ids
        assert len({e.id for e in got}) == 5
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower


async def test_events_follow_redis_down_and_back(server: RedisServer, queue: JobQueue) -> None:
    got: list[StreamEvent] = []
    follower = asyncio.create_task(_follow(queue, got))
    try:
        first = await queue.add_job("t", {})
        await wait_until(lambda: len(got) == 1, timeout=10)
        server.kill()
        await asyncio.sleep(1.5)  # reconnection attempts fail meanwhile
        assert not follower.done()
        server.restart()
        second = await queue.add_job("t", {})
        await wait_until(lambda: len(got) == 3, timeout=15)
        # A server restarted without persistence lost the stream: a gap is told first.
        assert [(e.event, e.job_id) for e in got] == [
            ("job-added", first),
            (GAP_EVENT, ""),
            ("job-added", second),
        ]
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower


async def test_events_without_follow_still_raise_on_a_lost_connection(
    queue: JobQueue, admin: redis.Redis
) -> None:
    await queue.add_job("t", {})

    async def read() -> None:
        async for _ in queue.events(last_id="$", block_ms=10_000, follow=False):
            pass

    reader = asyncio.create_task(read())
    await wait_until(lambda: _kill_blocked(admin) > 0, timeout=10)
    with pytest.raises(ConnectionUnavailableError, match="Connection closed by server"):
        await asyncio.wait_for(reader, 10)


def _cli(
    tmp_path: Path, url: str, *args: str, give_up_s: float | None = None
) -> subprocess.Popen[str]:
    """``kitium-queue <args>`` in a process of its own, on a queue ``pauses`` at ``url``
    (APP ``kq_pauses_app:queue``); ``give_up_s`` shortens the bound after which
    ``events`` gives up on an unreachable Redis (10 s)."""
    (tmp_path / "kq_pauses_app.py").write_text(
        f"from kitium_queue import JobQueue\nqueue = JobQueue('pauses', redis={url!r})\n"
    )
    command = ["-m", "kitium_queue.cli"]
    if give_up_s is not None:
        command = [
            "-c",
            "import kitium_queue.cli.queue as q\n"
            f"q.EVENTS_GIVE_UP_S = {give_up_s!r}\n"
            "from kitium_queue.cli import main\n"
            "main()\n",
        ]
    return subprocess.Popen(
        [sys.executable, *command, *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(tmp_path)])},
    )  # fmt: skip


async def test_cli_events_follow_a_connection_the_server_closed(
    tmp_path: Path, server: RedisServer, queue: JobQueue, admin: redis.Redis
) -> None:
    proc = _cli(tmp_path, server.url, "events", "kq_pauses_app:queue", "--json")
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
    reader.start()
    try:
        await wait_until(lambda: _kill_blocked(admin) > 0, timeout=15)
        first = await queue.add_job("t", {})
        await wait_until(lambda: len(lines) == 1, timeout=10)
        await wait_until(lambda: _kill_blocked(admin) > 0, timeout=10)
        second = await queue.add_job("t", {})
        await wait_until(lambda: len(lines) == 2, timeout=10)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert [json.loads(line)["job_id"] for line in lines] == [first, second]
    finally:
        proc.kill()
        proc.communicate()


async def test_cli_events_gives_up_once_redis_stays_down(
    tmp_path: Path, server: RedisServer, admin: redis.Redis
) -> None:
    """A script tailing the stream learns of an outage: one line, exit 3, once Redis
    has stayed unreachable for the CLI's bound (10 s; 2 s here)."""
    proc = _cli(tmp_path, server.url, "events", "kq_pauses_app:queue", give_up_s=2.0)
    await wait_until(lambda: any(c.get("cmd") == "xread" for c in admin.client_list()), 15)
    server.kill()
    _, err = await asyncio.to_thread(proc.communicate, timeout=40)
    assert proc.returncode == EXIT_UNREACHABLE, err
    assert err.count("\n") == 1 and err.startswith("Error: cannot reach Redis"), err
    assert "tried to reconnect for" in err, err


# ----------------------------------------------------------------- health under CLIENT PAUSE
@pytest.mark.usefixtures("short_deadlines")
async def test_health_check_reports_a_server_that_holds_writes(
    tmp_path: Path, server: RedisServer, queue: JobQueue, admin: redis.Redis
) -> None:
    await queue.add_job("t", {})  # connected: the PING is all that stands before the probe
    admin.execute_command("CLIENT", "PAUSE", PAUSE_MS, "WRITE")
    try:
        h = await queue.health_check()
        assert not h.healthy and h.redis_latency_ms is not None, h
        assert h.error is not None and h.error.startswith("WriteRefusedError: "), h.error
        assert "took no write within 1 s" in h.error and "CLIENT PAUSE" in h.error, h.error
        assert "To go on:" in h.error
        # The CLI: not ready (Redis answers, a check failed), its readiness reads skipped.
        code, report = await health_cli(tmp_path, server.url, "pauses", prefix="kq")
        assert code == EXIT_NOT_READY, report
        assert report["verdict"] == "not ready", report
        assert [c["name"] for c in report["checks"]] == ["writes"], report
    finally:
        _paused_out(admin)
    assert await queue.health_check()


@pytest.mark.usefixtures("short_deadlines")
async def test_health_check_of_a_silent_server_says_what_the_cli_says(
    queue: JobQueue, admin: redis.Redis
) -> None:
    await queue.add_job("t", {})
    admin.execute_command("CLIENT", "PAUSE", PAUSE_MS, "ALL")
    try:
        h = await queue.health_check()
    finally:
        _paused_out(admin)
    assert not h.healthy and h.error is not None, h
    assert h.error.startswith("ConnectionUnavailableError: "), h.error
    assert "accepted the connection but did not answer within 1 s" in h.error, h.error
    assert "CLIENT PAUSE" in h.error and "'pauses'" in h.error, h.error


# ----------------------------------------------------------------- opening a connection
async def test_a_new_connection_to_a_paused_server_fails_in_time(
    queue: JobQueue, admin: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call that must open a connection (its last one dropped, as after a reply
    deadline) while the server holds every command: bounded, the library's error."""
    monkeypatch.setattr("kitium_queue.pools.HANDSHAKE_TIMEOUT_S", DEADLINE_S)
    await queue.add_job("t", {})
    client = await queue.client()
    await client.connection_pool.disconnect()  # the kept ones too: the next call connects
    admin.execute_command("CLIENT", "PAUSE", PAUSE_MS, "ALL")
    try:
        with pytest.raises(HandshakeTimeoutError) as caught:
            await queue.add_job("t", {})
        assert isinstance(caught.value, ConnectionUnavailableError)
        assert "did not answer the commands that open it" in str(caught.value)
        assert f"within {DEADLINE_S:g} s" in str(caught.value) and "CLIENT PAUSE" in str(
            caught.value
        )
        assert "Nothing of this call reached Redis" in str(caught.value)
    finally:
        _paused_out(admin)
    assert await queue.add_job("t", {})  # the next call connects again


async def test_the_health_check_ping_of_an_idle_connection_is_bounded(
    server: RedisServer, admin: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("kitium_queue.pools.HANDSHAKE_TIMEOUT_S", DEADLINE_S)
    q = JobQueue("pauses", redis=server.url + "?health_check_interval=1")
    try:
        job_id = await q.add_job("t", {})
        assert await q.get_job_status(job_id)
        await asyncio.sleep(1.2)  # idle past health_check_interval: PING before use
        admin.execute_command("CLIENT", "PAUSE", PAUSE_MS, "ALL")
        try:
            with pytest.raises(HandshakeTimeoutError, match="did not answer the health-check PING"):
                await q.get_job_status(job_id)
        finally:
            _paused_out(admin)
        assert await q.get_job_status(job_id)
    finally:
        await q.close()


# ----------------------------------------------------------------- replies over the buffer limit
#: A modest ``client-output-buffer-limit`` for normal clients, as hardened servers set.
SMALL_BUFFERS = "normal 64kb 32kb 5"
PAD = "x" * 20_000


async def test_listings_of_large_records_fit_a_small_output_buffer_limit(
    server: RedisServer, queue: JobQueue, admin: redis.Redis
) -> None:
    ids = await queue.add_jobs([("t", {"pad": PAD, "i": i}) for i in range(45)])
    admin.config_set("client-output-buffer-limit", SMALL_BUFFERS)
    got = await queue.get_jobs_by_status("waiting", limit=100)
    assert [j.id for j in got] == ids
    page = await queue.list_jobs("waiting", limit=30)
    assert [j.id for j in page.jobs] == ids[:30] and page.next_cursor
    page = await queue.list_jobs("waiting", limit=30, cursor=page.next_cursor)
    assert [j.id for j in page.jobs] == ids[30:]
    sync = SyncJobQueue("pauses", redis=server.url)
    try:
        assert len(await asyncio.to_thread(sync.get_jobs_by_status, "waiting", 100)) == 45
    finally:
        await asyncio.to_thread(sync.close)


async def test_a_record_larger_than_the_output_buffer_limit_says_so(
    tmp_path: Path, server: RedisServer, queue: JobQueue, admin: redis.Redis
) -> None:
    big = await queue.add_job("t", {"pad": "x" * 100_000})
    admin.config_set("client-output-buffer-limit", SMALL_BUFFERS)
    for read in (
        queue.get_jobs_by_status("waiting", limit=20),
        queue.list_jobs("waiting", limit=20),
        queue.get_job_status(big),
    ):
        with pytest.raises(ReplyCutOffError) as caught:
            await read
        text = str(caught.value)
        assert "closed the connection of queue 'pauses' while sending the reply" in text
        assert "client-output-buffer-limit" in text and "--limit" in text, text
        assert f"job {big!r}" in text, text
    # The CLI (--json reads the data): the library's line, not "cannot reach Redis",
    # and not the exit code of a server that cannot be reached.
    proc = _cli(tmp_path, server.url, "jobs", "list", "kq_pauses_app:queue", "--json")
    _, err = await asyncio.to_thread(proc.communicate, timeout=30)
    assert proc.returncode == EXIT_ERROR, err
    assert "client-output-buffer-limit" in err and "cannot reach" not in err, err
    # A listing that shows no data reads none: the row is shown.
    rows = await queue.get_jobs_by_status("waiting", limit=20, include_data=False)
    assert [j.id for j in rows] == [big]
    proc = _cli(tmp_path, server.url, "jobs", "list", "kq_pauses_app:queue")
    out, err = await asyncio.to_thread(proc.communicate, timeout=30)
    assert proc.returncode == 0 and out.startswith(f"{big}\t"), (out, err)
    admin.config_set("client-output-buffer-limit", "normal 0 0 0")
    assert [j.id for j in await queue.get_jobs_by_status("waiting")] == [big]


async def test_events_follow_a_stream_whose_replies_pass_the_output_buffer_limit(
    queue: JobQueue, admin: redis.Redis
) -> None:
    """Hundreds of entries in one XREAD reply pass the limit: the follower asks for
    fewer per read after the server cut one off, and loses or repeats none."""
    await queue.add_job("t", {})  # the stream's key, named as the queue names it
    key = queue.keys.events
    admin.delete(key)
    pad = "p" * 300  # entries of another writer, larger than the queue's own
    ids = [admin.xadd(key, {"e": "job-added", "id": str(i), "pad": pad}) for i in range(300)]
    admin.config_set("client-output-buffer-limit", SMALL_BUFFERS)
    got: list[StreamEvent] = []

    async def follow() -> None:
        async for ev in queue.events(last_id="0", block_ms=200):
            got.append(ev)

    follower = asyncio.create_task(follow())
    try:
        await wait_until(lambda: len(got) >= 300, timeout=15)
        await asyncio.sleep(0.3)
        assert [e.id for e in got] == ids
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
