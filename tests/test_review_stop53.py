"""A worker handing on a job its capable peer is too busy to take still runs its own
jobs; a secondary keeps a job removed at the source removed when a requeue written
before the removal is applied late, and adds back one requeued after it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from helpers import QueueFactory, all_completed, wait_until
from kitium_queue import JobQueue, JobStatus
from kitium_queue.features.regions.copying import apply
from kitium_queue.features.regions.lua import entry, install


async def test_a_worker_busy_handing_on_one_job_still_runs_its_own(
    make_queue: QueueFactory,
) -> None:
    # ``old`` (one slot) has no processor for "x"; ``new`` has one but is busy with a long
    # "x" job. The "x" job ``old`` keeps taking is handed on each time; between two such
    # holds ``old`` must still run the "y" jobs it can run, not stand down until ``new``
    # is free (the held job comes due again at the head of the queue when the stand-down
    # ends, so ``old`` took it back round after round).
    new = make_queue("sd53", worker={"concurrency": 1})
    old = make_queue("sd53", worker={"concurrency": 1})
    release = asyncio.Event()
    started = asyncio.Event()

    async def x(job: Any) -> None:
        started.set()
        if job.data["i"] == 0:
            await asyncio.wait_for(release.wait(), 60)

    async def y(job: Any) -> None:
        return None

    new.process("x", x)
    old.process("y", y)
    await new.start()
    await new.add_job("x", {"i": 0})
    await asyncio.wait_for(started.wait(), 10)  # ``new`` is busy from here
    await old.start()
    await new.add_job("x", {"i": 1})
    ys = [await new.add_job("y", {"i": i}) for i in range(3)]
    try:
        await wait_until(lambda: all_completed(new, ys), 10)
    finally:
        release.set()


# ------------------------------------------------------------------------- regions
T0 = 1_000_000
SRC = "a@1"


@pytest.fixture
async def copy(backend_url: str, prefix: str) -> AsyncIterator[JobQueue]:
    q = JobQueue("proto53", redis=backend_url, prefix=prefix)
    install(q, replicated=True)
    yield q
    await q.close()


def _entry(op: str, state: str, at: int, seq: int = 0) -> list[Any]:
    return entry(
        op=op,
        id="j1",
        name="job",
        data=b'"x"' if op != "end" else "",
        priority="0",
        lifo="0",
        created=T0,
        state=state,
        attempts="1",
        keep_count="",
        keep_age="",
        at=at,
        seq=seq,
    )


async def test_a_requeue_applied_late_never_brings_back_a_job_removed_since(
    copy: JobQueue,
) -> None:
    # At the source: the job is retried (a 'req' exported while it waits), then removed
    # by its user (an 'end' removed). The batch of the 'req' is applied late, after the
    # removal (a replicator that waited out a backoff): the copy stays removed, as the
    # job is at the source; a 'req' written after the removal (a revived workflow step)
    # still brings it back.
    assert await apply(copy, src=SRC, entries=[_entry("put", "waiting", T0)]) == ["added"]
    assert await apply(copy, src=SRC, entries=[_entry("end", "removed", T0 + 20)]) == ["ended"]
    assert await copy.get_job_status("j1") is None
    assert await apply(copy, src=SRC, entries=[_entry("req", "waiting", T0 + 10)]) == ["gone"]
    assert await copy.get_job_status("j1") is None
    # The same ms, written before the removal: gone too; another source's: gone.
    assert await apply(copy, src=SRC, entries=[_entry("req", "waiting", T0 + 20)]) == ["gone"]
    assert await apply(copy, src="b@2", entries=[_entry("req", "waiting", T0 + 90)]) == ["gone"]
    assert await copy.get_job_status("j1") is None
    # Written after the removal: the job came back at the source.
    assert await apply(copy, src=SRC, entries=[_entry("req", "waiting", T0 + 30)]) == ["added"]
    info = await copy.get_job_status("j1")
    assert info is not None and info.status is JobStatus.WAITING
