"""The event side a user subscribes to: ``events()`` tells of a gap where the stream no
longer holds where it would read on (trimmed while the reader lagged, or lost in a
Redis restart without persistence), and no gap where there is none; an ``on`` handler
failing at every event is not logged at every event; ``MultiQueue.off`` finds a handler
given again as ``obj.method``."""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator

import pytest
import redis

from _redis import RedisServer
from kitium_queue import JobQueue, PartitionedQueue, QueueEvent
from kitium_queue.eventfeed import GAP_EVENT


def _port() -> int:
    """A free port of 28300-28699 (the range these tests may use)."""
    for port in range(28640, 28700):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free port in 28640-28699")


@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    srv = RedisServer(port=_port()).start()
    try:
        yield srv
    finally:
        srv.close()


@pytest.mark.redis_only
async def test_a_reader_trimmed_past_gets_a_gap_event_and_a_warning(
    redis_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        JobQueue("gap", redis=redis_url, prefix=prefix, events_max_len=10) as producer,
        JobQueue("gap", redis=redis_url, prefix=prefix) as reader,
    ):
        await producer.add_job("t")
        feed = reader.events(last_id="0", block_ms=100)
        async with contextlib.aclosing(feed):
            first = await anext(feed)
            # The reader lags: far more than events_max_len are added meanwhile.
            ids = [await producer.add_job("t") for _ in range(300)]
            with caplog.at_level(logging.WARNING, "kitium_queue.eventfeed"):
                gap = await anext(feed)
                after = [await anext(feed) for _ in range(5)]
        assert gap.event == GAP_EVENT and gap.job_id == ""
        assert gap.id == first.id and gap.fields["after"] == first.id
        assert gap.fields["next"] == after[0].id
        # Then it reads on from what the stream holds, in order, none twice.
        tail = [e.job_id for e in after]
        start = ids.index(tail[0])
        assert start > 0 and tail == ids[start : start + 5]
        assert "may be missing" in caplog.text and first.id in caplog.text


@pytest.mark.redis_only
async def test_events_lost_in_a_restart_without_persistence_are_a_gap(
    own_server: RedisServer,
) -> None:
    async with (
        JobQueue("restart", redis=own_server.url) as queue,
        JobQueue("restart", redis=own_server.url) as producer,
    ):
        await producer.add_job("t")
        feed = queue.events(last_id="0", block_ms=100)
        async with contextlib.aclosing(feed):
            first = await anext(feed)
            await producer.add_job("t")  # never read: gone with the restart
            own_server.kill()
            own_server.restart()
            async with JobQueue("restart", redis=own_server.url) as again:
                later = await again.add_job("t")
            gap = await anext(feed)
            nxt = await anext(feed)
        assert gap.event == GAP_EVENT and gap.fields["after"] == first.id
        assert (nxt.event, nxt.job_id) == ("job-added", later)
        assert gap.fields["next"] == nxt.id


@pytest.mark.redis_only
async def test_no_gap_without_one(redis_url: str, prefix: str) -> None:
    """A reader that keeps up, an entry deleted on its own (the one last read) and a
    connection the server closed are no gap: every event once, in order."""
    producer = JobQueue("nogap", redis=redis_url, prefix=prefix, events_max_len=10)
    admin = redis.Redis.from_url(redis_url)
    try:
        await producer.add_job("t")
        feed = producer.events(last_id="0", block_ms=100)
        async with contextlib.aclosing(feed):
            got = [await anext(feed)]
            ids = []
            for _ in range(40):
                ids.append(await producer.add_job("t"))
                got.append(await anext(feed))
            admin.xdel(producer.keys.events, got[-1].id)
            admin.xadd(producer.keys.events, {"e": "custom", "id": "x"})
            got.append(await anext(feed))
        assert GAP_EVENT not in {e.event for e in got}
        assert [e.job_id for e in got[1:-1]] == ids
        assert (got[-1].event, got[-1].job_id) == ("custom", "x")
    finally:
        admin.close()
        await producer.close()


async def test_a_handler_failing_at_every_event_is_not_logged_at_every_event(
    caplog: pytest.LogCaptureFixture,
) -> None:
    queue = JobQueue("flood", redis="memory://review-event-flood")
    calls = 0

    def broken(_e: object) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("handler bug")

    queue.on(QueueEvent.JOB_ADDED, broken)
    try:
        with caplog.at_level(logging.ERROR, "kitium_queue.events"):
            for _ in range(50):
                await queue.add_job("t")
        assert calls == 50
        records = [r for r in caplog.records if "handler bug" in (r.exc_text or "")]
        assert len(records) == 1
    finally:
        await queue.close()


async def test_multiqueue_off_removes_a_bound_method_given_again() -> None:
    queue = PartitionedQueue("offm", redis="memory://review-event-off", partitions=2)

    class Listener:
        def __init__(self) -> None:
            self.seen = 0

        def handle(self, _e: object) -> None:
            self.seen += 1

    listener = Listener()
    try:
        queue.on(QueueEvent.JOB_ADDED, listener.handle)
        queue.on(QueueEvent.JOB_ADDED, listener.handle)
        await queue.add_job("t")
        assert listener.seen == 2
        queue.off(QueueEvent.JOB_ADDED, listener.handle)
        await queue.add_job("t")
        assert listener.seen == 3
        queue.off(QueueEvent.JOB_ADDED, listener.handle)
        await queue.add_job("t")
        assert listener.seen == 3
    finally:
        await queue.close()
