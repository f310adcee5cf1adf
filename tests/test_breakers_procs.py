"""Circuit breakers across real worker processes (``tests/workers/breaker_worker.py``).

* two worker processes count into one window and see one state: the breaker opens after
  ``min_requests`` outcomes at the threshold, counted from both;
* while it is open, 1,000 bound jobs wait (status ``pending``, no attempt spent) and
  other jobs run; half-open lets only the probe count through; when the dependency
  recovers it closes and the held jobs drain;
* a worker SIGKILLed while it runs the probe does not leave the breaker half-open for
  good: the probe's lease expires, recovery gives its place back, and the probe runs
  again on another worker.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from helpers import wait_until
from kitium_queue import CircuitBreakerManager, CircuitBreakerState, JobQueue, JobStatus
from kitium_queue.parking import parked_in
from workers.procs import WorkerProcs

BREAKER_WORKER = Path(__file__).resolve().parent / "workers" / "breaker_worker.py"
pytestmark = [pytest.mark.redis_only]
OPEN, HALF, CLOSED = (
    CircuitBreakerState.OPEN,
    CircuitBreakerState.HALF_OPEN,
    CircuitBreakerState.CLOSED,
)


@pytest.fixture
async def procs(redis_url: str, prefix: str, tmp_path: Path) -> AsyncIterator[WorkerProcs]:
    wp = WorkerProcs(redis_url, prefix, "cb", tmp_path, script=BREAKER_WORKER)
    try:
        yield wp
    finally:
        await wp.close()


@pytest.fixture
async def queue(redis_url: str, prefix: str) -> AsyncIterator[JobQueue]:
    q = JobQueue("cb", redis=redis_url, prefix=prefix, worker={"scheduler": False})
    try:
        yield q
    finally:
        await q.close()


async def _runs(q: JobQueue, prefix: str) -> list[dict[str, Any]]:
    client = await q.client()
    return [orjson.loads(r) for r in await client.lrange(f"{prefix}:runs", 0, -1)]


async def _dep(q: JobQueue, prefix: str, health: str) -> None:
    client = await q.client()
    await client.set(f"{prefix}:dep", health)


async def _statuses(q: JobQueue, ids: list[str]) -> list[tuple[str, int]]:
    client = await q.client()
    pipe = client.pipeline(transaction=False)
    for jid in ids:
        pipe.hmget(q.keys.job(jid), "st", "a")
    return [((st or b"missing").decode(), int(a or 0)) for st, a in await pipe.execute()]


async def test_two_processes_one_state_held_jobs_probes_and_drain(
    procs: WorkerProcs, queue: JobQueue, prefix: str
) -> None:
    m = CircuitBreakerManager(queue, events=False)
    await m.create_breaker(
        {
            "id": "dep",
            "job_name": "call-dep",
            "timeout": 60_000,
            "half_open_probes": 2,
            "probe_timeout": 30_000,
            "failure_threshold": {"percentage": 50, "min_requests": 10},
        }
    )
    await _dep(queue, prefix, "hang")
    await procs.start(2, "--concurrency", "2")
    # Phase 1: the dependency fails; both workers' failures count in one window. It
    # hangs first: a worker holds at most 2 jobs, so both workers run some (whatever
    # the machine's load), then it fails.
    keep = {"remove_on_complete": False}  # more than the 1,000 kept by default complete
    first = await queue.add_jobs([("call-dep", {}, keep) for _ in range(40)])

    async def both_running() -> bool:
        return len({r["pid"] for r in await _runs(queue, prefix)}) == 2

    await wait_until(both_running, timeout=20)
    await _dep(queue, prefix, "down")
    await wait_until(lambda: _state_is(m, OPEN), timeout=20)
    runs = await _runs(queue, prefix)
    assert len({r["pid"] for r in runs}) == 2, "both workers ran bound jobs"
    # Opened after min_requests outcomes: at most the runs in flight (2 x 2) more.
    assert 10 <= len(runs) <= 10 + 4, len(runs)
    st = await m.get_stats("dep")
    assert "10 of 10 requests failed" in st.reason
    # Phase 2: open. 1,000 bound jobs wait, other jobs run.
    held = await queue.add_jobs([("call-dep", {"i": i}, keep) for i in range(1000)])
    await _dep(queue, prefix, "up")  # "other" jobs succeed; held ones are not called
    others = await queue.add_jobs([("other", {"b": "none"}) for _ in range(50)])
    await wait_until(lambda: _all(queue, others, "completed"), timeout=20)
    ran = sum(1 for r in await _runs(queue, prefix) if r["name"] == "call-dep")
    assert ran <= 10 + 4
    await wait_until(lambda: _held(queue, len(held) + len(first) - ran), timeout=20)
    statuses = await _statuses(queue, held)
    assert statuses == [("pending", 0)] * len(held)
    # Phase 3: the timeout ends; the two probes succeed; it closes; everything drains.
    base = len(await _runs(queue, prefix))
    await m.force_open("dep", 500)
    await wait_until(lambda: _state_is(m, CLOSED), timeout=20)
    await wait_until(lambda: _all(queue, held, "completed"), timeout=60)
    later = (await _runs(queue, prefix))[base:]
    bound = [r for r in later if r["name"] == "call-dep"]
    assert [r["st"] for r in bound].count("half-open") == 2, "exactly the two probes"
    assert "open" not in [r["st"] for r in bound]
    assert len(bound) == len(held) + len(first) - ran
    assert (await m.get_stats("dep")).held_jobs == 0


async def test_probe_worker_sigkilled_does_not_leave_it_half_open(
    procs: WorkerProcs, queue: JobQueue, prefix: str
) -> None:
    m = CircuitBreakerManager(queue, events=False)
    # probe_timeout is long: the lease, not the probe deadline, must end the probe.
    await m.create_breaker(
        {
            "id": "dep",
            "job_name": "call-dep",
            "timeout": 300,
            "half_open_probes": 1,
            "probe_timeout": 600_000,
            "failure_threshold": {"percentage": 50, "min_requests": 5},
        }
    )
    await _dep(queue, prefix, "hang")
    await m.force_open("dep", 300)
    ids = await queue.add_jobs([("call-dep", {}) for _ in range(20)])
    await procs.start(1, "--concurrency", "4", "--lease", "1500")
    # The probe starts and hangs; the other 19 stay held.
    await wait_until(lambda: _probe_running(queue, prefix), timeout=20)
    st = await m.get_stats("dep")
    assert st.state is HALF and st.probes_admitted == 1
    probe = (await _runs(queue, prefix))[0]["id"]
    procs.kill(0)
    await _dep(queue, prefix, "up")
    await procs.start(1, "--concurrency", "4", "--lease", "1500")
    # Lease expires -> recovery (stalled) -> its place is free -> it runs again.
    await wait_until(lambda: _state_is(m, CLOSED), timeout=30)
    await wait_until(lambda: _all(queue, ids, "completed"), timeout=30)
    info = await queue.get_job_status(probe)
    assert info is not None and info.status is JobStatus.COMPLETED and info.stalls == 1
    hist = [(t.from_state, t.to_state) for t in reversed(await m.history("dep"))]
    assert hist[-2:] == [("open", "half-open"), ("half-open", "closed")]


async def _probe_running(q: JobQueue, prefix: str) -> bool:
    return len(await _runs(q, prefix)) >= 1


async def _state_is(m: CircuitBreakerManager, state: CircuitBreakerState) -> bool:
    return bool(await m.get_state("dep") is state)


async def _all(q: JobQueue, ids: list[str], status: str) -> bool:
    return all(st == status for st, _ in await _statuses(q, ids))


async def _held(q: JobQueue, n: int) -> bool:
    return len(await parked_in(q, "cb:dep", limit=n + 100)) == n
