"""The job event feed: ``events()`` tells of a gap exactly when entries the reader had
not read were trimmed (Redis' ``MAXLEN ~`` trims whole blocks: a reader whose last
event ended a trimmed block lost nothing), the queue's ``close()`` ends a running
``async for ev in queue.events()`` loop (a ``PartitionedQueue``'s too), and an async
``on`` handler whose calls never end holds a bounded number of tasks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from _redis import RedisServer
from kitium_queue import JobQueue, PartitionedQueue, QueueEvent, eventfeed
from kitium_queue.eventfeed import GAP_EVENT
from kitium_queue.events import MAX_HANDLER_TASKS, EventData, StreamEvent

WAIT_S = 30.0  # generous: only a hang reaches it


async def _next(feed: AsyncIterator[StreamEvent]) -> StreamEvent:
    return await asyncio.wait_for(anext(feed), WAIT_S)


# ------------------------------------------------------------------ 1. exact gap notice
async def test_trimmed_past_the_last_read_event_with_nothing_unread_lost_is_no_gap(
    backend_url: str, prefix: str
) -> None:
    """The stream trimmed up to the reader's next event (XTRIM MINID, as MAXLEN ~ does
    by whole blocks) is no gap; trimmed one further, it is one."""
    queue = JobQueue("exact", redis=backend_url, prefix=prefix)
    admin = await queue.client()
    key = queue.keys.events
    try:
        first = [await queue.add_job("t") for _ in range(3)]
        feed = queue.events(last_id="0", block_ms=100)
        async with contextlib.aclosing(feed):
            got = [await _next(feed) for _ in range(3)]
            assert [e.job_id for e in got] == first
            more = [await queue.add_job("t") for _ in range(3)]
            held = await admin.xrange(key, "-", "+")
            ids = [eid.decode() for eid, _ in held]
            await admin.xtrim(key, minid=ids[3], approximate=False)  # the 3 read, only
            nxt = await _next(feed)
            assert (nxt.event, nxt.job_id) == ("job-added", more[0])  # no gap notice
            assert [(await _next(feed)).job_id for _ in range(2)] == more[1:]
            # Now one the reader has not read is trimmed with the one it read last.
            later = [await queue.add_job("t") for _ in range(3)]
            held = await admin.xrange(key, "-", "+")
            ids = [eid.decode() for eid, _ in held]  # more[0..2], later[0..2]
            await admin.xtrim(key, minid=ids[4], approximate=False)  # later[0] unread
            gap = await _next(feed)
            after = await _next(feed)
        assert gap.event == GAP_EVENT and gap.fields == {"after": ids[2], "next": ids[4]}
        assert after.job_id == later[1]
    finally:
        await queue.close()


@pytest.mark.redis_only
async def test_without_entries_added_a_possible_gap_is_told(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis before 7.0 (no ``entries-added``) or a user not allowed XINFO: where the
    stream holds nothing the reader read, the notice is given, not knowing."""
    real = eventfeed._stream_info

    async def old_server(client: Any, key: str) -> Any:
        info = await real(client, key)
        if info is not None:
            info.added = None
        return info

    monkeypatch.setattr(eventfeed, "_stream_info", old_server)
    queue = JobQueue("old", redis=redis_url, prefix=prefix)
    admin = await queue.client()
    try:
        await queue.add_job("t")
        feed = queue.events(last_id="0", block_ms=100)
        async with contextlib.aclosing(feed):
            read = await _next(feed)
            nxt_id = await queue.add_job("t")
            await admin.xtrim(queue.keys.events, minid=_after(read.id), approximate=False)
            gap = await _next(feed)
            nxt = await _next(feed)
        assert gap.event == GAP_EVENT and nxt.job_id == nxt_id
    finally:
        await queue.close()


def _after(entry_id: str) -> str:
    ms, seq = entry_id.split("-")
    return f"{ms}-{int(seq) + 1}"


