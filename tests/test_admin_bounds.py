"""Admin and dashboard calls do bounded work per Redis command at any queue size (issue
18, item 6): no read asks Redis for more than ``QUERY_PAGE`` members at once, and every
admin script moves at most ``ADMIN_BATCH`` jobs per call, so none blocks Redis for long
(measured at 1M+ jobs with SLOWLOG by ``bench/bench_growth.py``).

Tested at a modest size by counting the work of each command: every reply the client
reads is recorded, and the largest (in elements) must stay within one page, whatever
``limit`` the caller asked for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from redis.asyncio.connection import AbstractConnection

import kitium_queue.scripts as scripts_mod
from helpers import QueueFactory
from kitium_queue.admin import ADMIN_BATCH
from kitium_queue.limits import QUERY_PAGE

pytestmark = pytest.mark.redis_only

N = 2 * QUERY_PAGE + 500


class Replies:
    """The largest reply (elements of a top-level array) read while active."""

    def __init__(self) -> None:
        self.largest = 0
        self.count = 0

    def reset(self) -> None:
        self.largest = self.count = 0


@pytest.fixture
def replies(monkeypatch: pytest.MonkeyPatch) -> Iterator[Replies]:
    seen = Replies()
    orig = AbstractConnection.read_response

    async def read_response(self: Any, *args: Any, **kwargs: Any) -> Any:
        reply = await orig(self, *args, **kwargs)
        seen.count += 1
        if isinstance(reply, (list, dict)):
            seen.largest = max(seen.largest, len(reply))
        return reply

    monkeypatch.setattr(AbstractConnection, "read_response", read_response)
    # Every reply through redis-py's reading, where it is counted (the engine's own
    # reply channel, kitium_queue.replies, would bypass it).
    monkeypatch.setattr(scripts_mod, "_DIRECT_REPLIES", False)
    yield seen


async def test_listing_pages_reads_at_most_a_page_per_command(
    make_queue: QueueFactory, replies: Replies
) -> None:
    q = make_queue()
    await q.add_jobs([("n", {"i": i}) for i in range(N)])
    replies.reset()
    jobs = await q.get_jobs_by_status("waiting", limit=N)
    assert len(jobs) == N and [j.data["i"] for j in jobs] == list(range(N))
    # WITHSCORES: a page of members is twice as many elements.
    assert 0 < replies.largest <= 2 * QUERY_PAGE, replies.largest
    replies.reset()
    page = await q.list_jobs("waiting", limit=N)
    assert len(page.jobs) == N and page.next_cursor is not None
    assert replies.largest <= 2 * QUERY_PAGE, replies.largest
    replies.reset()
    # Past a cursor with a large limit: still a page per command.
    first = await q.list_jobs("waiting", limit=10)
    rest = await q.list_jobs("waiting", limit=N, cursor=first.next_cursor)
    assert len(first.jobs) + len(rest.jobs) == N
    assert replies.largest <= 2 * QUERY_PAGE, replies.largest
    replies.reset()
    stats = await q.get_stats()
    assert stats.waiting == N and replies.largest <= 16


async def test_admin_commands_move_a_bounded_batch_per_call(
    make_queue: QueueFactory, replies: Replies
) -> None:
    q = make_queue()
    await q.add_jobs([("n", i) for i in range(N)])
    await q.pause()
    replies.reset()
    assert await q.drain() == N
    # Each drain script call removed at most ADMIN_BATCH jobs: N needs several calls.
    assert replies.count >= -(-N // ADMIN_BATCH)
    assert replies.largest <= 2 * QUERY_PAGE
    ids = await q.add_jobs([("n", i, {"attempts": 1}) for i in range(N)])
    client = await q.client()
    # Move them to the DLQ directly (the engine's way is slower and not the point).
    await client.zrem(q.keys.wait, *ids)
    await client.zadd(q.keys.dlq, {i: 1 for i in ids})
    replies.reset()
    assert len(await q.get_dlq_jobs(limit=N)) == N
    assert replies.largest <= 2 * QUERY_PAGE
    replies.reset()
    assert await q.replay_dlq(limit=N) == N
    # replay replies with the ids it moved: at most a batch per call.
    assert replies.largest <= ADMIN_BATCH, replies.largest
    replies.reset()
    await q.clear(force=True)
    assert replies.largest <= 2 * QUERY_PAGE
    assert (await q.get_stats()).waiting == 0


async def test_listing_schedules_reads_a_page_at_a_time(
    make_queue: QueueFactory, replies: Replies
) -> None:
    q = make_queue()
    n = QUERY_PAGE + 300
    sem = asyncio.Semaphore(50)

    async def one(i: int) -> None:
        async with sem:
            await q.schedule_every("tick", {"i": i}, 60_000, schedule_id=f"s{i}")

    await asyncio.gather(*(one(i) for i in range(n)))
    replies.reset()
    got = await q.get_schedules()
    assert len(got) == n
    assert replies.largest <= QUERY_PAGE, replies.largest
