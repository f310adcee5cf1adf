"""Two interleavings that a loaded machine produced now and then, forced here.

* ``SyncJobQueue.close()`` / ``SyncPartitionedQueue.close()`` while a direct ``add_job``
  of another thread was connecting its queue (a partition's first use, or the client's
  first add): the connect went on after the queue closed, so the connection it made
  (the partitions' shared client reconnected by the partition count's check, a plain
  queue's new client) stayed open after close() returned, for as long as the client
  object lived, and the partitioned queue's process stayed listed in the count record.
* Two leader services of one role (two processes) log under one name: a timeout of one
  of them under load, or of the leader before it was cut off (over by then: "Redis is
  reachable again"), is an outage of its own, said once, apart from the leader's cut.
  Each outage is said once ("Redis unreachable"), then each new error kind once
  ("still no Redis, now: ...").

Every test runs against a real Redis.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis

from _redis import RedisServer
from helpers import QueueFactory
from kitium_queue import SyncJobQueue, SyncPartitionedQueue
from kitium_queue.leader import LeaderLease, LeaderService
from test_outbox import Bodies, cut_off, each_said_once, leader_log, outages
from test_review_stop57_sync_proc import _clients_but_this, _closed_error

pytestmark = pytest.mark.timeout(120)

#: How long a test waits for a state (ends as soon as the state is reached).
WAIT_S = 20.0


# ================================================================ blocking client


def _key_of(q: SyncPartitionedQueue, partition: int) -> str:
    return next(k for k in map(str, range(1000)) if q.partition_of(k) == partition)


@pytest.mark.redis_only
@pytest.mark.parametrize("kind", ["plain", "partitioned"])
def test_close_as_a_direct_add_connects_its_queue_leaves_no_connection_open(
    debug_server: RedisServer, prefix: str, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """The connect of a direct add (the queue's first, or a partition's) under way as
    close() closed the queue ends after it: what it connected is closed all the same."""
    admin = redis.Redis.from_url(debug_server.url)
    q: SyncJobQueue | SyncPartitionedQueue
    extra: dict[str, Any] = {}
    if kind == "plain":
        q = SyncJobQueue("late", redis=debug_server.url, prefix=prefix)
        ctx = q.queue.ctx
    else:
        q = SyncPartitionedQueue("late", partitions=2, redis=debug_server.url, prefix=prefix)
        q.add_job("warm-up", partition_key=_key_of(q, 0))  # partition 1 not connected yet
        ctx = q.queue.queues[1].ctx
        extra = {"partition_key": _key_of(q, 1)}
    inside = threading.Event()
    resume, connected = asyncio.Event(), asyncio.Event()

    async def held(client: Any) -> None:  # the connect's first check waits...
        inside.set()
        await resume.wait()

    async def done(client: Any) -> None:  # ...and its last says it is through
        connected.set()

    ctx.connect_checks.insert(0, held)
    ctx.connect_checks.append(done)
    real_close = q.queue.close

    async def close_then_connect() -> None:
        await real_close()
        resume.set()  # the connect under way goes on after the queue closed
        await asyncio.wait_for(connected.wait(), WAIT_S)

    monkeypatch.setattr(q.queue, "close", close_then_connect)
    said: list[Any] = []

    def add() -> None:
        try:
            said.append(q.add_job("n", 1, **extra))
        except BaseException as exc:  # what the add ended with
            said.append(exc)

    t = threading.Thread(target=add, name="connecting-add")
    try:
        t.start()
        assert inside.wait(WAIT_S)
        q.close()
        t.join(WAIT_S)
        assert not t.is_alive()
        assert len(said) == 1
        assert isinstance(said[0], str) or _closed_error(said[0]), repr(said[0])
        assert _clients_but_this(admin) == []  # nothing the late connect made stays open
        if isinstance(q, SyncPartitionedQueue):  # and the process is no longer counted
            assert admin.zcard(q.queue.count_record.users_key) == 0
    finally:
        q.close()
        admin.close()


# ================================================================ leader services


def _slow_first(call: Callable[[], Awaitable[Any]], s: float) -> Callable[[], Awaitable[Any]]:
    """``call`` whose first call takes ``s`` longer (a cold connect on a loaded machine)."""
    calls = 0

    async def slow() -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(s)
        return await call()

    return slow


@pytest.mark.redis_only
async def test_each_leader_outage_is_said_once_apart_from_another_services(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The leader's first try times out (over at the next one), then it is cut off; the
    other service's first try times out as the cut begins: three outages, each said
    once by the service it befell ("Redis unreachable"), the cut as one outage although
    the leader's renewals and then its campaign's tries fail over and over."""
    bodies = Bodies()
    lease_ms, renew_ms = 900, 200
    slow_s = 5 * renew_ms / 1000  # past the bound of a try (renew_ms): a timeout
    a = LeaderService("gc", bodies.body("a"), lease_ms=lease_ms, renew_ms=renew_ms)
    b = LeaderService("gc", bodies.body("b"), lease_ms=lease_ms, renew_ms=renew_ms)
    make = QueueFactory(redis_url, prefix)
    a.lease = LeaderLease(make("obx"), "gc", lease_ms=lease_ms)
    b.lease = LeaderLease(make("obx"), "gc", lease_ms=lease_ms)
    monkeypatch.setattr(a.lease, "acquire", _slow_first(a.lease.acquire, slow_s))
    monkeypatch.setattr(b.lease, "acquire", _slow_first(b.lease.acquire, slow_s))

    try:
        with leader_log(caplog):
            await a.start(a.lease.queue)
            await bodies.started(1)
            await b.start(b.lease.queue)
            at_cut = len(caplog.records)
            monkeypatch.setattr(a.lease, "renew", cut_off)
            monkeypatch.setattr(a.lease, "acquire", cut_off)
            await bodies.started(2)
        assert [who for who, *_ in bodies.runs] == ["a", "b"]
        assert bodies.max_running == 1
        of_a, of_b = outages(caplog.records, a._task), outages(caplog.records, b._task)
        assert outages(caplog.records[at_cut:], a._task)[1:] == []  # no Redis since the cut
        assert each_said_once(of_a), of_a
        assert each_said_once(of_b), of_b
        # a's first outage was its timeout, over before the cut; its last, the cut, names
        # the simulated error (first, unless a renewal timed out just before the cut).
        assert len(of_a) >= 2 and "Redis unreachable (TimeoutError" in of_a[0][0], of_a
        assert any("connection refused (simulated)" in t for t in of_a[-1]), of_a
        assert "Redis unreachable (TimeoutError" in of_b[0][0], of_b  # b's own
    finally:
        await a.stop()
        await b.stop()
        await make.aclose()
