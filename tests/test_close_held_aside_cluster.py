"""close() on Redis Cluster and a connection held aside that a cancelled wait left closed.

On a Cluster a connection is held out of its node's connections by a transaction
watching keys (``pipeline(transaction=True)`` then ``WATCH``: its commands run on that
one connection until the pipeline is reset), or by whoever takes one from the node
(``ClusterNode.acquire_connection``). A blocking wait cancelled on it leaves it closed
until its next command. The nodes' connections did not count their opens, so such a
connection counted as one being opened: ``close()`` waited its whole grace
(``context.CLOSE_GRACE_S``, 3 s) and logged "waited 3 s for 1 call(s) under way",
with or without a worker. They count them now (``opens.py``, given to the nodes'
connection class by ``clusterreplies.bound_class``): close() returns at once for a
closed connection nobody is opening, and still lets an open or a read under way end,
as on a single server (``test_close_held_aside.py``).

A private three-master cluster without replicas, whose node timeout is longer than any
freeze here (no node is marked failed), is shared by the tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from _cluster import LocalCluster
from _redis import RedisServer, frozen, thaw
from helpers import QueueFactory, wait_for_status
from kitium_queue import JobQueue, JobStatus
from kitium_queue.context import CLOSE_GRACE_S

pytestmark = pytest.mark.redis_only

HANG_S = 20  # a call that should return but hangs fails the test, never wedges it


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(masters=3, replicas=0, node_timeout_ms=60_000) as c:
        yield c


@pytest.fixture
async def factory(cluster: LocalCluster, prefix: str) -> AsyncIterator[QueueFactory]:
    made = QueueFactory(cluster.url, prefix)
    try:
        yield made
    finally:
        for node in cluster.nodes:
            thaw(node)
        await made.aclose()


class Held:
    """A connection of the queue's Cluster client held aside, in one of two ways:
    ``watch``, a transaction watching ``key`` (its commands run at once on the one
    connection it holds), or ``node``, a connection taken from the node of ``key``."""

    def __init__(self, client: Any, key: str, how: str) -> None:
        self.client, self.key, self.how = client, key, how
        self.node = client.get_node_from_key(key)
        self.pipe: Any = None
        self.taken: Any = None

    @property
    def conn(self) -> Any:
        if self.pipe is not None:
            return self.pipe._execution_strategy._transaction_connection
        return self.taken

    async def take(self) -> Held:
        if self.how == "watch":
            self.pipe = self.client.pipeline(transaction=True)
            await self.pipe.watch(self.key)
        else:
            self.taken = self.node.acquire_connection()
            assert await self.call("PING") in (b"PONG", "PONG", True)
        assert self.conn is not None and self.conn.is_connected
        return self

    async def call(self, *args: Any) -> Any:
        """Run a command on the held connection (which opens it if it is closed)."""
        if self.pipe is not None:
            return await self.pipe.execute_command(*args)
        await self.conn.send_command(*args)
        return await self.conn.read_response()

    def blpop(self, key: str, timeout: float) -> Awaitable[Any]:
        return self.call("BLPOP", key, timeout)

    async def give_back(self) -> None:
        if self.pipe is not None:
            await self.pipe.reset()
        elif self.taken is not None:
            await self.taken.disconnect()
            self.node.release(self.taken)
        self.pipe = self.taken = None


async def _cancel(call: Awaitable[Any], after_s: float) -> None:
    waiting = asyncio.ensure_future(call)
    await asyncio.sleep(after_s)
    assert not waiting.done(), "the call ended before it was cancelled"
    waiting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiting


async def _cancelled_wait(held: Held) -> None:
    """Cancel a blocking wait under way on the held connection, leaving it closed."""
    await _cancel(held.blpop(f"{held.key}:nothing", 5), 0.05)
    assert not held.conn.is_connected, "the cancelled wait left the connection open"
    assert _opening(held.conn) == 0


def _opening(conn: Any) -> int:
    """The opens under way counted on ``conn`` (``opens.counting``)."""
    return int(getattr(conn, "_kq_opening", 0))


async def _timed_close(q: JobQueue) -> float:
    t0 = time.monotonic()
    await asyncio.wait_for(q.close(), HANG_S)
    return time.monotonic() - t0


def _home(cluster: LocalCluster, held: Held) -> RedisServer:
    return next(n for n in cluster.nodes if n.port == int(held.node.port))


@pytest.mark.parametrize("how", ["watch", "node"])
@pytest.mark.parametrize("with_worker", [False, True], ids=["client", "worker"])
async def test_close_does_not_wait_for_a_connection_a_cancelled_wait_closed(
    factory: QueueFactory,
    prefix: str,
    how: str,
    with_worker: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """close() returns well within its grace (1.5 s against the 3.0 s it waited
    before; 0.01 s here), a running worker's stop included."""
    assert CLOSE_GRACE_S >= 3
    q = factory("held-closed")
    q.process("n", lambda job: "done")
    jid = await q.add_job("n", {})
    if with_worker:
        await q.start()
        await wait_for_status(q, jid, JobStatus.COMPLETED, timeout=HANG_S)
    held = await Held(await q.client(), f"{prefix}:{{held}}", how).take()
    try:
        await _cancelled_wait(held)
        with caplog.at_level(logging.WARNING, logger="kitium_queue"):
            took = await _timed_close(q)
        assert took < 1.5, f"close() took {took:.2f} s"
        assert "close() waited" not in caplog.text, caplog.text
        assert not (q.worker is not None and q.worker.running)
    finally:
        await held.give_back()


