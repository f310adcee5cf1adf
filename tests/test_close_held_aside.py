"""close() and a connection held aside that a cancelled blocking wait left closed.

A client of one connection taken from the queue's client (``client.client()``) holds
its connection out of the pool. A blocking wait cancelled on it (``BLPOP`` under
``asyncio.wait_for``, a task cancelled) leaves that connection closed until its next
command. On ``redis://`` such a connection counted as one being opened, so ``close()``
waited its whole grace (``context.CLOSE_GRACE_S``, 3 s) for it, with or without a
worker. The opens under way are counted now (``pools.answering``): close() returns at
once for a closed connection that nobody is opening, and still lets an open or a read
that is under way end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from _redis import RedisServer, frozen
from helpers import QueueFactory, wait_for_status
from kitium_queue import JobQueue, JobStatus
from kitium_queue.context import CLOSE_GRACE_S

HANG_S = 20  # a call that should return but hangs fails the test, never wedges it


async def _cancelled_wait(one: Any) -> None:
    """Cancel a blocking wait under way on ``one``, leaving its connection closed."""
    waiting = asyncio.ensure_future(one.blpop(["nothing"], timeout=5))
    await asyncio.sleep(0.05)
    waiting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    assert not one.connection.is_connected, "the cancelled wait left the connection open"


async def _held_aside(q: JobQueue) -> Any:
    one = (await q.client()).client()
    assert await one.ping()
    return one


async def _timed_close(q: JobQueue) -> float:
    t0 = time.monotonic()
    await asyncio.wait_for(q.close(), HANG_S)
    return time.monotonic() - t0


@pytest.mark.parametrize("with_worker", [False, True], ids=["client", "worker"])
async def test_close_does_not_wait_for_a_connection_a_cancelled_wait_closed(
    redis_url: str, prefix: str, with_worker: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """close() returns well within its grace (1.5 s against the 3 s it waited before;
    0.01-0.02 s here), a running worker's stop included."""
    assert CLOSE_GRACE_S >= 3
    factory = QueueFactory(redis_url, prefix)
    q = factory("held-closed")
    q.process("n", lambda job: "done")
    one = None
    try:
        jid = await q.add_job("n", {})
        if with_worker:
            await q.start()
            await wait_for_status(q, jid, JobStatus.COMPLETED, timeout=HANG_S)
        one = await _held_aside(q)
        await _cancelled_wait(one)
        with caplog.at_level(logging.WARNING, logger="kitium_queue"):
            took = await _timed_close(q)
        assert took < 1.5, f"close() took {took:.2f} s"
        assert "close() waited" not in caplog.text, caplog.text
        assert not (q.worker is not None and q.worker.running)
    finally:
        if one is not None:
            await one.aclose()
        await factory.aclose()


async def test_close_still_lets_a_read_under_way_on_it_end(redis_url: str, prefix: str) -> None:
    """After a cancelled wait, a blocking wait started on the same connection (which
    opens it again) is a call under way: close() waits for it, and it gets the value
    pushed meanwhile."""
    factory = QueueFactory(redis_url, prefix)
    q, pusher = factory("held-read"), factory("held-read-pusher")
    one = await _held_aside(q)
    await _cancelled_wait(one)
    key = f"{prefix}:work"
    waiting = asyncio.ensure_future(one.blpop([key], timeout=HANG_S))
    try:
        await asyncio.sleep(0.1)
        assert one.connection.is_connected and not waiting.done()
        closing = asyncio.ensure_future(q.close())
        await asyncio.sleep(0.3)
        assert not closing.done(), "close() did not wait for the blocking wait"
        await (await pusher.client()).rpush(key, "a job")
        assert list(await asyncio.wait_for(waiting, HANG_S)) == [key.encode(), b"a job"]
        await asyncio.wait_for(closing, HANG_S)
    finally:
        waiting.cancel()
        await one.aclose()
        await factory.aclose()


@pytest.fixture(scope="module")
def narrow() -> Iterator[RedisServer]:
    """A redis-server whose listening socket queues one connection not yet accepted
    (``tcp-backlog 0``): frozen, with one connection queued, it lets no other socket
    open (the kernel drops their SYNs; the client's kernel sends them again after 1 s)."""
    srv = RedisServer("--tcp-backlog", "0").start()
    try:
        yield srv
    finally:
        srv.close()


@pytest.mark.parametrize(
    ("where", "options"),
    [("the queue's client", ""), ("held aside", ""), ("held aside", "?socket_timeout=10")],
    ids=["the queue's client", "held aside", "held aside with a socket_timeout"],
)
async def test_close_still_waits_for_an_open_under_way(
    narrow: RedisServer, prefix: str, where: str, options: str
) -> None:
    """A connection is being opened while the server lets no socket open, and the
    held-aside connection a cancelled wait closed sits by: close() waits for that open
    (the connection is not open yet), and returns once the call that needed it, let
    through when the server runs again, has its reply. On the queue's client the call
    takes an idle connection of the pool that is closed, so nothing is owed on it while
    it opens; held aside, the command that opens it again is sent next (under a
    ``socket_timeout`` no reply is counted as owed: that timeout bounds the reads)."""
    factory = QueueFactory(narrow.url + options, prefix)
    q = factory("held-open")
    await q.add_job("n", {})
    client = await q.client()
    one = await _held_aside(q)
    await _cancelled_wait(one)
    if where == "the queue's client":
        await client.connection_pool.disconnect(inuse_connections=False)
    opener = client if where == "the queue's client" else one
    plug = socket.socket()
    ping: asyncio.Future[Any] | None = None
    try:
        with frozen(narrow):
            plug.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                plug.connect(("127.0.0.1", narrow.port))  # fills the queue of the socket
            await asyncio.sleep(0.1)
            ping = asyncio.ensure_future(opener.ping())
            await asyncio.sleep(0.3)
            assert not ping.done(), "the open ended"
            assert not one.connection.is_connected
            closing = asyncio.ensure_future(q.close())
            await asyncio.sleep(0.5)
            assert not closing.done(), "close() did not wait for the open under way"
        assert await asyncio.wait_for(ping, HANG_S) is True
        await asyncio.wait_for(closing, HANG_S)
    finally:
        if ping is not None:
            ping.cancel()
        plug.close()
        await one.aclose()
        await factory.aclose()
