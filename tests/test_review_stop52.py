"""Review of close() on held-aside connections and of the tenant registry's pruning.

* close() and a held-aside connection whose blocking wait was cancelled while the
  connection was being opened again. A blocking wait on a connection held aside (a
  client of one connection taken from the queue's client) that a cancelled wait left
  closed opens the connection again before it sends. Cancelled during that open (the
  server slow to answer the handshake, as during a failover), it leaves the connection
  closed with no open under way, but with the reply it was about to wait for still
  counted as owed (``connerrors``: owed is counted before the send, and only a read or
  the next send sets it back). ``close()`` took that count for a call under way: it
  waited its whole grace (``context.CLOSE_GRACE_S``, 3 s) and logged "waited 3 s for 1
  call(s) under way". Nothing is owed on a closed connection: what serves a call there
  is an open under way (``context._serving``).
* A registration that adds the queue to the registry's set between a reader's check
  and its removal stays registered only because it wrote its ``tenancy:registered``
  key before that add (``install._attach``, ``roster.prune``): with the two the other
  way round, the queue was left out of the set; no other test orders them so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import pytest
import redis.asyncio

from _redis import RedisServer, frozen
from helpers import QueueFactory
from kitium_queue import JobQueue
from kitium_queue.context import CLOSE_GRACE_S
from kitium_queue.features.tenancy import TenantRegistry
from kitium_queue.features.tenancy import keys as tk

pytestmark = [pytest.mark.redis_only]

HANG_S = 20  # a call that should return but hangs fails the test, never wedges it


async def _cancel(call: Any, after_s: float, conn: Any = None) -> None:
    """Cancel ``call`` after ``after_s``; with ``conn``, while that connection opens."""
    waiting = asyncio.ensure_future(call)
    await asyncio.sleep(after_s)
    assert not waiting.done(), "the call ended before it was cancelled"
    if conn is not None:
        assert conn._kq_opening > 0, "no open under way"
    waiting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiting


async def test_close_does_not_wait_for_a_wait_cancelled_while_its_connection_opened(
    server: RedisServer, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    assert CLOSE_GRACE_S >= 3
    factory = QueueFactory(server.url, prefix)
    q: JobQueue = factory("held-reopen")
    one = None
    try:
        await q.add_job("n", {})
        one = (await q.client()).client()
        assert await one.ping()
        # A first wait cancelled during its read leaves the connection closed.
        await _cancel(one.blpop(["nothing"], timeout=5), 0.05)
        conn = one.connection
        assert not conn.is_connected
        with frozen(server):
            # The next wait opens it again; the server answers no handshake meanwhile.
            await _cancel(one.blpop(["nothing"], timeout=5), 0.3, conn)
        assert not conn.is_connected
        assert conn._kq_opening == 0, "an open is still counted as under way"
        with caplog.at_level(logging.WARNING, logger="kitium_queue"):
            t0 = time.monotonic()
            await asyncio.wait_for(q.close(), HANG_S)
            took = time.monotonic() - t0
        assert took < 1.5, f"close() took {took:.2f} s"
        assert "close() waited" not in caplog.text, caplog.text
    finally:
        if one is not None:
            await one.aclose()
        await factory.aclose()


# ------------------------------------------------------------------ tenancy registration
async def test_a_registration_between_a_readers_check_and_its_removal_is_kept(
    make_queue: QueueFactory,
    redis_client: redis.asyncio.Redis,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The one order that loses a registration unless it writes its mark first: the
    reader finds the queue gone, the registration adds the queue to the set (already a
    member), the reader takes it out and checks again, and only then does the rest of
    the registration run. The registration's ``tenancy:registered`` key, written before
    its add, is what the reader's second check sees (``roster.prune``)."""
    kept, gone = make_queue("kept"), make_queue("gone")
    reg = TenantRegistry.for_queue(kept)
    await reg.attach(kept)
    await reg.attach(gone)
    await reg.create_tenant({"tenant_id": "t"})
    doomed = [k async for k in redis_client.scan_iter(match=gone.keys.base + "*")]
    await redis_client.delete(*doomed)

    again = make_queue("gone")  # attached by an administrator: no declarations written
    reader, registrant = await kept.client(), await again.client()
    srem, sadd = reader.srem, registrant.sadd
    at_removal, added, checked = asyncio.Event(), asyncio.Event(), asyncio.Event()
    key = tk.registry_queues(prefix)

    async def removal(name: str, *members: Any) -> Any:
        at_removal.set()  # the reader found the queue gone
        await added.wait()
        return await srem(name, *members)

    async def add(name: str, *members: Any) -> Any:
        out = await sadd(name, *members)
        if name == key:
            added.set()
            await checked.wait()  # the reader's removal and second check come first
        return out

    monkeypatch.setattr(reader, "srem", removal)
    monkeypatch.setattr(registrant, "sadd", add)
    reading = asyncio.ensure_future(reg.queues())
    await asyncio.wait_for(at_removal.wait(), HANG_S)
    registering = asyncio.ensure_future(reg.attach(again))
    try:
        listed = await asyncio.wait_for(reading, HANG_S)
        checked.set()
        await asyncio.wait_for(registering, HANG_S)
    finally:
        monkeypatch.undo()
        reading.cancel()
        registering.cancel()
    assert listed == ["gone", "kept"]
    assert {m.decode() for m in await redis_client.smembers(key)} == {"gone", "kept"}
    await reg.update_tenant("t", weight=5)
    assert float(await redis_client.hget(tk.tenant(again.keys, "t"), "w")) == 5
