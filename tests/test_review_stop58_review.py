"""Concurrent add_job calls waiting in a producer lane (coalesce.py).

* a caller cancelled while its call waits in the lane adds nothing (its job was sent in
  the next batch all the same: a retry after a timeout added it twice);
* ``close()`` waits for the calls in the lanes before it releases the connections (the
  batch sent after it connected again, leaving a client nobody closed).
"""

from __future__ import annotations

import asyncio

import pytest

from helpers import QueueFactory

pytestmark = pytest.mark.redis_only


async def test_a_waiting_caller_cancelled_before_its_batch_is_sent_adds_nothing(
    make_queue: QueueFactory,
) -> None:
    q = make_queue()
    await q.add_job("warm", None)  # connected: the next call goes out at once
    first = asyncio.create_task(q.add_job("first", None))
    await asyncio.sleep(0)  # the first call is in flight: the next ones wait in the lane
    waiting = asyncio.create_task(q.add_job("cancelled", None))
    kept = asyncio.create_task(q.add_job("kept", None))
    for _ in range(3):
        await asyncio.sleep(0)
    assert not waiting.done()
    waiting.cancel()
    await first
    await kept
    with pytest.raises(asyncio.CancelledError):
        await waiting
    names = sorted(j.name for j in await q.get_jobs_by_status("waiting"))
    assert names == ["first", "kept", "warm"]


async def test_close_while_calls_wait_in_a_lane_leaves_no_client_open(
    make_queue: QueueFactory,
) -> None:
    q = make_queue()
    await q.add_job("warm", None)
    calls = [asyncio.create_task(q.add_job(f"j{i}", None)) for i in range(5)]
    for _ in range(3):
        await asyncio.sleep(0)
    await q.close()
    ids = await asyncio.gather(*calls)
    # close() waited for the calls in the lane: it released the client they used, and
    # none of them connected again after it.
    assert not q.ctx.connected
    assert len(set(ids)) == 5
    assert len(await q.get_jobs_by_status("waiting")) == 6