@pytest.mark.redis_only
async def test_chaos_a_small_stream_trimmed_under_a_reader_tells_every_loss_and_no_other(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """events_max_len=5: Redis trims the stream by whole blocks (of 10 entries on this
    server, for many block ends) while one producer adds thousands of jobs and a reader
    follows with uneven pauses (and once a long one). Every run of events the reader did
    not get comes after a gap notice, and every notice is followed by such a run: no
    false notice, no silent loss."""
    verdicts: list[bool | None] = []
    real_check = eventfeed._Place.check

    async def check(self: Any, client: Any, key: str, entries: Any) -> bool | None:
        lost = await real_check(self, client, key, entries)
        verdicts.append(lost)
        return lost

    monkeypatch.setattr(eventfeed._Place, "check", check)
    rng = random.Random(57)
    srv = RedisServer("--stream-node-max-entries", "10").start()
    producer = JobQueue("chaos", redis=srv.url, prefix=prefix, events_max_len=5)
    reader = JobQueue("chaos", redis=srv.url, prefix=prefix)
    added: list[str] = []
    got: list[StreamEvent] = []
    done = asyncio.Event()
    pause = asyncio.Event()

    async def produce() -> None:
        for i in range(4000):
            added.append(await producer.add_job("t"))
            if i == 2000:
                pause.set()  # the reader sleeps while many more are added
            if i % 50 == 0:
                await asyncio.sleep(0)
        done.set()

    async def read() -> None:
        feed = reader.events(block_ms=50)
        async with contextlib.aclosing(feed):
            async for ev in feed:
                got.append(ev)
                if pause.is_set():
                    pause.clear()
                    await asyncio.sleep(0.3)
                elif rng.random() < 0.3:
                    await asyncio.sleep(rng.random() * 0.004)
                if done.is_set() and ev.job_id == added[-1]:
                    return

    try:
        reading = asyncio.ensure_future(read())
        await asyncio.sleep(0.05)  # the reader has started ("$": only new events)
        await produce()
        await asyncio.wait_for(reading, 120)
    finally:
        await producer.close()
        await reader.close()
        srv.close()
    where = {jid: i for i, jid in enumerate(added)}
    notices = 0
    prev: int | None = None
    told = False
    for ev in got:
        if ev.event == GAP_EVENT:
            notices += 1
            told = True
            continue
        at = where[ev.job_id]
        if prev is not None:
            if told:
                assert at > prev + 1, f"a notice where nothing was lost: {prev} -> {at}"
            else:
                assert at == prev + 1, f"events lost with no notice: {prev} -> {at}"
        prev, told = at, False
    assert notices >= 1  # the long pause lost events, and said so
    assert prev == len(added) - 1
    # A check found a real loss. Whether one also found the reader trimmed past with
    # nothing unread lost depends on how the reader's pauses fall (it did not in one
    # full-suite run): that case is made on purpose, and asserted, by
    # test_trimmed_past_the_last_read_event_with_nothing_unread_lost_is_no_gap.
    assert True in verdicts


# ------------------------------------------------------------------ 2. close() ends the loop
async def test_close_ends_a_following_events_loop(backend_url: str, prefix: str) -> None:
    queue = JobQueue("closing", redis=backend_url, prefix=prefix)
    seen: list[str] = []
    first = asyncio.Event()

    async def follow() -> None:
        async for ev in queue.events(block_ms=0):  # waits without a deadline
            seen.append(ev.job_id)
            first.set()

    task = asyncio.ensure_future(follow())
    try:
        await asyncio.sleep(0.1)
        jid = await queue.add_job("t")
        await asyncio.wait_for(first.wait(), WAIT_S)
        await queue.close()
        await asyncio.wait_for(task, WAIT_S)  # ended: StopAsyncIteration, no error
        assert seen == [jid]
        # The queue works again after close(), a new loop too.
        again = queue.events(last_id="0", follow=False, block_ms=50)
        assert [e.job_id async for e in again] == [jid]
    finally:
        task.cancel()
        await queue.close()


async def test_close_while_the_loop_body_runs_ends_it_at_its_next_step(
    backend_url: str, prefix: str
) -> None:
    queue = JobQueue("closing2", redis=backend_url, prefix=prefix)
    ids = [await queue.add_job("t") for _ in range(3)]
    seen: list[str] = []
    try:
        async for ev in queue.events(last_id="0"):
            seen.append(ev.job_id)
            await queue.close()  # from inside the loop
        assert seen == ids[:1]
    finally:
        await queue.close()


@pytest.mark.redis_only
async def test_close_ends_a_loop_waiting_to_reconnect(redis_url: str, prefix: str) -> None:
    srv = RedisServer().start()
    queue = JobQueue("closing3", redis=srv.url, prefix=prefix)
    try:
        await queue.add_job("t")
        feed = queue.events(last_id="0")
        first = await _next(feed)
        assert first.event == "job-added"
        pending = asyncio.ensure_future(anext(feed))
        await asyncio.sleep(0.2)
        srv.kill()  # the reader loses its connection, and waits to reconnect
        await asyncio.sleep(0.5)
        await queue.close()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(pending, WAIT_S)
    finally:
        await queue.close()
        srv.close()


async def test_close_of_a_partitioned_queue_ends_its_events_loop(
    backend_url: str, prefix: str
) -> None:
    pq = PartitionedQueue("pclose", partitions=3, redis=backend_url, prefix=prefix)
    seen: list[StreamEvent] = []
    first = asyncio.Event()

    async def follow() -> None:
        async for ev in pq.events():
            seen.append(ev)
            first.set()

    task = asyncio.ensure_future(follow())
    try:
        await asyncio.sleep(0.1)
        await pq.add_job("t")
        await asyncio.wait_for(first.wait(), WAIT_S)
        await pq.close()
        await asyncio.wait_for(task, WAIT_S)
        assert len(seen) == 1
    finally:
        task.cancel()
        await pq.close()


# ------------------------------------------------------------------ 3. bounded handler tasks
async def test_a_never_returning_async_handler_holds_a_bounded_number_of_tasks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    queue = JobQueue("stuck", redis="memory://review-stop57-stuck")
    emitter = queue.emitter
    release = asyncio.Event()
    stuck_calls = 0
    other_calls = 0

    async def stuck(_e: EventData) -> None:
        nonlocal stuck_calls
        stuck_calls += 1
        await release.wait()  # never returns until released

    async def other(_e: EventData) -> None:
        nonlocal other_calls
        other_calls += 1

    queue.on(QueueEvent.JOB_ADDED, stuck)
    queue.on(QueueEvent.JOB_ADDED, other)
    extra = 250
    try:
        with caplog.at_level(logging.WARNING, "kitium_queue.events"):
            for i in range(MAX_HANDLER_TASKS + extra):
                emitter.emit(EventData(str(QueueEvent.JOB_ADDED), "stuck", job_id=f"j{i}"))
                if i % 100 == 0:
                    await asyncio.sleep(0)
            await asyncio.sleep(0.05)
        assert stuck_calls == MAX_HANDLER_TASKS
        assert emitter.dropped == extra
        assert other_calls == MAX_HANDLER_TASKS + extra  # the other handler is not held
        assert len(emitter._tasks) == MAX_HANDLER_TASKS
        said = [r for r in caplog.records if "not delivered to it" in r.getMessage()]
        assert len(said) == 1 and "stuck" in said[0].getMessage()
        release.set()
        for _ in range(200):
            if not emitter._tasks:
                break
            await asyncio.sleep(0.01)
        emitter.emit(EventData(str(QueueEvent.JOB_ADDED), "stuck", job_id="after"))
        await asyncio.sleep(0.01)
        assert stuck_calls == MAX_HANDLER_TASKS + 1  # delivered again once calls ended
        assert emitter.dropped == extra
    finally:
        release.set()
        await queue.close()


async def test_the_bound_is_per_handler_and_events_flow_to_other_handlers_of_queue(
    backend_url: str, prefix: str
) -> None:
    """Through ``add_job``: a stuck handler does not hold up the queue's adds."""
    queue = JobQueue("stuck2", redis=backend_url, prefix=prefix)
    hold = asyncio.Event()

    async def stuck(_e: EventData) -> None:
        await hold.wait()

    queue.on(QueueEvent.JOB_ADDED, stuck)
    try:
        jobs = [("t", {"i": i}, {}) for i in range(MAX_HANDLER_TASKS + 5)]
        await queue.add_jobs(jobs)
        await asyncio.sleep(0.05)
        assert queue.emitter.dropped == 5
    finally:
        hold.set()
        await queue.close()
