"""``close()`` lets the calls under way end before it closes the queue's connections.

Before, ``JobQueue.close()`` (and the close a job starts on its own queue) disconnected
the shared client under the calls other tasks still ran on it: a read was cut
("queue ... was closed while ... ran"), an ``add_job`` lost its answer. Now the calls
under way end (within ``context.CLOSE_GRACE_S``), calls made once the close began connect
again, and connections nobody is waiting on (a subscription, a connection held aside)
are not waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from _redis import RedisServer, thaw
from helpers import QueueFactory, wait_until
from kitium_queue import ConnectionUnavailableError, JobQueue, JobStatus
from kitium_queue import context as context_module

# Generous bounds: a call that should return but hangs fails the test, never wedges it.
HANG_S = 15
CALLS = 24  # more than the connections the queue has open: some open during the pause
# How long Redis holds the calls: long enough that the steps a test takes before its
# checks of what is still held fit in it on a loaded machine (300 ms did not once: the
# calls were answered and the close had ended), well within context.CLOSE_GRACE_S (3 s).
PAUSE_MS = 1000


@pytest.fixture
async def make(backend_url: str, prefix: str) -> AsyncIterator[QueueFactory]:
    factory = QueueFactory(backend_url, prefix)
    yield factory
    await asyncio.wait_for(factory.aclose(), HANG_S)


@pytest.fixture(scope="module")
def own_server() -> Iterator[RedisServer]:
    """A server of this module's own for the tests that pause it: ``CLIENT PAUSE ... ALL``
    on the session server would hold the calls of the other test process's tests too."""
    with RedisServer() as srv:
        yield srv


@contextlib.asynccontextmanager
async def paused(url: str, ms: int) -> AsyncIterator[None]:
    """Redis holds every client's commands for ``ms`` (``CLIENT PAUSE ... ALL``): the
    calls made meanwhile are sent and wait for their replies."""
    admin = aioredis.Redis.from_url(url)
    try:
        await admin.client_pause(ms, all=True)
        yield
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(admin.client_unpause(), HANG_S)
        await admin.aclose()


def _calls(q: JobQueue, ids: list[str]) -> list[asyncio.Task[Any]]:
    """Reads and writes of every kind, each in a task of its own."""
    made: list[Any] = []
    for i in range(CALLS):
        jid = ids[i % len(ids)]
        kind = i % 4
        if kind == 0:
            made.append(q.get_job_status(jid))
        elif kind == 1:
            made.append(q.get_job_detail(jid))
        elif kind == 2:
            made.append(q.add_job("t", {"n": i}))
        else:
            made.append(q.get_jobs_by_status("waiting", limit=5))
    return [asyncio.ensure_future(c) for c in made]


async def _check(
    q: JobQueue, ids: list[str], got: list[Any], status: JobStatus = JobStatus.WAITING
) -> None:
    failed = [g for g in got if isinstance(g, BaseException)]
    assert not failed, failed
    added: list[str] = []
    for i, outcome in enumerate(got):
        kind = i % 4
        if kind == 0:
            assert outcome is not None and outcome.status == status
        elif kind == 1:
            assert outcome is not None and outcome.id == ids[i % len(ids)]
        elif kind == 2:
            assert isinstance(outcome, str)
            added.append(outcome)
        else:
            assert isinstance(outcome, list)
            assert len(outcome) == 5 or status != JobStatus.WAITING  # ids: all waiting
    # Nothing is lost: every job added while the close ran is there (the queue connects
    # again for these reads).
    for jid in added:
        info = await asyncio.wait_for(q.get_job_status(jid), HANG_S)
        assert info is not None and info.status == JobStatus.WAITING


@pytest.mark.redis_only
async def test_close_lets_the_calls_under_way_end(
    make: QueueFactory, own_server: RedisServer
) -> None:
    q = make("graceful", redis=own_server.url)
    ids = [await q.add_job("t", {"i": i}) for i in range(6)]
    async with paused(own_server.url, PAUSE_MS):
        tasks = _calls(q, ids)
        await asyncio.sleep(0.05)  # sent, and held by the pause
        assert not any(t.done() for t in tasks)
        await asyncio.wait_for(q.close(), HANG_S)
        got = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), HANG_S)
    await _check(q, ids, got)


async def test_close_lets_the_calls_just_started_end(make: QueueFactory) -> None:
    """No pause: the calls are in flight for a moment only (memory:// answers at once)."""
    q = make("graceful-mem")
    ids = [await q.add_job("t", {"i": i}) for i in range(6)]
    tasks = _calls(q, ids)
    await asyncio.sleep(0)  # every call has started
    await asyncio.wait_for(q.close(), HANG_S)
    got = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), HANG_S)
    await _check(q, ids, got)


@pytest.mark.redis_only
async def test_calls_made_once_close_began_connect_again(
    make: QueueFactory, own_server: RedisServer
) -> None:
    q = make("graceful-later", redis=own_server.url)
    ids = [await q.add_job("t", {"i": i}) for i in range(6)]
    async with paused(own_server.url, PAUSE_MS):
        held = _calls(q, ids)
        await asyncio.sleep(0.05)
        closing = asyncio.ensure_future(q.close())
        await asyncio.sleep(0.05)  # the close waits for the held calls
        assert not closing.done()
        later = _calls(q, ids)  # on a new client: they wait for the pause only
        got = await asyncio.wait_for(asyncio.gather(*held, *later, return_exceptions=True), HANG_S)
        await asyncio.wait_for(closing, HANG_S)
    await _check(q, ids, got[:CALLS])
    await _check(q, ids, got[CALLS:])


