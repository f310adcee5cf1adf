"""The start check of a claimed job (docs/RELIABILITY.md, "A claimed job never starts
after its lease ran out"): a job whose lease renewal succeeded but whose replies all came
back too late to prove it (a starved event loop) is not started, and not left to stall
either: it is handed back, so it neither waits for its lease to expire nor counts toward
``max_stalled_count``."""

from __future__ import annotations

from helpers import recording_worker, wait_for_status, wait_until
from kitium_queue import JobStatus
from kitium_queue.leases import start_window


async def test_a_job_whose_renewals_all_came_back_late_is_handed_back_not_stalled(
    backend_url: str, prefix: str
) -> None:
    """Every renewal reply looks late while the windows are in the past: the job is not
    started. Its lease is still this worker's, so it goes back to the queue at once; with
    ``max_stalled_count=0`` a stall would dead-letter it. Once replies are timely again it
    runs, once, with no stall recorded. (``test_worker_stale_claim.py``: a job claimed
    late renews its lease and starts; here the renewal's reply is late too.)"""
    lease = 1000
    async with recording_worker(
        backend_url,
        prefix,
        "late",
        worker={"concurrency": 1, "scheduler": False},
        settings={"lock_duration": lease, "max_stalled_count": 0, "max_stalled_interval": 200},
    ) as (q, w, ran):
        w.runner._window = w.leases.window = -60.0  # every start and every reply is late
        jid = await q.add_job("work", {})
        await wait_until(lambda: w.leases.unstarted >= 1, timeout=10)
        assert ran == []
        w.runner._window = w.leases.window = start_window(lease)
        ended = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.DLQ)
        info = await wait_for_status(q, jid, *ended, timeout=15)
        assert info.status is JobStatus.COMPLETED, info
        assert ran == [jid]
        assert info.stalls == 0