@pytest.mark.parametrize("how", ["watch", "node"])
async def test_close_still_lets_a_read_under_way_on_it_end(
    factory: QueueFactory, prefix: str, how: str
) -> None:
    """After a cancelled wait, a blocking wait started on the same connection (which
    opens it again) is a call under way: close() waits for it, and it gets the value
    pushed meanwhile."""
    q, pusher = factory("held-read"), factory("held-read-pusher")
    key = f"{prefix}:{{held}}"
    held = await Held(await q.client(), key, how).take()
    await _cancelled_wait(held)
    work = f"{key}:work"
    waiting = asyncio.ensure_future(held.blpop(work, HANG_S))
    try:
        await asyncio.sleep(0.1)
        assert held.conn.is_connected and not waiting.done()
        closing = asyncio.ensure_future(q.close())
        await asyncio.sleep(0.3)
        assert not closing.done(), "close() did not wait for the blocking wait"
        await (await pusher.client()).rpush(work, "a job")
        assert list(await asyncio.wait_for(waiting, HANG_S)) == [work.encode(), b"a job"]
        await asyncio.wait_for(closing, HANG_S)
    finally:
        waiting.cancel()
        with contextlib.suppress(BaseException):
            await waiting
        await held.give_back()


@pytest.fixture(scope="module")
def narrow() -> Iterator[LocalCluster]:
    """A cluster whose nodes' listening sockets queue one connection not yet accepted
    (``tcp-backlog 0``): a frozen node with one connection queued lets no other socket
    open (the kernel drops their SYNs; the client's kernel sends them again after 1 s)."""
    extra = ("--tcp-backlog", "0")
    with LocalCluster(masters=3, replicas=0, node_timeout_ms=60_000, extra_args=extra) as c:
        yield c


