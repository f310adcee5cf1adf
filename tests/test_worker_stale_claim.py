"""A worker stopped (SIGSTOP) right after a claim, for longer than the lease, never starts
the jobs of that claim once let go: by then the leases ran out, the jobs were recovered
and run by another worker (docs/RELIABILITY.md, "Leases").

The worker processes run ``WORKER`` (written to the test's tmp dir). Its processor
records ``<job id> <pid>`` in ``<prefix>:starts`` before anything else, then waits for
the file named by the job's ``gate`` (if any) and writes ``<gate>.out`` on its way out.
The stop lands while the claim's reply is on its way (the test holds the claim back
with ``CLIENT PAUSE``, or stops the worker while its wake-up wait is blocked), so the
claim runs in Redis while the process is stopped and its reply waits in the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from _redis import RedisServer
from helpers import all_completed, recording_worker, wait_for_status, wait_until
from kitium_queue import JobQueue, JobStatus
from workers.procs import WorkerProcs

QUEUE = "stale"
LEASE_MS = 1500

WORKER = r"""
import argparse, asyncio, logging, os
import redis.asyncio as aioredis
from kitium_queue import JobQueue

p = argparse.ArgumentParser()
for a in ("--url", "--prefix", "--queue"):
    p.add_argument(a, required=True)
p.add_argument("--lease", type=int, default=1500)
args = p.parse_args()
logging.basicConfig(level=logging.WARNING)


async def main():
    q = JobQueue(
        args.queue, redis=args.url, prefix=args.prefix,
        worker={"concurrency": 1, "scheduler": False, "shutdown_timeout": 1000},
        settings={"lock_duration": args.lease, "max_stalled_interval": 200},
    )
    rec = aioredis.Redis.from_url(args.url)
    pid = os.getpid()

    async def work(job):
        await rec.rpush(args.prefix + ":starts", f"{job.id} {pid}")
        gate = (job.data or {}).get("gate")
        while gate and not os.path.exists(gate):
            await asyncio.sleep(0.01)
        if gate:
            open(gate + ".out", "w").close()
        return pid

    q.process("work", work)
    await q.start()
    print("ready", flush=True)
    await q.run_worker()


asyncio.run(main())
"""


@pytest.fixture
def worker_script(tmp_path: Path) -> Path:
    path = tmp_path / "stale_worker.py"
    path.write_text(WORKER)
    return path


@contextlib.asynccontextmanager
async def _procs(url: str, prefix: str, tmp_path: Path, script: Path) -> AsyncIterator[WorkerProcs]:
    wp = WorkerProcs(url, prefix, QUEUE, tmp_path, script=script)
    try:
        yield wp
    finally:
        for p in wp.procs:  # a stopped process would not hear SIGTERM
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGCONT)
        await wp.close()


@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    """A private server: ``CLIENT PAUSE`` holds every client of it."""
    srv = RedisServer().start()
    try:
        yield srv
    finally:
        srv.close()


async def _starts(r: aioredis.Redis, prefix: str) -> list[tuple[str, int]]:
    out = []
    for raw in await r.lrange(f"{prefix}:starts", 0, -1):
        jid, pid = raw.decode().split(" ")
        out.append((jid, int(pid)))
    return out


async def _state(r: aioredis.Redis, q: JobQueue, jid: str) -> str:
    return (await r.hget(q.keys.job(jid), "st") or b"").decode()


async def _let_go_late(
    wp: WorkerProcs, q: JobQueue, r: aioredis.Redis, prefix: str, stopped: int, jid: str
) -> None:
    """``stopped`` holds ``jid``'s lease in Redis: outlive the lease, let a second worker
    recover and run the job, then let the stopped worker go; it must not start it."""

    async def active() -> bool:
        return await _state(r, q, jid) == "active"

    await wait_until(active, timeout=10)
    await asyncio.sleep(LEASE_MS / 1000 + 0.5)  # the lease ran out meanwhile
    await wp.start(1, "--lease", str(LEASE_MS))
    other = wp.procs[-1].pid

    async def done() -> bool:
        return await _state(r, q, jid) == "completed"

    await wait_until(done, timeout=15)
    os.kill(stopped, signal.SIGCONT)
    await asyncio.sleep(1.5)  # the stopped worker reads the claim's reply by now
    starts = [pid for j, pid in await _starts(r, prefix) if j == jid]
    assert starts == [other], (starts, stopped, other, wp.stderr()[-2000:])
    # Said once: by the start check, or by the lease renewal when it saw the lost lease
    # first (the job is then abandoned before it could start: never started either way).
    err = wp.stderr()
    said = ("not started" in err and "1 claimed job" in err) or (
        f"lease of job {jid} expired" in err
    )
    assert said, err[-2000:]

    # The worker let go is healthy: with the other one gone, it runs the next job.
    wp.kill(len(wp.procs) - 1)
    await wp.procs[-1].wait()
    nxt = await q.add_job("work", {})

    async def next_done() -> bool:
        return await _state(r, q, nxt) == "completed"

    await wait_until(next_done, timeout=15)
    assert [pid for j, pid in await _starts(r, prefix) if j == nxt] == [stopped]


@pytest.mark.redis_only
async def test_stopped_during_its_wake_up_wait_it_never_starts_the_job_claimed_meanwhile(
    redis_url: str, prefix: str, tmp_path: Path, worker_script: Path
) -> None:
    """The claim rides on the idle worker's wake-up wait: stopped while it waits, the
    worker's claim runs in Redis when the job arrives and its reply waits in the socket."""
    q = JobQueue(QUEUE, redis=redis_url, prefix=prefix, worker={"scheduler": False})
    r = await q.client()
    try:
        async with _procs(redis_url, prefix, tmp_path, worker_script) as wp:
            await wp.start(1, "--lease", str(LEASE_MS))
            pid = wp.procs[0].pid

            async def waiting() -> bool:  # the wake-up wait (with its claim) is blocked
                clients = await r.client_list()
                return any(
                    c.get("cmd") == "bzpopmin" and "b" in c.get("flags", "") for c in clients
                )

            await wait_until(waiting, timeout=10)
            os.kill(pid, signal.SIGSTOP)
            jid = await q.add_job("work", {})
            await _let_go_late(wp, q, r, prefix, pid, jid)
    finally:
        await q.close()


