"""The index of execution records holds the live records, not every key ever recorded.

``record_execution`` lists each key in ``idem-x`` for ``clean_expired``; the records
themselves expire, but their entries stayed, and steady traffic renewed the index's own
TTL, so it grew by one entry per key for as long as the queue lived (measured: 800
entries for 180 live records; about 2.7 GB a day at 300 records a second). Each new
record now removes the entries whose record has expired.
"""

from __future__ import annotations

import asyncio

from helpers import QueueFactory
from kitium_queue.features.idempotency import IdempotencyManager


async def test_expired_entries_leave_the_index_as_new_records_come(
    make_queue: QueueFactory,
) -> None:
    q = make_queue("idx")
    idem = IdempotencyManager(q)
    await idem.record_execution("long", "j0", "charge", 0, ttl_ms=60_000)  # keeps it alive
    for i in range(50):
        await idem.record_execution(f"old-{i}", f"j{i}", "charge", i, ttl_ms=50)
    await asyncio.sleep(0.15)
    await idem.record_execution("new", "j-new", "charge", 1, ttl_ms=60_000)
    client = await q.client()
    assert await client.zcard(q.keys.extra("idem-x")) == 2  # long and new
    got = await idem.get_execution_result("new")
    assert got is not None and got.result == 1
