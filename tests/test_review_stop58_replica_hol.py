"""Replica-acknowledged writes and concurrent ``add_job`` calls (docs/replicas.md).

Concurrent ``add_job`` calls share round trips; with ``ReplicaAcks`` the ``WAIT`` of a
round trip held every call of it, and the calls made while it was out waited to go in
the next one. So an ``add_job(..., wait_replicas=0)`` made while another call's ``WAIT``
ran (a lagging replica: up to its timeout) returned only after it. The calls the queue
follows with a ``WAIT`` now go in round trips of their own, on their own connection:

* a call that waits for no replica is written and returns while another call's ``WAIT``
  is still out;
* the waiting calls keep their guarantee (``WAIT`` counts the writes of its own
  connection: a waiting call made meanwhile is still not confirmed by a frozen
  replica), and concurrent waiting calls still share one ``WAIT``;
* a queue without ``ReplicaAcks`` sends no ``WAIT`` and batches as before.

A primary with one replica on loopback (``test_replicas.Pair``); the replica is frozen
(SIGSTOP) so that a ``WAIT`` runs to its timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis

import test_replicas
from helpers import wait_until
from kitium_queue import JobQueue, ReplicaAckError, ReplicaAcks
from test_replicas import Pair

pytestmark = pytest.mark.redis_only


#: test_replicas' fixture: its primary and replica.
pair = test_replicas.pair


@pytest.fixture
async def primary(pair: Pair) -> AsyncIterator[redis.asyncio.Redis]:
    c = redis.asyncio.Redis(port=pair.primary.port)
    try:
        yield c
    finally:
        await c.aclose()


async def _calls(primary: redis.asyncio.Redis, command: str) -> int:
    """How many times the primary ran ``command`` since it started."""
    stats = await primary.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def _wait_in_flight(primary: redis.asyncio.Redis) -> bool:
    """Whether a client of the primary is blocked in ``WAIT``."""
    return any(c.get("cmd") == "wait" for c in await primary.client_list())


async def test_a_call_that_does_not_wait_is_not_held_by_another_calls_wait(
    pair: Pair, primary: redis.asyncio.Redis, prefix: str
) -> None:
    q = JobQueue("hol", redis=pair.primary.url, prefix=prefix)
    ReplicaAcks(q, replicas=1, timeout_ms=2500)
    try:
        await q.add_job("warm", 0)  # connected, scripts loaded, the replica has it
        pair.freeze()
        first = asyncio.ensure_future(q.add_job("waits", 1))
        await wait_until(lambda: _wait_in_flight(primary), message="the first WAIT is out")
        # Made while that WAIT is out: one more that waits, five that do not.
        second = asyncio.ensure_future(q.add_job("waits", 2))
        free = asyncio.ensure_future(
            asyncio.gather(*(q.add_job("free", i, wait_replicas=0) for i in range(5)))
        )
        done, _ = await asyncio.wait({first, second, free}, return_when=asyncio.FIRST_COMPLETED)
        assert done == {free}, "the calls that wait for nothing waited behind the WAIT"
        ids = free.result()
        assert len(set(ids)) == 5
        for jid in ids:
            assert await q.get_job_status(jid) is not None
        # The waiting calls keep their guarantee: neither is confirmed by the frozen
        # replica, although other connections wrote meanwhile. Both are written.
        for task in (first, second):
            with pytest.raises(ReplicaAckError, match="0 of 1 replica") as ei:
                await task
            assert await q.get_job_status(ei.value.written_ids[0]) is not None
    finally:
        pair.thaw()
        await q.close()


async def test_a_waiting_call_returns_once_the_replica_has_its_job(
    pair: Pair, primary: redis.asyncio.Redis, prefix: str
) -> None:
    """Waiting and free calls mixed: each waiting one returns once the replica holds its
    own job (its WAIT followed its script on the same connection)."""
    q = JobQueue("hol2", redis=pair.primary.url, prefix=prefix)
    ReplicaAcks(q, replicas=1, timeout_ms=5000)
    replica = redis.asyncio.Redis(port=pair.replica.port)
    try:
        await q.add_job("warm", 0)
        pair.freeze()
        waiting = [asyncio.ensure_future(q.add_job("waits", i)) for i in range(3)]
        await wait_until(lambda: _wait_in_flight(primary), message="a WAIT is out")
        free = await asyncio.gather(*(q.add_job("free", i, wait_replicas=0) for i in range(3)))
        assert not any(t.done() for t in waiting)
        pair.thaw()
        for task in asyncio.as_completed(waiting):
            jid = await task
            assert await replica.exists(q.keys.job(jid)) == 1
        for jid in free:
            assert await q.get_job_status(jid) is not None
    finally:
        pair.thaw()
        await replica.aclose()
        await q.close()


async def test_concurrent_waiting_calls_still_share_one_wait(
    pair: Pair, primary: redis.asyncio.Redis, prefix: str
) -> None:
    q = JobQueue("hol3", redis=pair.primary.url, prefix=prefix)
    ReplicaAcks(q, replicas=1, timeout_ms=2000)
    try:
        await q.add_job("warm", 0)
        waits, scripts = await _calls(primary, "wait"), await _calls(primary, "evalsha")
        ids = await asyncio.gather(
            *(q.add_job("n", i, wait_replicas=i % 2) for i in range(80)),
        )
        assert len(set(ids)) == 80
        # Each lane: its first call alone, the 39 made meanwhile in one round trip. The
        # 40 waiting calls shared two WAITs; the 40 others ran none.
        assert await _calls(primary, "wait") - waits == 2
        assert await _calls(primary, "evalsha") - scripts == 4
    finally:
        await q.close()


async def test_a_plain_queue_sends_no_wait_and_batches_as_before(
    pair: Pair, primary: redis.asyncio.Redis, prefix: str
) -> None:
    q = JobQueue("hol4", redis=pair.primary.url, prefix=prefix)
    try:
        await q.add_job("warm", 0)
        waits, scripts = await _calls(primary, "wait"), await _calls(primary, "evalsha")
        ids = await asyncio.gather(*(q.add_job("n", i) for i in range(50)))
        assert len(set(ids)) == 50
        assert await _calls(primary, "wait") == waits
        assert await _calls(primary, "evalsha") - scripts == 2
    finally:
        await q.close()
