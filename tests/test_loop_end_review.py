"""Closing a queue's connections when their event loop ends (``context._LoopEnd``):
two defects found by review, each reproduced first.

* an app's async generator that owns a queue and awaits ``close()`` in its ``finally``,
  closed by ``asyncio.run``'s end together with the generator the queue parks in the
  loop: 14 of 20 such ``close()`` calls raised ``RuntimeError: aclose(): asynchronous
  generator is already running``, skipping the app's cleanup after it;
* ``close()`` awaited in another loop while the queue's loop runs on in a thread kept
  the old client, with its open connections, until that loop ended: a long-lived
  background loop collected one more per close (30 of 30). They are now closed there
  ``LEFT_GRACE_S`` later.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis

from kitium_queue import JobQueue, context

pytestmark = pytest.mark.redis_only


def test_close_in_an_async_generators_finally_at_the_loops_end(redis_url: str, prefix: str) -> None:
    errors: list[str] = []
    kept: list[Any] = []

    async def holder(name: str) -> AsyncIterator[JobQueue]:
        q = JobQueue(name, redis=redis_url, prefix=prefix)
        await q.add_job("x", None)
        try:
            yield q
        finally:
            try:
                await q.close()
            except BaseException as exc:
                errors.append(f"{name}: {type(exc).__name__}: {exc}")
                raise

    async def main() -> None:
        for i in range(20):
            g = holder(f"g{i}")
            await g.__anext__()
            kept.append(g)  # suspended: asyncio.run's end closes them

    asyncio.run(main())
    assert errors == []


def test_close_from_another_loop_releases_the_connections_of_a_running_one(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(context, "LEFT_GRACE_S", 0.3)
    bg = asyncio.new_event_loop()
    thread = threading.Thread(target=bg.run_forever, daemon=True)
    thread.start()
    admin = redis.Redis.from_url(redis_url)
    try:
        base = len(admin.client_list())
        for i in range(10):
            q = JobQueue(f"left{i}", redis=redis_url, prefix=prefix)
            asyncio.run_coroutine_threadsafe(q.add_job("x", None), bg).result(10)
            asyncio.run(q.close())  # from this thread's own loop
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (context._LEFT or len(admin.client_list()) > base):
            time.sleep(0.05)
        assert len(context._LEFT) == 0
        assert len(admin.client_list()) == base
    finally:
        bg.call_soon_threadsafe(bg.stop)
        thread.join(5)
        bg.close()
        admin.close()


def test_a_transport_of_another_event_loop_is_left_alone() -> None:
    """uvloop's transports have a read-only ``_closing``: dropping one raised
    AttributeError out of ``close()`` from another loop (and out of the refused call)."""
    from kitium_queue.pools import _drop_transport

    class Foreign:
        _loop = None

        @property
        def _closing(self) -> bool:
            return False

    _drop_transport(Foreign())  # no error: left to garbage collection
