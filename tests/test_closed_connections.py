"""Connections this process closed are never used as if they were open.

* ``run_worker()`` returns once the close that stopped it has released the queue's
  connections. The close a SIGTERM starts ran on after ``run_worker()`` returned (it
  waited only for the worker to stop): a call made right after took a connection of the
  client being closed, which the close then cut under it, and the call failed with
  ``ReplyCutOffError`` ("Connection closed by server." from redis-py) although Redis
  answered. Seen on Python 3.13 after a forced stop, awaited through ``asyncio.wait_for``
  (since 3.12 it returns without the extra turns of the loop that let the close go first
  on 3.11), and on every version when the caller awaits ``run_worker()`` directly.
* A connection whose transport this side closed looks connected until the loop's next
  turn (neither EOF nor an error reaches its stream before): the pools reconnect it
  (``pools.stream_ended``) and the packed script path does too (``scripts._alive``),
  rather than send a command on it that fails ("Connection closed by the server before
  write", or "Connection closed by server." once the close reaches the stream).
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from helpers import QueueFactory
from kitium_queue import JobQueue, JobStatus
from kitium_queue import scripts as scripts_module
from kitium_queue.pools import stream_ended
from kitium_queue.scripts import RawCall, ScriptRegistry

HANG_S = 15


@pytest.fixture
async def make(redis_url: str, prefix: str) -> AsyncIterator[QueueFactory]:
    factory = QueueFactory(redis_url, prefix)
    yield factory
    await asyncio.wait_for(factory.aclose(), HANG_S)


@pytest.fixture
def own_sigterm() -> Iterator[None]:
    before = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, before)


async def _running(q: JobQueue) -> None:
    async def up() -> None:
        while q.worker is None or not q.worker.running:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(up(), HANG_S)


@pytest.mark.usefixtures("own_sigterm")
async def test_a_call_right_after_run_worker_stopped_by_sigterm_succeeds(
    make: QueueFactory,
) -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers are the main thread's")
    q = make("sigread")
    jid = await q.add_job("later", {}, delay=600_000)  # not claimed meanwhile
    serving = asyncio.ensure_future(q.run_worker())
    await _running(q)
    os.kill(os.getpid(), signal.SIGTERM)
    await serving  # the task itself: no extra turn of the loop before the next call
    info = await q.get_job_status(jid)
    assert info is not None and info.status == JobStatus.DELAYED


async def test_run_worker_returns_once_a_close_elsewhere_released_the_connections(
    make: QueueFactory,
) -> None:
    q = make("closeread")
    jid = await q.add_job("later", {}, delay=600_000)  # not claimed meanwhile
    serving = asyncio.ensure_future(q.run_worker(install_signal_handlers=False))
    await _running(q)
    closing = asyncio.ensure_future(q.close())
    await serving
    assert closing.done()  # the close that stopped it has ended
    info = await q.get_job_status(jid)
    assert info is not None and info.status == JobStatus.DELAYED


async def test_the_pool_reconnects_a_connection_whose_transport_this_side_closed(
    make: QueueFactory,
) -> None:
    q = make("pooled")
    client = await q.client()
    pool = client.connection_pool
    conn = await pool.get_connection()
    transport = conn._writer.transport
    transport.close()  # its end reaches the stream only at the loop's next turn
    assert conn.is_connected and not conn._reader.at_eof()
    assert stream_ended(conn)
    await pool.release(conn)
    assert await client.ping()  # in the same turn: handed out again, reconnected
    assert conn._writer is None or conn._writer.transport is not transport


async def test_the_packed_path_reconnects_a_kept_connection_whose_transport_this_side_closed(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # redis-py's reading (the path's switch off): the connection it keeps between
    # exchanges has no reply channel that would notice the close.
    monkeypatch.setattr(scripts_module, "_DIRECT_REPLIES", False)
    client = aioredis.Redis.from_url(redis_url)
    scripts = ScriptRegistry()
    try:
        calls = [RawCall(("PING",))]
        assert await scripts.pipeline(client, calls) == [b"PONG"]
        (kept,) = scripts._idle[client.connection_pool]
        transport = kept._writer.transport
        transport.close()  # its end reaches the stream only at the loop's next turn
        assert kept.is_connected and not kept._reader.at_eof()
        assert await scripts.pipeline(client, calls) == [b"PONG"]  # in the same turn
        assert kept._writer is None or kept._writer.transport is not transport
    finally:
        await client.aclose()


async def test_a_read_cut_by_the_queues_own_close_is_not_called_a_reply_cut_off(
    make: QueueFactory,
) -> None:
    """A read whose connection the queue's own ``close()`` cut (the client released
    while it ran) was reported as Redis dropping a reply over its
    client-output-buffer-limit, since Redis answered a PING right after."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from kitium_queue import ConnectionUnavailableError
    from kitium_queue.connerrors import ReplyCutOffError
    from kitium_queue.recordreads import cut_off

    q = make("cut-by-close")
    await q.add_job("n", {})
    client = await q.ctx.client()
    await q.close()  # the client the read used is released meanwhile
    err = await cut_off(
        q.ctx, client, RedisConnectionError("Connection closed by server."), "the read of job '1'"
    )
    assert isinstance(err, ConnectionUnavailableError)
    assert not isinstance(err, ReplyCutOffError)
    assert "was closed while the read of job '1' ran" in str(err)
    live = await q.ctx.client()  # the queue in use again: a real cut off still said so
    err = await cut_off(q.ctx, live, RedisConnectionError("Connection closed by server."), "x")
    assert isinstance(err, ReplyCutOffError)