@pytest.mark.parametrize("phase", ["socket", "handshake"])
@pytest.mark.parametrize("where", ["the queue's client", "watch", "node"])
async def test_close_still_waits_for_an_open_under_way(
    cluster: LocalCluster, narrow: LocalCluster, prefix: str, where: str, phase: str
) -> None:
    """The node holding the key answers nothing (frozen), and a connection of it is
    being opened, its socket not open yet (``socket``: the node lets none open) or its
    handshake unanswered: close() waits for that open, with the held-aside connection a
    cancelled wait closed sitting by, and returns once the call that needed it has its
    reply after the thaw. On the queue's client the call takes a closed connection of
    the node; held aside, its next command opens it."""
    where_to = narrow if phase == "socket" else cluster
    factory = QueueFactory(where_to.url, prefix)
    q = factory("held-open")
    key = f"{prefix}:{{held}}"
    client = await q.client()
    held = await Held(client, key, "node" if where == "node" else "watch").take()
    await _cancelled_wait(held)
    if where == "the queue's client":
        await held.node.disconnect()
    opener: Callable[[], Awaitable[Any]] = (
        (lambda: client.get(key))
        if where == "the queue's client"
        else (lambda: held.call("GET", key))
    )
    node = _home(where_to, held)
    plug = socket.socket()
    reading: asyncio.Future[Any] | None = None
    try:
        with frozen(node):
            if phase == "socket":
                plug.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    plug.connect(("127.0.0.1", node.port))  # fills the queue of the socket
                await asyncio.sleep(0.1)
            reading = asyncio.ensure_future(opener())
            await asyncio.sleep(0.3)
            assert not reading.done(), "the open ended"
            opening = [c for c in held.node._connections if _opening(c) > 0]
            assert len(opening) == 1, "no open under way"
            assert opening[0].is_connected is (phase == "handshake")
            assert where == "the queue's client" or opening[0] is held.conn
            closing = asyncio.ensure_future(q.close())
            await asyncio.sleep(0.5)
            assert not closing.done(), "close() did not wait for the open under way"
        assert await asyncio.wait_for(reading, HANG_S) is None
        await asyncio.wait_for(closing, HANG_S)
    finally:
        if reading is not None:
            reading.cancel()
            with contextlib.suppress(BaseException):
                await reading
        plug.close()
        thaw(node)
        await held.give_back()
        await factory.aclose()


def _counted(client: Any) -> list[str]:
    """The connections of ``client``'s nodes still counting an open or a read."""
    out = []
    for node in list(client.nodes_manager.nodes_cache.values()):
        for conn in node._connections:
            reading = conn.__dict__["_kq_owed"]["reading"]
            if _opening(conn) or reading:
                out.append(f"{node.name}: opening {_opening(conn)}, reading {reading}")
    return out


async def test_many_random_cancelled_waits_and_opens_leave_no_count(
    cluster: LocalCluster, factory: QueueFactory, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """120 calls cancelled at random moments (blocking waits on held-aside connections
    and on the queue's client, on open or closed connections, some while their node is
    frozen so that the cancel lands in the open) leave no open or read counted, and
    close() then returns at once."""
    rng = random.Random(20261207)
    q = factory("held-random")
    client = await q.client()
    key = f"{prefix}:{{held}}"
    holders = [await Held(client, key, how).take() for how in ("watch", "node")]
    cut_in_open = 0
    try:
        for i in range(120):
            held = rng.choice(holders)
            kind = rng.choice(["held", "held", "client", "frozen"])
            if rng.random() < 0.5:
                if kind == "client":
                    await held.node.disconnect()
                elif held.conn.is_connected:
                    await held.conn.disconnect()
            if kind == "client":
                call: Awaitable[Any] = client.blpop([f"{key}:nothing"], timeout=5)
            else:
                call = held.blpop(f"{key}:nothing", 5)
            waiting = asyncio.ensure_future(call)
            with frozen(_home(cluster, held)) if kind == "frozen" else contextlib.nullcontext():
                await asyncio.sleep(rng.uniform(0, 0.02 if kind != "frozen" else 0.1))
                if any(_opening(c) for c in held.node._connections):
                    cut_in_open += 1
                waiting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await waiting
            left = _counted(client)
            assert not left, f"round {i} ({kind}): {left}"
        for held in holders:
            await _cancelled_wait(held)
        with caplog.at_level(logging.WARNING, logger="kitium_queue"):
            took = await _timed_close(q)
        assert took < 1.5, f"close() took {took:.2f} s"
        assert "close() waited" not in caplog.text, caplog.text
        assert cut_in_open >= 10, f"only {cut_in_open} cancels landed in an open"
    finally:
        for held in holders:
            await held.give_back()
