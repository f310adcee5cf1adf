"""Rate limits followed by parked jobs (``flowpark.follow_limits``) and the
until_finished window a put-back job takes again, against a demanding user.

A rate limit set or removed in a connected process walks the parked rate-limit keys in
the background, now and once more a second later. A queue closed meanwhile must stay
closed: the second walk connected it again (its client never closed; used from the next
event loop, the queue refused: "used from another event loop").

A job put back twice takes its key again for the window it was added with each time.
"""

from __future__ import annotations

import asyncio
from typing import Any

from helpers import QueueFactory, wait_for_status
from kitium_queue import IdempotencyManager, JobStatus
from kitium_queue.features import flowpark


async def test_a_queue_closed_after_a_limit_change_stays_closed(
    make_queue: QueueFactory,
) -> None:
    q = make_queue("rv-follow-close")
    await q.client()
    q.set_rate_limit("k", max=1, duration=1000)  # the walk now, and again 1 s later
    q.flow.remove_rate_limit("k")
    await q.close()
    assert not q.ctx.connected
    await asyncio.sleep(flowpark.FOLLOW_AGAIN_S + 0.5)
    # Before: connected again by the second walk, its client left open.
    assert not q.ctx.connected
    assert not flowpark._PENDING  # the walks ended


async def _pttl(q: Any, key: str) -> int:
    client = await q.client()
    return int(await client.pttl(q.keys.idempotency(key)))


async def test_a_job_put_back_twice_takes_its_own_window_each_time(
    make_queue: QueueFactory,
) -> None:
    # Its key was taken again by the first retry, long after the job was added (its
    # 'ts'): the second release keeps the window it was added with (2 s), not its age.
    admin = make_queue("rv-idem")
    IdempotencyManager(admin, window="until_finished")
    worker = make_queue(
        "rv-idem", idempotency_ttl=2000, worker={"concurrency": 1, "scheduler": False}
    )
    IdempotencyManager(worker, window="until_finished")
    worker.process("j")(lambda job: "ok")
    jid = await worker.add_job("j", 1, idempotency_key="K")
    for _ in range(2):
        await worker.start()
        await wait_for_status(worker, jid, JobStatus.COMPLETED)
        await worker.worker.stop()
        assert await _pttl(admin, "K") == -2  # freed when it ended
        await asyncio.sleep(2.5)  # older than its window (again)
        await admin.retry_job(jid)
        # Not 24 h, nor 2 s plus its age (4.5 s and more); the kept window reads a few
        # ms off (tests/test_review_groups_breakers_idem.py, SLACK_MS).
        assert 0 < await _pttl(admin, "K") <= 2000 + 100
