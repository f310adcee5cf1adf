"""Loops whose stop cancelled them once: the region monitor, the encryption rotation's
gate, and a partitioned queue's count refresh.

Before Python 3.12, ``asyncio.wait_for`` drops a cancel that lands as what it waits for
ends (gh-86296), and redis-py's command calls wait so when the connection has a
``socket_timeout``; the regions' record calls do too. A loop whose call took its stop's
cancel for the reply went round again, and the stop (one ``cancel()``, then an
``await``) waited for it for ever: ``Monitor.stop`` (the region monitor's health
rounds), ``RotationService.stop`` (the gate that decides whether this process
campaigns for the rotation pass, which even started the campaign again) and a
partitioned queue's close (its count refresh then slept a whole ``_REFRESH_S``, 10 s,
before it saw the release). The stops
now cancel again until the loop ended (``leader.cancel_and_wait``).

The dropped cancel is forced: a call returns its reply and swallows the cancel that
comes meanwhile, as ``wait_for`` does in the race.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio.connection import Connection

from helpers import QueueFactory
from kitium_queue.features.encryption import EncryptionManager, KeyConfig, generate_key
from kitium_queue.features.regions.topology import Topology
from regionpair import region_pair
from test_review_stop60_close_hang import STOP_S, _ended

#: The region pair's servers (``port``, ``port + 1``).
PORT = 28470  # and 28471; below the ephemeral range (32768+), where a fixed port can be taken


async def _swallow(entered: asyncio.Event) -> None:
    """Until a cancel comes, which is swallowed (taken for the reply)."""
    entered.set()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.get_running_loop().create_future()


async def test_region_monitor_stop_ends_when_a_rounds_call_dropped_the_cancel() -> None:
    async with region_pair(PORT, "stop61", 2000) as (m, _):
        monitor = m.monitor
        assert monitor is not None and monitor._task is not None
        loop_task = monitor._task
        topo = monitor.topo
        entered = asyncio.Event()
        armed = True

        async def refresh() -> Any:
            nonlocal armed
            view = await Topology.refresh(topo)  # every region's record, read for real
            if armed and asyncio.current_task() is loop_task:
                armed = False
                await _swallow(entered)
            return view

        topo.refresh = refresh  # type: ignore[method-assign]
        await asyncio.wait_for(entered.wait(), STOP_S)
        stopping = asyncio.ensure_future(monitor.stop())
        assert await _ended(stopping, loop_task), "the region monitor's stop hung"
        stopping.result()
        assert loop_task.done() and not armed


@pytest.fixture
async def rq(redis_url: str, prefix: str) -> AsyncIterator[QueueFactory]:
    factory = QueueFactory(redis_url, prefix)
    yield factory
    await factory.aclose()


async def test_rotation_gate_stop_ends_when_its_read_dropped_the_cancel(
    rq: QueueFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gate's read of the queue's current key, over a connection whose reply comes
    with the stop's cancel and swallows it."""
    q = rq("stop61")
    manager = EncryptionManager(q, keys=[KeyConfig("k1", generate_key())])
    service = manager.service
    assert service is not None
    await q.client()  # connected: the gate's first read on it is its HGET
    entered = asyncio.Event()
    gate: list[asyncio.Task[Any] | None] = [None]
    real_read = Connection.read_response

    async def read_response(self: Any, *args: Any, **kwargs: Any) -> Any:
        reply = await real_read(self, *args, **kwargs)
        if gate[0] is not None and asyncio.current_task() is gate[0]:
            gate[0] = None
            await _swallow(entered)
        return reply

    monkeypatch.setattr(Connection, "read_response", read_response)
    await service.start(q)
    loop_task = gate[0] = service._task
    assert loop_task is not None
    await asyncio.wait_for(entered.wait(), STOP_S)
    stopping = asyncio.ensure_future(service.stop())
    assert await _ended(stopping, loop_task), "the rotation gate's stop hung"
    stopping.result()
    assert loop_task.done()
    assert not service.leader.is_leader
    assert service.leader._task is None  # its campaign stopped with it


async def test_partition_count_release_ends_when_a_refresh_dropped_the_cancel(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A partitioned queue's ``close()`` stops its count record's refresh: a refresh whose
    call took the cancel for its reply went to sleep for ``_REFRESH_S`` before it saw
    the release, and the close waited for it (10 s; for ever in effect here)."""
    from kitium_queue.features import partitioncount
    from kitium_queue.features.partitioned import PartitionedQueue

    monkeypatch.setattr(partitioncount, "_REFRESH_S", 0.05)
    pq = PartitionedQueue("stop61pc", partitions=2, redis=redis_url, prefix=prefix)
    try:
        await pq.add_job("n", 1)
        record = pq.count_record
        loop_task = record._refresher
        assert loop_task is not None
        entered = asyncio.Event()
        armed = [True]
        real = type(record)._refreshed

        async def refreshed(self: Any) -> bool:
            ok = await real(self)
            if armed[0] and asyncio.current_task() is loop_task:
                armed[0] = False
                # From now on a refresh sleeps long: the wait the dropped cancel cost.
                monkeypatch.setattr(partitioncount, "_REFRESH_S", 3600.0)
                await _swallow(entered)
            return ok

        monkeypatch.setattr(type(record), "_refreshed", refreshed)
        await asyncio.wait_for(entered.wait(), STOP_S)
        stopping = asyncio.ensure_future(record.release())
        assert await _ended(stopping, loop_task), "the partition count's release hung"
        stopping.result()
        assert loop_task.done() and not armed[0]
    finally:
        await pq.close()