@pytest.mark.redis_only
async def test_stopped_with_a_claim_in_flight_it_never_starts_the_job_claimed(
    own_server: RedisServer, prefix: str, tmp_path: Path, worker_script: Path
) -> None:
    """The claim rides on a pump round (with the previous job's outcome): held back by
    ``CLIENT PAUSE``, the round runs once the worker is stopped."""
    url = own_server.url
    q = JobQueue(QUEUE, redis=url, prefix=prefix, worker={"scheduler": False})
    r = await q.client()
    gate = tmp_path / "gate"
    try:
        async with _procs(url, prefix, tmp_path, worker_script) as wp:
            await wp.start(1, "--lease", str(LEASE_MS))
            pid = wp.procs[0].pid
            first = await q.add_job("work", {"gate": str(gate)})

            async def running() -> bool:
                return (first, pid) in await _starts(r, prefix)

            await wait_until(running, timeout=10)
            jid = await q.add_job("work", {})
            await r.execute_command("CLIENT", "PAUSE", 30000, "WRITE")
            try:
                gate.touch()
                await wait_until(lambda: Path(f"{gate}.out").exists(), timeout=10)
                await asyncio.sleep(0.5)  # its round (outcome + claim) waits in the pause
                os.kill(pid, signal.SIGSTOP)
            finally:
                await r.execute_command("CLIENT", "UNPAUSE")
            await _let_go_late(wp, q, r, prefix, pid, jid)
            assert await _state(r, q, first) == "completed"
    finally:
        await q.close()


# One job at a time, under a lease (1 s) shorter than the idle worker's wake-up wait.
_ONE_SLOT: dict[str, Any] = {
    "worker": {"concurrency": 1, "scheduler": False},
    "settings": {"lock_duration": 1000},
}


async def test_a_job_claimed_late_in_a_long_wake_up_wait_starts_after_renewing(
    backend_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A lease shorter than the idle worker's wake-up wait: the claim that rode on it was
    sent long before it ran, so the worker cannot tell by its clock that the lease is
    still its own; it renews it (fenced) and starts the job, which is not dropped."""
    async with recording_worker(backend_url, prefix, QUEUE, **_ONE_SLOT) as (q, w, ran):
        await asyncio.sleep(2.0)  # idle, in its wake-up wait
        with caplog.at_level(logging.WARNING, "kitium_queue"):
            jid = await q.add_job("work", {})
            await wait_for_status(q, jid, JobStatus.COMPLETED, timeout=10)
        assert ran == [jid]
        assert w.leases.unstarted == 0
        assert "not started" not in caplog.text
        if w._fused:  # the claim rode on the wait: it was checked, and renewed
            assert w.leases.renewed_late == 1


async def test_a_delayed_job_claimed_as_the_wake_up_wait_times_out_starts_at_once(
    backend_url: str, prefix: str
) -> None:
    """The wait ends at the delayed job's due time: the claim riding on it ran no sooner
    than that timeout after the wait was sent, so its lease counts from there and the
    job starts without a renewal, though the wait was longer than the lease."""
    async with recording_worker(backend_url, prefix, QUEUE, **_ONE_SLOT) as (q, w, ran):
        await asyncio.sleep(0.2)
        jid = await q.add_job("work", {}, delay=2500)
        await wait_for_status(q, jid, JobStatus.COMPLETED, timeout=15)
        assert ran == [jid]
        assert w.leases.unstarted == 0 and w.leases.renewed_late == 0


async def test_jobs_past_their_start_window_renew_their_lease_and_run(
    backend_url: str, prefix: str
) -> None:
    """Every claim looks late (the worker's start window moved into the past): each job
    renews its lease (fenced, still this worker's) and runs once; none is dropped.
    (``test_review_stale_claim.py``: when the renewal's reply is late too, the job is
    handed back.)"""
    two_slots = recording_worker(backend_url, prefix, QUEUE, worker={"concurrency": 2})
    async with two_slots as (q, w, ran):
        w.runner._window = -60.0
        ids = [await q.add_job("work", {"n": n}) for n in range(5)]
        await wait_until(lambda: all_completed(q, ids), timeout=15)
        assert sorted(ran) == sorted(ids)
        assert w.leases.renewed_late == 5 and w.leases.unstarted == 0
