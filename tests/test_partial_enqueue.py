"""What callers learn when only part of a batch reached Redis."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from helpers import QueueFactory
from kitium_queue import PartialEnqueueError, PartitionedQueue


async def test_coalesced_add_job_callers_get_ids_of_what_was_written(
    make_queue: QueueFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = make_queue()
    real = q.producer.enqueue
    calls = 0

    async def flaky(prepared: list[list[Any]], options: Any = None) -> list[str]:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(0.05)  # let the other add_job calls queue up behind it
            return await real(prepared, options)
        # The coalesced batch: the first two jobs written, then the link fails.
        ids = await real(prepared[:2], options[:2] if options else None)
        exc = PartialEnqueueError("partial", ids, 2)
        exc.__cause__ = ConnectionError("link lost")
        raise exc

    monkeypatch.setattr(q.producer, "enqueue", flaky)
    results = await asyncio.gather(
        *(q.add_job("n", {"i": i}) for i in range(5)), return_exceptions=True
    )
    ok = [r for r in results if isinstance(r, str)]
    failed = [r for r in results if isinstance(r, BaseException)]
    assert len(ok) == 3 and len(failed) == 2, results
    # Callers whose jobs were written get the ids; the others the underlying error.
    assert all(isinstance(e, ConnectionError) for e in failed), failed
    for job_id in ok:
        assert await q.get_job_status(job_id) is not None


@pytest.mark.redis_only
async def test_partitioned_add_jobs_reports_the_written_prefix(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pq = PartitionedQueue("pe", partitions=2, redis=redis_url, prefix=prefix)
    try:
        broken = pq.queues[1]

        async def refuse(jobs: Any) -> list[str]:
            raise ConnectionError("partition 1 unreachable")

        monkeypatch.setattr(broken, "add_jobs", refuse)
        jobs = [("n", {"i": i}, {"partition_key": f"k{i}"}) for i in range(20)]
        parts = [pq.partition_of(f"k{i}") for i in range(20)]
        assert 0 in parts and 1 in parts
        with pytest.raises(PartialEnqueueError) as info:
            await pq.add_jobs(jobs)
        err = info.value
        first_broken = parts.index(1)
        assert err.failed_from == first_broken
        assert len(err.written_ids) == first_broken
        assert isinstance(err.__cause__, ConnectionError)
        for full_id in err.written_ids:
            assert await pq.get_job_status(full_id) is not None
    finally:
        for q in pq.queues:
            client = await q.client()
            keys = [k async for k in client.scan_iter(match=q.keys.base + "*")]
            if keys:
                await client.delete(*keys)
        await pq.close()
