"""Worker crashes and graceful shutdown with real worker processes (DESIGN.md §2, §6).

* SIGKILL of one of two workers mid-run: no job lost, the interrupted jobs run again and
  complete within ``lock_duration`` + 2 s of the kill, no completed job runs again.
* SIGTERM mid-run: no job lost, none started twice, the worker exits 0 within its grace
  period; a job longer than ``shutdown_timeout`` is handed back at shutdown (state
  ``waiting`` as the process exits, not after lease expiry) and another worker runs it.
* A claim that is still in flight when the worker starts stopping: its jobs are handed
  back unstarted instead of being started and then cut off.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from kitium_queue import JobQueue, JobStatus
from workers.harness import WorkerPool, starts, wait_for

QUEUE = "crash"
N_JOBS = 200


@pytest.fixture
def pool(tmp_path: Path, redis_url: str, prefix: str) -> Iterator[WorkerPool]:
    p = WorkerPool(tmp_path, url=redis_url, prefix=prefix, queue=QUEUE)
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
async def producer(redis_url: str, prefix: str) -> AsyncIterator[JobQueue]:
    q = JobQueue(QUEUE, redis=redis_url, prefix=prefix)
    try:
        yield q
    finally:
        await q.close()
        cleanup = redis.asyncio.Redis.from_url(redis_url)
        keys = [k async for k in cleanup.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await cleanup.delete(*keys)
        await cleanup.aclose()


async def _add_batch(q: JobQueue, n: int, seed: int) -> list[str]:
    rnd = random.Random(seed)
    return await q.add_jobs(
        [("work", {"ms": rnd.randint(50, 200)}, {"remove_on_complete": False}) for _ in range(n)]
    )


async def _completed(client: Any, q: JobQueue) -> dict[str, float]:
    """Completed job id → finish time (ms, Redis clock)."""
    return {m.decode(): s for m, s in await client.zrange(q.keys.completed, 0, -1, withscores=True)}


async def _poll(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.02)


async def _assert_all_completed(q: JobQueue, client: Any, ids: list[str]) -> None:
    pipe = client.pipeline(transaction=False)
    for jid in ids:
        pipe.hget(q.keys.job(jid), "st")
    states = await pipe.execute()
    wrong = {jid: st for jid, st in zip(ids, states, strict=True) if st != b"completed"}
    assert not wrong, f"{len(wrong)} job(s) not completed: {dict(list(wrong.items())[:10])}"
    for key in (q.keys.wait, q.keys.active, q.keys.delayed, q.keys.failed, q.keys.dlq):
        assert await client.zcard(key) == 0, key


# ---------------------------------------------------------------------- SIGKILL


@pytest.mark.redis_only
async def test_sigkill_one_of_two_workers_loses_nothing(
    pool: WorkerPool, producer: JobQueue
) -> None:
    lock_ms = 2000
    settings = {"lock_duration": lock_ms, "stalled_interval": 250, "concurrency": 4}
    victim = pool.start("victim", **settings)
    survivor = pool.start("survivor", **settings)
    await asyncio.to_thread(victim.wait_ready)
    await asyncio.to_thread(survivor.wait_ready)
    client = await producer.client()

    ids = await _add_batch(producer, N_JOBS, seed=1)

    async def mid_run() -> bool:
        return (
            await client.zcard(producer.keys.completed) >= N_JOBS // 4
            and len(victim.running_jobs()) >= 2
        )

    await _poll(mid_run, 30, "the victim to be mid-run")
    t_kill = victim.kill()
    # The victim is dead and reaped: whatever Redis recorded as completed now was
    # completed before the kill.
    done_before = await _completed(client, producer)
    victim_starts = starts(victim.lines())
    interrupted = set(victim_starts) - set(done_before)
    assert interrupted, "the victim held no job when it was killed"

    async def all_done() -> bool:
        return int(await client.zcard(producer.keys.completed)) == N_JOBS

    await _poll(all_done, 60, f"all {N_JOBS} jobs to complete")
    await _assert_all_completed(producer, client, ids)

    lines = pool.all_lines()
    runs = starts(lines)
    assert set(runs) == set(ids)
    # No job that had completed before the kill was run again.
    again = {j: runs[j] for j in done_before if runs[j] != 1}
    assert not again, f"completed jobs run again: {again}"

    completed = await _completed(client, producer)
    infos = {jid: await producer.get_job_status(jid) for jid in interrupted}
    # An outcome the victim wrote to its socket just before dying may still have been
    # applied after the snapshot above: such a job completed on the victim, once.
    late_acks = {j for j, i in infos.items() if i and i.result == {"pid": victim.pid, "attempt": 1}}
    rerun_ids = interrupted - late_acks
    assert rerun_ids, "no job was interrupted by the kill"
    assert all(runs[j] == 1 for j in late_acks)
    # Only interrupted jobs ran more than once, and exactly twice.
    assert {j for j, n in runs.items() if n > 1} == rerun_ids
    restart_delays, finish_delays = [], []
    for jid in rerun_ids:
        rerun = [
            ln
            for ln in lines
            if ln.job_id == jid and ln.event == "start" and ln.pid == survivor.pid
        ]
        assert len(rerun) == 1 and rerun[0].t > t_kill, jid
        restart_delays.append(rerun[0].t - t_kill)
        finish_delays.append(completed[jid] / 1000 - t_kill)
        info = infos[jid]
        assert info is not None and info.status is JobStatus.COMPLETED
        assert info.result == {"pid": survivor.pid, "attempt": 1}
        assert info.stalls == 1
    bound = lock_ms / 1000 + 2
    assert max(finish_delays) <= bound, (
        f"interrupted jobs completed {max(finish_delays):.2f} s after the kill "
        f"(> lock_duration + 2 s = {bound:.1f} s)"
    )
    print(
        f"\n{len(rerun_ids)} interrupted job(s); re-run started "
        f"{min(restart_delays):.2f}-{max(restart_delays):.2f} s and completed "
        f"{min(finish_delays):.2f}-{max(finish_delays):.2f} s after the kill "
        f"(bound {bound:.1f} s); {len(done_before)} completed before the kill, none re-run"
    )


# ---------------------------------------------------------------------- SIGTERM


@pytest.mark.redis_only
async def test_sigterm_mid_run_loses_nothing_and_runs_nothing_twice(
    pool: WorkerPool, producer: JobQueue
) -> None:
    grace_ms = 5000
    # A 30 s lease: nothing below can be rescued by lease expiry within the test, so a
    # job dropped at shutdown would show up as never completed.
    settings = {"lock_duration": 30_000, "concurrency": 4, "shutdown_timeout": grace_ms}
    stopping = pool.start("stopping", **settings)
    staying = pool.start("staying", **settings)
    await asyncio.to_thread(stopping.wait_ready)
    await asyncio.to_thread(staying.wait_ready)
    client = await producer.client()
    ids = await _add_batch(producer, N_JOBS, seed=2)

    async def mid_run() -> bool:
        return (
            await client.zcard(producer.keys.completed) >= N_JOBS // 4
            and len(stopping.running_jobs()) >= 2
        )

    await _poll(mid_run, 30, "the stopping worker to be mid-run")
    running_at_term = stopping.running_jobs()
    t_term = stopping.signal(signal.SIGTERM)
    rc = await asyncio.to_thread(stopping.wait, grace_ms / 1000 + 10)
    exit_s = time.time() - t_term
    assert rc == 0, stopping.stderr()[-3000:]
    assert exit_s <= grace_ms / 1000 + 2, f"exited {exit_s:.2f} s after SIGTERM"
    assert stopping.lines()[-1].event == "exit"
    # Every job it had started ran to the end in that process.
    assert not stopping.running_jobs()

    async def all_done() -> bool:
        return int(await client.zcard(producer.keys.completed)) == N_JOBS

    await _poll(all_done, 20, f"all {N_JOBS} jobs to complete")
    await _assert_all_completed(producer, client, ids)
    runs = starts(pool.all_lines())
    twice = {j: n for j, n in runs.items() if n != 1}
    assert set(runs) == set(ids)
    assert not twice, f"jobs started more than once: {twice}"
    for jid in running_at_term:
        info = await producer.get_job_status(jid)
        assert info is not None and info.result == {"pid": stopping.pid, "attempt": 1}
    print(
        f"\nSIGTERM with {len(running_at_term)} job(s) running: exit code 0 after "
        f"{exit_s:.2f} s; 0 lost, 0 run twice"
    )


@pytest.mark.redis_only
async def test_sigterm_hands_back_job_longer_than_grace_period(
    pool: WorkerPool, producer: JobQueue
) -> None:
    grace_ms = 1000
    lock_ms = 30_000
    stopping = pool.start(
        "stopping", lock_duration=lock_ms, concurrency=2, shutdown_timeout=grace_ms
    )
    await asyncio.to_thread(stopping.wait_ready)
    client = await producer.client()
    long_ids = await producer.add_jobs(
        [("long", {"ms": 120_000}, {"remove_on_complete": False}) for _ in range(2)]
    )
    await asyncio.to_thread(
        wait_for, lambda: len(stopping.running_jobs()) == 2, 20, what="both long jobs to start"
    )

    t_term = stopping.signal(signal.SIGTERM)
    rc = await asyncio.to_thread(stopping.wait, grace_ms / 1000 + 10)
    exit_s = time.time() - t_term
    assert rc == 0, stopping.stderr()[-3000:]
    # Handed back by the worker itself: the jobs are waiting the moment it has exited,
    # long before their 30 s leases could have expired.
    assert exit_s <= grace_ms / 1000 + 2
    for jid in long_ids:
        info = await producer.get_job_status(jid)
        assert info is not None
        assert info.status is JobStatus.WAITING, info
        assert info.attempts == 0 and info.stalls == 0  # no attempt spent, not a stall
    assert await client.zcard(producer.keys.active) == 0
    assert await client.zcard(producer.keys.wait) == 2
    raw = await client.xrange(producer.keys.events, "-", "+")
    released = {f[b"id"].decode() for _, f in raw if f[b"e"] == b"job-released"}
    assert released == set(long_ids)
    assert "handed back" in stopping.stderr()

    taker = pool.start("taker", behaviour="fast", lock_duration=lock_ms)
    await asyncio.to_thread(taker.wait_ready)

    async def done() -> bool:
        return int(await client.zcard(producer.keys.completed)) == 2

    await _poll(done, 20, "the handed-back jobs to complete on another worker")
    for jid in long_ids:
        info = await producer.get_job_status(jid)
        assert info is not None and info.status is JobStatus.COMPLETED
        assert info.result == {"pid": taker.pid, "attempt": 1}
        assert info.stalls == 0
    print(
        f"\nSIGTERM with 2 jobs longer than the {grace_ms} ms grace period: exit code 0 "
        f"after {exit_s:.2f} s, both waiting at exit, then completed by another worker"
    )


# ---------------------------------------------------------------------- stop vs claim race


@pytest.mark.redis_only
async def test_jobs_claimed_while_stop_begins_are_handed_back_unstarted(
    redis_url: str, prefix: str
) -> None:
    """SIGTERM may arrive while a claim is on the wire; what it returns must not start.

    Starting those jobs and then cancelling them at the end of the grace period would
    run them twice (here and on the next worker) although they never needed to start.
    """
    q = JobQueue(
        QUEUE, redis=redis_url, prefix=prefix, worker={"concurrency": 2, "shutdown_timeout": 2000}
    )
    started: list[str] = []

    @q.process("*")
    async def proc(job: Any) -> None:
        started.append(job.id)
        await asyncio.sleep(60)

    ids = await q.add_jobs([("a", {}), ("b", {})])
    # Simulate the signal arriving while the pump waits for its first claim reply.
    real_pipeline = q.scripts.pipeline
    stop_task: list[asyncio.Task[None]] = []

    async def pipeline(client: Any, calls: Any) -> Any:
        if any(c.script == "claim" for c in calls) and not stop_task:
            stop_task.append(asyncio.ensure_future(q.worker.stop()))
            await asyncio.sleep(0)  # stop() begins before the claim reply arrives
        return await real_pipeline(client, calls)

    q.scripts.pipeline = pipeline  # type: ignore[method-assign]
    try:
        await q.start()

        async def claimed() -> bool:
            return bool(stop_task)

        await _poll(claimed, 10, "a claim")
        await asyncio.wait_for(asyncio.shield(stop_task[0]), 10)
    finally:
        q.scripts.pipeline = real_pipeline  # type: ignore[method-assign]
        await q.close()

    assert started == [], f"jobs claimed during shutdown were started: {started}"
    check = JobQueue(QUEUE, redis=redis_url, prefix=prefix)
    try:
        for jid in ids:
            info = await check.get_job_status(jid)
            assert info is not None and info.status is JobStatus.WAITING
            assert info.attempts == 0
        await check.clear(force=True)
    finally:
        await check.close()
