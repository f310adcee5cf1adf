"""Load during a failover: a producer adding numbered jobs and a worker recording them,
with the bookkeeping to tell an acknowledged job that was lost from one still running.

    async with LoadRun(queue) as run:
        await run.produce_for(1.0)
        with run.window("kill"):             # jobs acknowledged in here may be lost
            cluster.kill(master)
            cluster.wait_master_change(master, slot)
        await run.produce_for(1.0)
    await run.settle()                       # every other acknowledged job ran
    assert run.lost_outside_windows() == []

A job counts as *acknowledged* once ``add_job`` returned its id. Redis replicates
asynchronously, so a primary that dies (or is demoted) may take its last writes with
it: those are the jobs acknowledged in the moments before the failover. ``window()``
marks that stretch (from ``margin`` seconds before the event until the new primary
serves); a missing job acknowledged outside every window fails the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import Any

from kitium_queue import JobQueue

__all__ = ["LoadRun"]


class LoadRun:
    def __init__(self, queue: JobQueue, *, pace_s: float = 0.004, margin_s: float = 1.0) -> None:
        self.queue = queue
        self.pace_s = pace_s
        self.margin_s = margin_s
        self.acked: dict[int, float] = {}
        self.processed: set[int] = set()
        self.runs = 0
        self.add_errors = 0
        self.windows: list[tuple[str, float, float]] = []
        self._n = 0
        self._producing: asyncio.Task[None] | None = None
        self._stop = False
        self.last_error: BaseException | None = None

        async def record(job: Any) -> int:
            self.runs += 1
            n = int(job.data["n"])
            self.processed.add(n)
            return n

        queue.process("load", record)

    async def __aenter__(self) -> LoadRun:
        await self.queue.start(concurrency=8)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop_producing()

    # ------------------------------------------------------------ producing
    async def _produce(self) -> None:
        while not self._stop:
            n = self._n
            self._n += 1
            try:
                await self.queue.add_job("load", {"n": n})
                self.acked[n] = time.monotonic()
            except Exception as exc:
                # Not acknowledged: the caller knows it failed; it may or may not exist.
                self.add_errors += 1
                self.last_error = exc
                await asyncio.sleep(0.05)
            await asyncio.sleep(self.pace_s)

    def start_producing(self) -> None:
        if self._producing is None:
            self._stop = False
            self._producing = asyncio.get_running_loop().create_task(self._produce())

    async def stop_producing(self) -> None:
        # A flag, not task.cancel(): a cancellation that lands while redis-py turns a
        # socket timeout into an error can be lost, and the loop would never end.
        task, self._producing = self._producing, None
        self._stop = True
        if task is not None:
            await task

    async def produce_for(self, seconds: float) -> None:
        self.start_producing()
        await asyncio.sleep(seconds)

    async def produce_until(self, acked: int, timeout: float = 60.0) -> None:
        """Produce until at least ``acked`` jobs were acknowledged in all (however slow
        the machine: a count, not a duration); AssertionError after ``timeout`` s."""
        self.start_producing()
        deadline = time.monotonic() + timeout
        while len(self.acked) < acked:
            assert time.monotonic() < deadline, f"only {len(self.acked)} of {acked} acked"
            await asyncio.sleep(0.05)

    @contextlib.contextmanager
    def window(self, what: str) -> Iterator[None]:
        start = time.monotonic() - self.margin_s
        try:
            yield
        finally:
            self.windows.append((what, start, time.monotonic()))

    # ------------------------------------------------------------ accounting
    def missing(self) -> list[int]:
        return sorted(set(self.acked) - self.processed)

    def lost_outside_windows(self) -> list[tuple[int, float]]:
        out = []
        for n in self.missing():
            t = self.acked[n]
            if not any(lo <= t <= hi for _, lo, hi in self.windows):
                out.append((n, t))
        return out

    async def settle(self, timeout: float = 30.0) -> None:
        """Stop producing; wait until every acknowledged job ran, except those that may
        have been lost in a failover window, and the queue holds nothing more."""
        await self.stop_producing()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.lost_outside_windows():
                stats = await _stats(self.queue)
                if stats is not None and stats.waiting == 0 and stats.active == 0:
                    return
            await asyncio.sleep(0.1)

    def report(self) -> str:
        return (
            f"acked={len(self.acked)} processed={len(self.processed)} runs={self.runs} "
            f"add_errors={self.add_errors} missing={len(self.missing())} "
            f"windows={[(w, round(hi - lo, 2)) for w, lo, hi in self.windows]}"
        )


async def _stats(queue: JobQueue) -> Any:
    try:
        return await queue.get_stats()
    except Exception:
        return None
