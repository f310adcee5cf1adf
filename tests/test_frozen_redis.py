"""A Redis that stops answering without closing its connections: a server frozen with
SIGSTOP (a paused VM or container), a proxy that reads and never answers, a reply that
stops half way. Every call gives up within its deadline with a clear error, writes
nothing half way that the error does not own up to, and works again after the thaw
without a new process; a worker's start and stop end, and a worker whose Redis freezes
mid-drain loses no job and never runs one twice at once.

Deadlines are shortened to ``DEADLINE_S`` (15 s by default: ``REPLY_DEADLINE_S`` and
``scripts.REPLY_TIMEOUT_S``); each test runs its own ``redis-server`` and always sends
SIGCONT before it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from click.testing import CliRunner

from _redis import RedisServer, frozen, thaw
from helpers import app_module, wait_until
from kitium_queue import ConnectionUnavailableError, JobQueue, SyncJobQueue
from kitium_queue.cli import EXIT_UNREACHABLE, main
from kitium_queue.connerrors import ReplyTimeoutError, held_for

pytestmark = pytest.mark.redis_only

DEADLINE_S = 1.0
#: Longer than any bound under test: a call still waiting then waits for ever.
HUNG_S = 20.0
PASSWORD = "fr0zen-s3cret"


@pytest.fixture(autouse=True)
def short_deadlines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("kitium_queue.connerrors.REPLY_DEADLINE_S", DEADLINE_S)
    monkeypatch.setattr("kitium_queue.scripts.REPLY_TIMEOUT_S", DEADLINE_S)
    monkeypatch.setattr("kitium_queue.sync.REPLY_TIMEOUT_S", DEADLINE_S)
    monkeypatch.setattr("kitium_queue.context.CONNECT_TIMEOUT_S", DEADLINE_S)
    monkeypatch.setattr("kitium_queue.queries.CONNECT_TIMEOUT_S", DEADLINE_S)


@pytest.fixture
def server() -> Iterator[RedisServer]:
    srv = RedisServer().start()
    admin = redis.Redis(port=srv.port)
    admin.config_set("requirepass", PASSWORD)  # no message may quote it
    admin.close()
    try:
        yield srv
    finally:
        thaw(srv)
        srv.close()


def _url(srv: RedisServer) -> str:
    return f"redis://:{PASSWORD}@127.0.0.1:{srv.port}/0"


async def _warm(q: JobQueue, n: int = 24) -> None:
    """Open ``n`` connections of the queue's pool at once and leave them idle and open:
    a call made while Redis is frozen then sends on a connection that is open already
    (a new one would stop at the handshake, which has its own bound)."""
    client = await q.client()
    await asyncio.gather(*(client.ping() for _ in range(n)))


def _clear(exc: BaseException) -> str:
    """The error's text, once checked to be the library's connection error, to say that
    the call may have run, and to hold no password."""
    assert isinstance(exc, ConnectionUnavailableError), repr(exc)
    text = str(exc)
    assert PASSWORD not in text and "may not have run" in text, text
    return text


class SilentProxy:
    """A loopback proxy that can stop answering without closing anything: ``silence()``
    reads on from both sides and forwards nothing more from the server after
    ``keep`` bytes (0: a blackhole; more: a reply that stops half way); ``trigger``
    silences it when the client sends those bytes. ``speak()`` forwards again."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.keep: int | None = None  # bytes the server may still send (None: all)
        self.trigger: bytes | None = None
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.port = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.base_events.Server | None = None

    def start(self) -> SilentProxy:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self.loop).result(10)
        return self

    def silence(self, keep: int = 0) -> None:
        self.loop.call_soon_threadsafe(setattr, self, "keep", keep)

    def speak(self) -> None:
        self.loop.call_soon_threadsafe(setattr, self, "keep", None)

    def url(self) -> str:
        return f"redis://:{PASSWORD}@127.0.0.1:{self.port}/0"

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers |= {writer, up_writer}

        async def upstream() -> None:
            while data := await reader.read(65536):
                if self.trigger is not None and self.trigger in data:
                    self.keep, self.trigger = 0, None
                up_writer.write(data)

        async def downstream() -> None:
            while data := await up_reader.read(65536):
                if self.keep is not None:
                    data, self.keep = data[: self.keep], max(0, self.keep - len(data))
                writer.write(data)

        with contextlib.suppress(OSError):
            await asyncio.gather(upstream(), downstream())

    def stop(self) -> None:
        async def shut() -> None:
            if self._server is not None:
                self._server.close()
            for w in self._writers:
                w.transport.abort()

        asyncio.run_coroutine_threadsafe(shut(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def proxy(server: RedisServer) -> Iterator[SilentProxy]:
    px = SilentProxy(server.port).start()
    try:
        yield px
    finally:
        px.stop()


@pytest.fixture
async def queue(server: RedisServer) -> AsyncIterator[JobQueue]:
    q = JobQueue("frozen", redis=_url(server), dlq={"enabled": True})
    try:
        yield q
    finally:
        thaw(server)
        await q.close()


# ------------------------------------------------------------------ the asyncio API
async def test_every_call_on_a_frozen_server_gives_up_then_works_after_the_thaw(
    queue: JobQueue, server: RedisServer
) -> None:
    job = await queue.add_job("t", {"a": 1})
    await queue.schedule_every("t", {}, 60_000, schedule_id="s1")
    await _warm(queue)
    calls: dict[str, Any] = {
        "get_job_status": lambda: queue.get_job_status(job),
        "get_job_detail": lambda: queue.get_job_detail(job),
        "get_job_logs": lambda: queue.get_job_logs(job),
        "explain": lambda: queue.explain(job),
        "get_jobs_by_status": lambda: queue.get_jobs_by_status("waiting"),
        "list_jobs": lambda: queue.list_jobs("waiting"),
        "get_dlq_jobs": lambda: queue.get_dlq_jobs(),
        "get_schedules": lambda: queue.get_schedules(),
        "get_schedule": lambda: queue.get_schedule("s1"),
        "update_schedule": lambda: queue.update_schedule("s1", interval_ms=30_000),
        "schedule_every": lambda: queue.schedule_every("t", {}, 90_000, schedule_id="s2"),
        # The scripts' own deadline (already bounded): kept that way.
        "add_job": lambda: queue.add_job("t", {"b": 2}),
        "get_stats": lambda: queue.get_stats(),
        "pause": lambda: queue.pause(),
    }
    with frozen(server):
        got = await asyncio.wait_for(
            asyncio.gather(*(fn() for fn in calls.values()), return_exceptions=True), HUNG_S
        )
        health = await asyncio.wait_for(queue.health_check(), HUNG_S)
    for name, outcome in zip(calls, got, strict=True):
        assert isinstance(outcome, BaseException), (name, outcome)
        if isinstance(outcome, ReplyTimeoutError):
            _clear(outcome)
        else:  # a script's exchange: redis-py's TimeoutError, as documented
            assert "no reply from Redis" in str(outcome), (name, outcome)
    assert not health.healthy and health.error and PASSWORD not in health.error
    # After the thaw, the same process and clients work again.
    for fn in calls.values():
        await asyncio.wait_for(fn(), HUNG_S)
    assert (await queue.get_job_status(job)) is not None
    assert (await queue.health_check()).healthy


async def test_blackhole_and_a_reply_cut_half_way_give_up(proxy: SilentProxy) -> None:
    q = JobQueue("frozen", redis=proxy.url())
    try:
        await q.add_jobs([{"name": "t", "data": {"pad": "x" * 200}} for _ in range(200)])
        assert len(await q.get_jobs_by_status("waiting", limit=200)) == 200
        proxy.silence(keep=100)  # the next reply stops after 100 bytes
        with pytest.raises(ReplyTimeoutError) as cut:
            await asyncio.wait_for(q.get_jobs_by_status("waiting", limit=200), HUNG_S)
        _clear(cut.value)
        proxy.speak()
        await _warm(q)
        proxy.silence()  # reads what the client sends, answers nothing
        with pytest.raises(ReplyTimeoutError) as silent:
            await asyncio.wait_for(q.get_job_status("1"), HUNG_S)
        _clear(silent.value)
        proxy.speak()
        assert len(await q.get_jobs_by_status("waiting", limit=200)) == 200
    finally:
        proxy.speak()
        await q.close()


async def test_blocking_commands_keep_their_own_wait() -> None:
    assert held_for(("GET", "k")) == 0.0
    assert held_for(("BZPOPMIN", "a", "b", 2.5)) == 2.5
    assert held_for(("XREADGROUP", "GROUP", "g", "c", "BLOCK", 4000, "STREAMS", "s", ">")) == 4.0
    assert held_for(("XREAD", "STREAMS", "BLOCK", "0")) == 0.0  # a stream named BLOCK
    assert held_for(("BLPOP", "k", 0)) is None and held_for((b"blpop", b"k", b"1.5")) == 1.5
    assert held_for(("WAIT", 1, 2500)) == 2.5


async def test_a_blocking_wait_longer_than_the_deadline_is_not_cut(queue: JobQueue) -> None:
    client = await queue.client()
    assert await client.xread({"nothing": "$"}, block=int(DEADLINE_S * 2500)) in ([], {})
    assert await client.bzpopmin("nothing", timeout=DEADLINE_S * 2.5) is None


# ------------------------------------------------------------------ blocking client
def test_sync_calls_on_a_frozen_server_give_up(server: RedisServer) -> None:
    q = SyncJobQueue("frozen", redis=_url(server))
    outcome: dict[str, BaseException | None] = {}

    def call(name: str, fn: Any) -> None:
        try:
            fn()
            outcome[name] = None
        except BaseException as exc:
            outcome[name] = exc

    try:
        job = q.add_job("t", {"a": 1})  # from this thread, over a blocking connection
        q._call(_warm(q.queue))  # the loop thread's pool, for everything else
        calls = {
            "get_jobs_by_status": lambda: q.get_jobs_by_status("waiting"),
            "add_job": lambda: q.add_job("t", {"a": 2}),
        }
        with frozen(server):
            threads = [
                threading.Thread(target=call, args=item, daemon=True) for item in calls.items()
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(HUNG_S)
            assert not any(t.is_alive() for t in threads), "a call waited as long as Redis did"
        _clear(outcome["get_jobs_by_status"])  # plain reads: unbounded before
        added = outcome["add_job"]  # redis-py's TimeoutError, as the asyncio add_job's
        assert isinstance(added, redis.TimeoutError), repr(added)
        assert "no reply from Redis" in str(added) and "idempotency_key" in str(added)
        assert q.get_job_status(job) is not None  # the same client, after the thaw
        assert q.add_job("t", {"a": 3})
    finally:
        thaw(server)
        q.close()


# ------------------------------------------------------------------ workers
async def test_worker_start_and_stop_end_on_a_frozen_server(
    queue: JobQueue, server: RedisServer
) -> None:
    ran: list[int] = []

    @queue.process("t")
    async def t(job: Any) -> None:
        ran.append(job.data["i"])

    await queue.add_job("t", {"i": 0})  # the queue is connected
    await _warm(queue)
    with frozen(server), pytest.raises(ConnectionUnavailableError):
        await asyncio.wait_for(queue.start(), HUNG_S)
    await queue.start()
    await wait_until(lambda: ran == [0], 10)
    await _warm(queue)
    with frozen(server):
        # shutdown_timeout (30 s) is not spent: nothing runs. The stop offers what it
        # holds for 5 s, waits up to 2 s for its last heartbeat, then leaves.
        await asyncio.wait_for(queue.close(), HUNG_S)
    assert queue.worker is None or not queue.worker.running


async def test_a_freeze_mid_drain_loses_nothing_and_runs_nothing_twice_at_once(
    server: RedisServer,
) -> None:
    n = 120
    running: set[int] = set()
    overlaps: list[int] = []
    runs: dict[int, int] = {}
    settings = {"lock_duration": 1000, "max_stalled_interval": 250}

    def worker() -> JobQueue:
        q = JobQueue("drain", redis=_url(server), settings=settings, worker={"concurrency": 4})

        @q.process("t")
        async def t(job: Any) -> None:
            i = job.data["i"]
            if i in running:
                overlaps.append(i)
            running.add(i)
            runs[i] = runs.get(i, 0) + 1
            try:
                await asyncio.sleep(0.02)
            finally:
                running.discard(i)

        return q

    producer, workers = JobQueue("drain", redis=_url(server)), [worker(), worker()]
    try:
        await producer.add_jobs([{"name": "t", "data": {"i": i}} for i in range(n)])
        for w in workers:
            await w.start()
        await wait_until(lambda: len(runs) >= n // 4, 10)
        with frozen(server):
            await asyncio.sleep(2.5)  # longer than the leases

        async def drained() -> bool:
            return (await producer.get_stats()).completed == n

        await wait_until(drained, 30, interval=0.1)
        stats = await producer.get_stats()
        assert (stats.completed, stats.dlq, stats.failed, stats.active) == (n, 0, 0, 0)
        assert sorted(runs) == list(range(n)) and not overlaps
    finally:
        for w in workers:
            await w.close()
        await producer.close()


# ------------------------------------------------------------------ the CLI
def test_cli_on_a_server_that_stops_answering_exits_3_in_one_line(
    proxy: SilentProxy, tmp_path: Path
) -> None:
    source = f"from kitium_queue import JobQueue\nqueue = JobQueue('x', redis={proxy.url()!r})\n"

    def run(argv: list[str]) -> Any:
        done: list[Any] = []
        runner = threading.Thread(target=lambda: done.append(CliRunner().invoke(main, argv)))
        runner.start()
        runner.join(HUNG_S)
        assert done, f"kitium-queue {' '.join(argv)} waited for as long as Redis did"
        return done[0]

    with app_module(tmp_path, source, "kq_frozen") as module:
        app = f"{module}:queue"
        assert run(["pause", app]).exit_code == 0
        proxy.trigger = b"EVALSHA"  # connects, then the command's script gets no answer
        paused = run(["resume", app])
        proxy.speak()
        proxy.trigger = b"ZRANGE"  # a listing's first read gets no answer
        listing = run(["jobs", "list", app, "--json"])
        proxy.speak()
    for result in (paused, listing):
        assert result.exit_code == EXIT_UNREACHABLE, result.output
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
        assert PASSWORD not in result.stderr and "may not have run" in lines[0], lines[0]
    assert "stopped answering" in paused.stderr


async def test_the_reply_deadline_covers_a_client_passed_in(server: RedisServer) -> None:
    # Without a socket_timeout (redis-py's own bound, which its client may set already).
    client = aioredis.Redis.from_url(_url(server), socket_timeout=None)
    q = JobQueue("frozen", redis=client)
    try:
        job = await q.add_job("t", {})
        await _warm(q)
        with frozen(server), pytest.raises(ReplyTimeoutError):
            await asyncio.wait_for(q.get_job_status(job), HUNG_S)
        assert await q.get_job_status(job) is not None
    finally:
        await q.close()
        await client.aclose()
