"""``close()`` and a worker's stop: cases ``test_graceful_close.py`` and
``test_frozen_stop.py`` leave out.

* A command still being sent (its bytes not all taken by the socket yet) is a call under
  way, whether or not its replies are counted: with ``socket_timeout`` in ``redis=`` they
  are not (``connerrors.bound_replies``), and close() took the connection for one held
  aside, idle, and cut the command mid-send.
* A caller waiting in the pool's line is in no list for a moment once a connection is
  handed back to it (until it takes it, at the loop's next turn): close() that looked
  then saw no call under way, and cut that caller's command.
* A close() that finds another under way returns once that one released the client.
"""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
import redis.asyncio as aioredis

from _redis import RedisServer, thaw
from kitium_queue import JobQueue
from kitium_queue import context as context_module

pytestmark = pytest.mark.redis_only

# Generous bounds: a call that should return but hangs fails the test, never wedges it.
HANG_S = 15
#: More than the sockets of a loopback connection take while the server reads nothing.
BIG = 48 * 1024 * 1024


async def test_close_lets_a_command_being_sent_end(
    server: RedisServer, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis stopped (SIGSTOP) while a large command is being sent on the queue's
    client of a ``socket_timeout`` URL: close() waits for it (a grace longer than the
    test), and once Redis runs again the command is answered, not cut."""
    monkeypatch.setattr(context_module, "CLOSE_GRACE_S", HANG_S * 4)
    q = JobQueue("review-send", redis=f"{server.url}?socket_timeout=30", prefix=prefix)
    key = f"{prefix}:big"
    try:
        client = await q.client()
        assert server.pid is not None
        os.kill(server.pid, signal.SIGSTOP)
        try:
            writing = asyncio.ensure_future(client.set(key, b"x" * BIG))
            await asyncio.sleep(0.2)
            assert not writing.done()  # held: the socket takes no more
            closing = asyncio.ensure_future(q.close())
            await asyncio.sleep(0.3)
            closed_early = closing.done()
        finally:
            thaw(server)
        await asyncio.wait_for(closing, HANG_S)
        outcome = await asyncio.wait_for(asyncio.gather(writing, return_exceptions=True), HANG_S)
        assert not closed_early, "close() did not wait for the command being sent"
        assert outcome == [True], outcome
        check = aioredis.Redis.from_url(server.url)
        try:
            assert await check.strlen(key) == BIG
        finally:
            await check.aclose()
    finally:
        thaw(server)
        await asyncio.wait_for(q.close(), HANG_S)


async def test_a_second_close_returns_once_the_first_released_the_client(
    server: RedisServer, prefix: str
) -> None:
    """Two close() at once (a signal handler's and the program's own): the one that
    finds the client taken by the other returns once that one released it, not while
    the calls under way still run on connections left open."""
    q = JobQueue("review-twice", redis=server.url, prefix=prefix)
    try:
        jid = await q.add_job("t", {})
        admin = aioredis.Redis.from_url(server.url)
        try:
            await admin.client_pause(400, all=True)
        finally:
            await admin.aclose()
        calls = [asyncio.ensure_future(q.get_job_status(jid)) for _ in range(6)]
        await asyncio.sleep(0.05)  # sent, and held by the pause
        first = asyncio.ensure_future(q.close())
        await asyncio.sleep(0.05)
        assert not first.done()  # it waits for the calls
        await asyncio.wait_for(q.close(), HANG_S)
        assert first.done(), "the second close() returned before the first released"
        assert all(c.done() for c in calls)
        got = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), HANG_S)
        assert all(info is not None and info.id == jid for info in got), got
    finally:
        await asyncio.wait_for(q.close(), HANG_S)


async def test_close_lets_a_caller_handed_a_connection_end(
    server: RedisServer, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The only connection of the pool is held aside (a client of one connection), a
    read waits in the pool's line for it, close() waits for that read; the connection
    comes back just as close() looks again (its looks and this test's sleeps fall
    together): the read gets it and ends, it is not cut."""
    monkeypatch.setattr(context_module, "CLOSE_GRACE_S", HANG_S * 4)
    for _ in range(3):
        q = JobQueue("review-line", redis=f"{server.url}?max_connections=1", prefix=prefix)
        try:
            jid = await q.add_job("t", {})
            client = await q.client()
            one = client.client()  # takes the pool's only connection
            assert await one.ping()
            reading = asyncio.ensure_future(q.get_job_status(jid))
            await asyncio.sleep(0.02)
            assert not reading.done()  # in the pool's line
            closing = asyncio.ensure_future(q.close())
            await asyncio.sleep(2 * context_module._CALLS_POLL_S)
            assert not closing.done()  # it waits for the read
            await one.aclose()  # the connection goes to the read
            await asyncio.wait_for(closing, HANG_S)
            got = await asyncio.wait_for(asyncio.gather(reading, return_exceptions=True), HANG_S)
            assert got[0] is not None and getattr(got[0], "id", None) == jid, got
        finally:
            await asyncio.wait_for(q.close(), HANG_S)
