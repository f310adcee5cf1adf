"""The direct reply path of script exchanges (``kitium_queue.replies``), against a real Redis.

The engine reads the replies of its script exchanges through a protocol installed on
the connection's transport while it holds the connection. These tests break that
connection every way the hot path can meet: closed by the server while idle or while
an exchange waits, a deadline passed, the awaiting task cancelled, bytes nobody asked
for; and check that no exchange ever reads another's reply, that a connection handed
back to the pool works for redis-py's own commands, and that the next call succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

import kitium_queue.scripts as scripts_mod
from _redis import RedisServer
from helpers import wait_until
from kitium_queue import JobQueue, SyncJobQueue
from kitium_queue.replies import ReplyChannel, channel_for

pytestmark = pytest.mark.redis_only


@pytest.fixture
def server(debug_server: RedisServer) -> RedisServer:
    # A private server (conftest): it is flushed, restarted, put to sleep and killed.
    return debug_server


@pytest.fixture
def redis_url(server: RedisServer) -> str:
    # conftest's redis_client connects here too.
    return server.url


@pytest.fixture
async def queue(redis_url: str, prefix: str) -> AsyncIterator[JobQueue]:
    q = JobQueue("replies", redis=redis_url, prefix=prefix)
    try:
        yield q
    finally:
        await q.close()


async def _stored(q: JobQueue, jid: str, name: str, data: Any) -> None:
    """Job ``jid`` is in Redis as added with ``name`` and ``data``: the id the add got
    back was its own reply, not another exchange's."""
    info = await q.get_job_status(jid)
    assert info is not None and (info.name, info.data) == (name, data)


async def _add_and_check(q: JobQueue, name: str, data: Any) -> None:
    await _stored(q, await q.add_job(name, data), name, data)


def _held(q: JobQueue) -> list[Any]:
    """The connections the script registry keeps between exchanges."""
    reg = q.producer.ctx.scripts
    return [c for conns in reg._idle.values() for c in conns]


async def _client_ids(q: JobQueue, admin: aioredis.Redis) -> list[int]:
    name = f"kq-replies-{id(q)}"
    ids = []
    for c in _held(q):
        # Name each held connection through the channel itself, then find it by name.
        ch = channel_for(c)
        assert ch is not None
        (reply,) = await ch.exchange(
            b"*3\r\n$6\r\nCLIENT\r\n$7\r\nSETNAME\r\n$%d\r\n%b\r\n" % (len(name), name.encode()),
            1,
            5.0,
        )
        assert reply in (b"OK", "OK")
    for line in (await admin.execute_command("CLIENT", "LIST")).decode().splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if fields.get("name") == name:
            ids.append(int(fields["id"]))
    return ids


async def test_the_hot_path_reads_through_the_channel(queue: JobQueue) -> None:
    await queue.add_job("x", 1)
    held = _held(queue)
    assert held, "the registry keeps its connection between exchanges"
    assert all(type(c._writer.transport.get_protocol()) is ReplyChannel for c in held)
    # Many sequential calls each get their own reply, in order.
    ids = [await queue.add_job("x", i) for i in range(50)]
    assert len(set(ids)) == 50
    for i, jid in enumerate(ids):
        await _stored(queue, jid, "x", i)


async def test_idle_connection_killed_by_the_server_is_replaced(
    queue: JobQueue, redis_client: aioredis.Redis
) -> None:
    await queue.add_job("x", 1)
    for cid in await _client_ids(queue, redis_client):
        await redis_client.execute_command("CLIENT", "KILL", "ID", cid)
    await asyncio.sleep(0.1)  # the loop sees the closed socket
    await _add_and_check(queue, "x", 2)


@contextlib.asynccontextmanager
async def _busy(url: str, seconds: float) -> AsyncIterator[asyncio.Future[Any]]:
    """Redis sleeps ``seconds`` (DEBUG SLEEP, sent on a connection of its own); yields
    the sleep's future once Redis is in it."""
    blocker = aioredis.Redis.from_url(url)
    sleeping = asyncio.ensure_future(blocker.execute_command("DEBUG", "SLEEP", str(seconds)))
    await asyncio.sleep(0.05)
    try:
        yield sleeping
    finally:
        with contextlib.suppress(Exception):
            await sleeping
        await blocker.aclose()


async def test_server_killed_mid_exchange_fails_that_call_only(
    queue: JobQueue, server: RedisServer, redis_url: str
) -> None:
    await queue.add_job("x", 1)
    async with _busy(redis_url, 2):
        # The add waits for its reply when the server dies.
        add = asyncio.ensure_future(queue.add_job("x", 2))
        await asyncio.sleep(0.1)
        assert not add.done()
        await asyncio.to_thread(server.kill)
        with pytest.raises(RedisConnectionError):
            await add
    await asyncio.to_thread(server.restart)
    await _add_and_check(queue, "x", 3)