@pytest.mark.redis_only
@pytest.mark.parametrize("how", ["close", "close-in-task"])
async def test_a_job_that_closes_its_queue_lets_other_calls_end(
    make: QueueFactory, backend_url: str, how: str
) -> None:
    """The close a job starts releases the connections once the worker stopped and the
    event handlers ended: calls other tasks made then, held by Redis, are not cut."""
    q = make("graceful-self", worker={"shutdown_timeout": 2000})
    ids = [await q.add_job("t", {"i": i}, delay=600_000) for i in range(6)]
    held: list[asyncio.Task[Any]] = []

    @q.process("quit")
    async def quit_(job: Any) -> str:
        if how == "close":
            await q.close()
        else:  # a task the job starts and awaits is inside the worker too
            await asyncio.gather(q.close())
        return "bye"

    async def on_completed(data: Any) -> None:
        # The close releases the connections once this handler ended: by then the
        # worker has stopped, and these calls are under way, held by the pause.
        await wait_until(q.worker.stopped.is_set, timeout=HANG_S, message="the stop")
        admin = aioredis.Redis.from_url(backend_url)
        try:
            await admin.client_pause(300, all=True)
        finally:
            await admin.aclose()
        held.extend(_calls(q, ids))
        await asyncio.sleep(0.05)

    q.on("job-completed", on_completed)
    jid = await q.add_job("quit", {})
    await q.start()
    worker = q.worker
    await wait_until(worker.stopped.is_set, timeout=HANG_S, message="the worker to stop")
    await asyncio.wait_for(q.lifecycle.settled(), HANG_S)
    assert held, "the handler ran before the close released the connections"
    got = await asyncio.wait_for(asyncio.gather(*held, return_exceptions=True), HANG_S)
    await _check(q, ids, got, JobStatus.DELAYED)
    info = await asyncio.wait_for(q.get_job_status(jid), HANG_S)
    assert info is not None and info.status == JobStatus.COMPLETED


@pytest.mark.redis_only
async def test_close_does_not_wait_for_connections_nobody_waits_on(
    make: QueueFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A subscription on the queue's client, a connection held aside (a client of one
    connection), and those the packed script path keeps between calls are not calls
    under way: close() does not wait for them (a grace longer than the bound below
    would fail the test)."""
    monkeypatch.setattr(context_module, "CLOSE_GRACE_S", HANG_S * 4)
    q = make("graceful-held")
    ids = [await q.add_job("t", {"i": i}) for i in range(6)]
    await asyncio.gather(*_calls(q, ids))  # the packed path keeps some connections
    client = await q.client()
    pubsub = client.pubsub()
    await pubsub.subscribe("kq-graceful-channel")
    listening = asyncio.ensure_future(pubsub.get_message(timeout=HANG_S * 2))
    one = client.client()  # a client of one connection, taken from the queue's pool
    assert await one.ping()
    await asyncio.sleep(0.05)
    await asyncio.wait_for(q.close(), HANG_S)
    listening.cancel()
    with contextlib.suppress(BaseException):
        await listening
    await pubsub.aclose()
    await one.aclose()


@pytest.mark.redis_only
async def test_close_does_not_wait_for_a_caller_that_gave_up_its_place_in_line(
    make: QueueFactory, backend_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call cancelled while it waited for a connection of a pool whose connections
    were all in use leaves its place in the pool's line: no call waits there."""
    monkeypatch.setattr(context_module, "CLOSE_GRACE_S", HANG_S * 4)
    q = make("graceful-line", redis=f"{backend_url}?max_connections=2")
    jid = await q.add_job("t", {})
    client = await q.client()
    held: list[Any] = []  # with the one add_job keeps aside, every connection of the pool
    while len(client.connection_pool._in_use_connections) < 2:
        held.append(client.client())
        assert await held[-1].ping()
    waiting = asyncio.ensure_future(q.get_job_status(jid))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    waiting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    await asyncio.wait_for(q.close(), HANG_S)
    for one in held:
        await one.aclose()


# ------------------------------------------------------------------ a frozen server
async def test_close_on_a_frozen_server_gives_up_after_the_grace(
    server: RedisServer, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis stopped (SIGSTOP) with calls under way: close() waits for them only
    ``CLOSE_GRACE_S``, then closes the connections (those calls fail, saying the queue
    was closed), and the queue works again once Redis does."""
    monkeypatch.setattr(context_module, "CLOSE_GRACE_S", 0.5)
    q = JobQueue("graceful-frozen", redis=server.url, prefix=prefix)
    try:
        jid = await q.add_job("t", {})
        await asyncio.gather(*(q.get_job_status(jid) for _ in range(8)))  # open, idle
        assert server.pid is not None
        os.kill(server.pid, signal.SIGSTOP)
        try:
            reads = [asyncio.ensure_future(q.get_job_status(jid)) for _ in range(4)]
            await asyncio.sleep(0.05)
            await asyncio.wait_for(q.close(), HANG_S)
            got = await asyncio.wait_for(asyncio.gather(*reads, return_exceptions=True), HANG_S)
        finally:
            thaw(server)
        for outcome in got:
            assert isinstance(outcome, ConnectionUnavailableError), repr(outcome)
            assert "was closed while" in str(outcome)
        info = await asyncio.wait_for(q.get_job_status(jid), HANG_S)
        assert info is not None and info.status == JobStatus.WAITING
    finally:
        thaw(server)
        await asyncio.wait_for(q.close(), HANG_S)
