"""``PartitionedQueue`` on both backends: placement of jobs, ids, aggregated queries,
and a worker that shares one concurrency budget fairly over the partitions.
(On a real cluster: ``test_cluster.py::test_partitioned_queue_uses_every_master``.)"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from redis.crc import key_slot

from _docs import run_doc_example
from helpers import wait_until
from kitium_queue import ConfigurationError, JobStatus, PartitionedQueue
from kitium_queue.features.partitioned import partition_names


@pytest.fixture
async def make_pq(backend_url: str, prefix: str) -> AsyncIterator[Callable[..., PartitionedQueue]]:
    made: list[PartitionedQueue] = []

    def make(name: str = "orders", partitions: int = 3, **kw: Any) -> PartitionedQueue:
        pq = PartitionedQueue(name, partitions=partitions, redis=backend_url, prefix=prefix, **kw)
        made.append(pq)
        return pq

    yield make
    for pq in made:
        await pq.close()


def test_partition_names_cover_the_slot_space_evenly() -> None:
    for n in (1, 2, 3, 4, 6, 16):
        names = partition_names("orders", n)
        assert names == partition_names("orders", n)  # deterministic
        assert len(set(names)) == n
        for i, name in enumerate(names):
            assert name == f"orders#{i}" or name.startswith(f"orders#{i}.")
            assert i * 16384 // n <= key_slot(name.encode()) < (i + 1) * 16384 // n


def test_invalid_partition_counts_are_refused() -> None:
    for bad in (0, -1, 1025, 2.0, True, "3"):
        with pytest.raises(ConfigurationError, match="partitions must be"):
            PartitionedQueue("x", partitions=bad)  # type: ignore[arg-type]


async def test_round_robin_and_ids_carry_the_partition(make_pq: Any) -> None:
    pq = make_pq()
    ids = await pq.add_jobs([("a", i) for i in range(30)])
    assert len(set(ids)) == 30
    parts = Counter(int(i.split(":")[0]) for i in ids)
    assert sorted(parts) == [0, 1, 2] and set(parts.values()) == {10}
    one = await pq.add_job("a", "single")
    info = await pq.get_job_status(one)
    assert info is not None and (info.id, info.data, info.status) == (one, "single", "waiting")
    assert [s.waiting for s in await pq.partition_stats()] == [
        parts[0] + (one.startswith("0:")),
        parts[1] + (one.startswith("1:")),
        parts[2] + (one.startswith("2:")),
    ]
    assert await pq.get_job_status("1:999999") is None


async def test_keys_pin_jobs_to_one_partition(make_pq: Any) -> None:
    pq = make_pq(partitions=4)
    pinned = {await pq.add_job("a", i, partition_key="customer-7") for i in range(10)}
    assert len({p.split(":")[0] for p in pinned}) == 1
    assert int(next(iter(pinned)).split(":")[0]) == pq.partition_of("customer-7")

    first = await pq.add_job("a", 1, idempotency_key="charge-42")
    again = await pq.add_job("a", 2, idempotency_key="charge-42")
    assert first == again  # the duplicate met its original on the same partition

    mine = await pq.add_job("a", 1, job_id="order-9")
    assert mine == f"{pq.partition_of('order-9')}:order-9"
    assert await pq.add_job("a", 2, job_id="order-9") == mine
    # Only the full id finds it: a bare id is never hashed to a partition (issue 19).
    assert await pq.get_job_status("order-9") is None
    by_full = await pq.get_job_status(mine)
    assert by_full is not None and by_full.id == mine and by_full.data == 1

    batch = await pq.add_jobs(
        [("a", i, {"partition_key": "k"}) for i in range(5)] + [{"name": "a", "data": 9}]
    )
    assert len({b.split(":")[0] for b in batch[:5]}) == 1
    with pytest.raises(ConfigurationError, match="partition_key"):
        await pq.add_job("a", 1, partition_key="")


async def test_queries_and_management_aggregate(make_pq: Any) -> None:
    pq = make_pq()
    ids = await pq.add_jobs([("a", i, {"priority": i % 3}) for i in range(9)])
    delayed = await pq.add_job("a", "later", delay=60_000)
    stats = await pq.get_stats()
    assert (stats.waiting, stats.delayed) == (9, 1)
    waiting = await pq.get_jobs_by_status(JobStatus.WAITING, limit=5)
    assert len(waiting) == 5
    assert [j.priority for j in waiting] == sorted((j.priority for j in waiting), reverse=True)
    assert all(j.id in ids for j in waiting)
    assert [j.id for j in await pq.get_jobs_by_status("delayed")] == [delayed]

    await pq.pause()
    assert (await pq.get_stats()).is_paused
    await pq.resume()
    assert not (await pq.get_stats()).is_paused
    assert await pq.cancel_job(delayed) == "removed"
    assert await pq.remove_job(ids[0]) is True
    assert await pq.drain() == 8
    assert (await pq.get_stats()).waiting == 0
    await pq.clear()
    assert (await pq.health_check()).healthy


async def test_worker_processes_failures_and_events_with_full_ids(make_pq: Any) -> None:
    pq = make_pq(dlq={"enabled": True})
    seen: list[str] = []
    completed: list[str] = []

    async def work(job: Any) -> str:
        seen.append(pq.public_id(job))
        if job.data == "bad":
            raise ValueError("bad data")
        return f"done:{job.data}"

    pq.process("w", work)
    pq.on("job-completed", lambda ev: completed.append(ev.job_id))
    ids = await pq.add_jobs([("w", i) for i in range(6)])
    bad = await pq.add_job("w", "bad", attempts=1)
    await pq.start(concurrency=3)
    await wait_until(lambda: len(completed) == 6 and bad in seen, 10)
    assert sorted(completed) == sorted(ids)
    info = await pq.get_job_status(ids[2])
    assert info is not None and info.result == "done:2"
    await wait_until(lambda: _dlq(pq, bad), 5)
    assert await pq.replay_dlq() == 1
    await wait_until(lambda: seen.count(bad) == 2, 5)


async def _dlq(pq: PartitionedQueue, job_id: str) -> bool:
    return [j.id for j in await pq.get_dlq_jobs()] == [job_id]


async def test_merged_event_stream_covers_every_partition(make_pq: Any) -> None:
    pq = make_pq()
    ids = await pq.add_jobs([("a", i) for i in range(9)])  # round-robin: 3 per partition
    seen = [
        ev
        async for ev in pq.events(last_id="0", block_ms=200, follow=False)
        if ev.event == "job-added"
    ]
    assert sorted(ev.job_id for ev in seen) == sorted(ids)
    assert all(ev.fields["partition"] == ev.job_id.split(":")[0] for ev in seen)
    # Within one partition the stream order is kept.
    for p in range(3):
        mine = [ev.job_id for ev in seen if ev.fields["partition"] == str(p)]
        assert mine == [i for i in ids if i.startswith(f"{p}:")]

    # Following live ("$"): events of jobs added while the reader runs arrive, from every
    # partition. Jobs keep coming until they did: a reader that has not blocked on its
    # stream yet misses what came before, as "$" means.
    got: list[str] = []

    async def follow() -> None:
        async for ev in pq.events(block_ms=100):
            if ev.event == "job-added":
                got.append(ev.job_id)
                if len({i.split(":")[0] for i in got}) == 3:
                    return

    reader = asyncio.ensure_future(follow())
    later: list[str] = []
    for _ in range(200):
        if reader.done():
            break
        later += await pq.add_jobs([("a", i) for i in range(3)])  # one per partition
        await asyncio.sleep(0.05)
    await asyncio.wait_for(reader, 10)
    assert got and set(got) <= set(later) and not set(got) & set(ids)

    with pytest.raises(ConfigurationError, match="must be '\\$' or '0'"):
        async for _ in pq.events(last_id="1-0"):
            pass


async def test_one_budget_shared_fairly_over_partitions(make_pq: Any) -> None:
    """concurrency=2 over 3 loaded partitions: never more than 2 jobs at once, and the
    partitions take turns instead of the first one hogging both slots."""
    pq = make_pq()
    running = 0
    peak = 0
    order: list[str] = []

    async def work(job: Any) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        order.append(job.queue_name)
        running -= 1

    pq.process("w", work)
    for p in range(3):
        await pq.add_jobs([("w", i, {"partition_key": _key_for(pq, p)}) for i in range(20)])
    await pq.start(concurrency=2)
    await wait_until(lambda: len(order) == 60, 15)
    assert peak == 2
    first_half = Counter(order[:30])
    assert min(first_half.values()) >= 7, first_half  # each got its turn, 10 being even


def _key_for(pq: PartitionedQueue, partition: int) -> str:
    return next(k for k in (f"k{i}" for i in range(1000)) if pq.partition_of(k) == partition)


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_doc_example_runs(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    url = "memory://" if backend == "memory" else request.getfixturevalue("redis_url")
    out = run_doc_example("partitioned", tmp_path, KQ_PARTITIONED_URL=url)
    first_id, status, *_ = out.split()
    assert first_id.split(":")[0] in {"0", "1", "2"} and "COMPLETED" in status.upper()


async def test_every_queue_method_reaches_the_partitions(make_pq: Any) -> None:
    """Methods a partitioned queue gets from the one API definition (api.QueueAPI)."""
    pq = make_pq()
    ids = await pq.add_jobs([("a", i, {"priority": i}) for i in range(6)])
    detail = await pq.get_job_detail(ids[4])
    assert detail is not None and (detail.id, detail.data, detail.worker) == (ids[4], 4, None)
    assert await pq.get_job_detail("4") is None  # not a full id
    by_priority = [j.id for j in await pq.get_jobs_by_status("waiting")]
    assert by_priority == ids[::-1]
    # An offset applies to the merged order of all partitions.
    assert [j.id for j in await pq.get_jobs_by_status("waiting", 2, 3)] == by_priority[3:5]
    assert await pq.recover_stalled() == ([], [])  # no lease has expired
    with pytest.raises(ConfigurationError, match="limit"):
        await pq.bulk_retry("failed", -1)  # refused, as on a plain queue
    with pytest.raises(ConfigurationError, match="not available on PartitionedQueue"):
        await pq.list_jobs("waiting")

    sizes: list[int] = []

    @pq.process_batch("b", size=5, max_wait=50)
    def batch(jobs: list[Any]) -> list[int]:
        sizes.append(len(jobs))
        return [job.data for job in jobs]

    await pq.add_jobs([("b", i) for i in range(9)])  # round-robin: every partition has some
    await pq.start(concurrency=6)
    await wait_until(lambda: sum(sizes) == 9, 10)