async def test_deadline_drops_the_connection_and_the_next_call_reads_its_own_reply(
    queue: JobQueue, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await queue.add_job("x", 1)
    monkeypatch.setattr(scripts_mod, "REPLY_TIMEOUT_S", 0.3)
    async with _busy(redis_url, 1):
        with pytest.raises(RedisTimeoutError, match="no reply from Redis within"):
            await queue.add_job("late", 2)
        monkeypatch.setattr(scripts_mod, "REPLY_TIMEOUT_S", 15.0)
        # Sent while Redis still sleeps: the late add's reply comes first, and must
        # not be taken for this one's.
        jid = await queue.add_job("next", 3)
    await _stored(queue, jid, "next", 3)


async def test_cancelled_exchange_never_leaks_its_reply_to_the_next(
    queue: JobQueue, redis_url: str
) -> None:
    await queue.add_job("x", 1)
    async with _busy(redis_url, 0.5):
        add = asyncio.ensure_future(queue.add_job("cancelled", 2))
        await asyncio.sleep(0.05)
        add.cancel()
        with pytest.raises(asyncio.CancelledError):
            await add
        # Sent while Redis still sleeps, behind the cancelled add.
        ids = await asyncio.gather(*(queue.add_job("after", 10 + i) for i in range(3)))
    for i, jid in enumerate(ids):
        await _stored(queue, jid, "after", 10 + i)
    for i in range(3):
        await _add_and_check(queue, "later", i)


async def test_stray_bytes_make_the_connection_unusable(queue: JobQueue) -> None:
    await queue.add_job("x", 1)
    (conn,) = _held(queue)[:1]
    channel = channel_for(conn)
    assert channel is not None and channel.usable
    channel.data_received(b"+PONG\r\n")  # nothing asked for it
    assert not channel.usable
    assert not scripts_mod._alive(conn)
    await _add_and_check(queue, "x", 2)  # the registry drops it and takes another


async def test_connections_handed_back_to_the_pool_serve_redis_py_again(
    queue: JobQueue,
) -> None:
    client = await queue.client()
    reg = queue.producer.ctx.scripts
    # More concurrent exchanges than the registry keeps: the extra connections go back
    # to the pool, and redis-py's own commands must work on every pooled connection.
    n = scripts_mod.MAX_IDLE_CONNS + 6
    keys = list(queue.producer.ctx.keys.all)
    args = [*queue.producer.ctx.argv_head()]
    replies = await asyncio.gather(*(reg.call(client, "stats", keys, args) for _ in range(n)))
    assert len(replies) == n
    pool = client.connection_pool
    pooled = list(pool._available_connections)
    assert pooled, "some connections went back to the pool"
    for c in pooled:
        if c._writer is not None:
            assert type(c._writer.transport.get_protocol()) is not ReplyChannel
    pongs = await asyncio.gather(*(client.ping() for _ in range(len(pooled) + 2)))
    assert all(pongs)


async def test_a_server_restart_between_calls_is_transparent(
    queue: JobQueue, server: RedisServer
) -> None:
    await queue.add_job("x", 1)
    await asyncio.to_thread(lambda: (server.kill(), server.restart()))
    await asyncio.sleep(0.1)
    # The script cache is gone too: NOSCRIPT, then EVAL, on a fresh connection.
    await _add_and_check(queue, "x", 2)


@pytest.mark.parametrize("given", [False, True], ids=["url", "client-passed-in"])
async def test_a_pooled_connection_a_restart_closed_is_reconnected_before_use(
    server: RedisServer, prefix: str, monkeypatch: pytest.MonkeyPatch, given: bool
) -> None:
    # A connection that sat in redis-py's pool (never held by the script registry)
    # when the server restarted: redis-py's pool hands it out as it is, its stream at
    # EOF, and a request sent on it would never be answered. The pools the queue builds
    # reconnect it (connection._CheckedPool); for a client passed in, redis-py's own
    # pool, the registry does before it sends.
    redis_arg: Any = aioredis.Redis.from_url(server.url) if given else server.url
    queue = JobQueue("replies", redis=redis_arg, prefix=prefix)
    try:
        await _restart_behind_a_pooled_connection(queue, server, monkeypatch)
    finally:
        await queue.close()
        if given:
            await redis_arg.aclose()


async def _restart_behind_a_pooled_connection(
    queue: JobQueue, server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await queue.producer.ctx.client()
    pool = client.connection_pool
    conn = await pool.get_connection()
    await pool.release(conn)
    assert _held(queue) == []
    await asyncio.to_thread(server.restart)
    await asyncio.sleep(0.1)
    monkeypatch.setattr(scripts_mod, "REPLY_TIMEOUT_S", 2.0)
    # NOSCRIPT after the restart, then EVAL: both on live connections, no deadline hit.
    await _add_and_check(queue, "x", 1)


@pytest.mark.parametrize("given", [False, True], ids=["url", "client-passed-in"])
async def test_queries_right_after_a_restart_succeed(
    server: RedisServer, prefix: str, given: bool
) -> None:
    # Queries and admin calls go through redis-py's pool: every connection it holds was
    # closed by the restart, and each is reconnected before use (none fails once first),
    # in a client passed in as in the queue's own.
    redis_arg: Any = aioredis.Redis.from_url(server.url) if given else server.url
    queue = JobQueue("replies", redis=redis_arg, prefix=prefix)
    try:
        await _queries_after_a_restart(queue, server)
        if given:
            # The caller's own use of its client after a restart: no failed first command.
            await asyncio.to_thread(server.restart)
            await asyncio.sleep(0.1)
            assert await redis_arg.ping()
    finally:
        await queue.close()
        if given:
            await redis_arg.aclose()


async def _queries_after_a_restart(queue: JobQueue, server: RedisServer) -> None:
    jid = await queue.add_job("x", 1)
    await asyncio.gather(*(queue.get_job_status(jid) for _ in range(6)))
    client = await queue.producer.ctx.client()
    assert len(client.connection_pool._available_connections) >= 2
    await asyncio.to_thread(server.restart)
    await asyncio.sleep(0.1)
    stats, health, infos = await asyncio.gather(
        queue.get_stats(),
        queue.health_check(),
        asyncio.gather(*(queue.get_job_status(jid) for _ in range(6))),
    )
    assert stats.waiting == 0 and health  # no persistence: the job went with the restart
    assert infos == [None] * 6


async def test_unix_socket_in_the_dict_form(prefix: str) -> None:
    """``redis={"unix_socket_path": ...}`` (the documented dict key): it was renamed to a
    keyword redis-py does not take, a TypeError at the first call, and the CLI called
    the server unreachable."""
    sock = f"/tmp/kq-dict-{uuid.uuid4().hex[:8]}.sock"
    srv = RedisServer("--unixsocket", sock, "--unixsocketperm", "700").start()
    cfg = {"unix_socket_path": sock, "db": 2}
    q = JobQueue("dict-unix", redis=cfg, prefix=prefix)
    try:
        q.process("n", lambda job: job.data + 1)
        jid = await q.add_job("n", 41)
        await q.start()
        await wait_until(lambda: _result_is(q, jid, 42), 10)
        health = await q.health_check()
        assert health.healthy and health.backend == f"unix:{sock}?db=2", health
        sync = SyncJobQueue("dict-unix", redis=cfg, prefix=prefix)
        try:
            assert sync.add_job("n", 1)
        finally:
            sync.close()
        raw = aioredis.Redis(unix_socket_path=sock, db=2)
        assert await raw.exists(q.keys.job(jid))  # in the database asked for
        await raw.aclose()
    finally:
        await q.close()
        srv.close()


async def _result_is(q: JobQueue, jid: str, want: Any) -> bool:
    info = await q.get_job_status(jid)
    return info is not None and info.result == want


async def test_unix_socket_and_worker_round_trip(
    tmp_path: Any, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The channel takes unix-socket connections too; a worker's claim and finish
    # exchanges go through it as well as the producer's adds.
    sock = f"/tmp/kq-replies-{uuid.uuid4().hex[:8]}.sock"
    srv = RedisServer("--unixsocket", sock, "--unixsocketperm", "700").start()
    q = JobQueue("replies", redis=f"unix://{sock}", prefix=prefix)
    through_channel = [0]
    exchange = ReplyChannel.exchange

    def counted(self: ReplyChannel, payload: bytes, n: int, timeout: float) -> Any:
        through_channel[0] += 1
        return exchange(self, payload, n, timeout)

    monkeypatch.setattr(ReplyChannel, "exchange", counted)
    try:
        done: list[int] = []

        async def handler(job: Any) -> int:
            done.append(job.data)
            return int(job.data) * 2

        q.process("double", handler)
        ids = [await q.add_job("double", i) for i in range(20)]
        await q.start()
        for _ in range(200):
            if len(done) == 20:
                break
            await asyncio.sleep(0.05)
        assert sorted(done) == list(range(20))
        # 20 adds, and the worker's claims and outcomes, all through the channel.
        assert through_channel[0] > 20, through_channel
        for i, jid in enumerate(ids):
            info = await q.get_job_status(jid)
            assert info is not None and info.result == i * 2
    finally:
        await q.close()
        srv.close()
