"""kitium-queue in the benchmark harness (runs in the project's venv).

Default settings except ``worker.concurrency``: leases, fencing, the event stream, the
default job timeout (300 s), 3 attempts and keeping the newest 1000 completed jobs are
all on.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Adapter, Ctl, main

from kitium_queue import JobQueue, SyncJobQueue

GUARANTEE = "at-least-once (leases + fencing; a dead worker's job re-runs)"


class Kitium(Adapter):
    name = "kitium-queue"
    has_bulk = True

    def __init__(self, url: str, queue: str) -> None:
        super().__init__(url, queue)
        self.q: JobQueue | None = None

    def _queue(self, concurrency: int = 20) -> JobQueue:
        if self.q is None:
            self.q = JobQueue(
                self.queue, redis=self.url, prefix="kqb", worker={"concurrency": concurrency}
            )
        return self.q

    async def connect(self) -> None:
        await self._queue().client()

    async def enqueue_one(self, data: dict[str, Any]) -> None:
        assert self.q is not None
        await self.q.add_job("noop", data)

    async def enqueue_many(self, datas: list[dict[str, Any]]) -> None:
        assert self.q is not None
        await self.q.add_jobs([("noop", d) for d in datas])

    async def fill(self, n: int, params: dict[str, Any]) -> None:
        q = self._queue()
        mix = bool(params.get("mix"))
        rnd = random.Random(7)
        for start in range(0, n, 1000):
            batch: list[Any] = []
            for i in range(start, min(n, start + 1000)):
                if not mix:
                    batch.append(("noop", {"i": i}))
                    continue
                r = rnd.random()
                if r < 0.10:  # 10 % delayed by 1..100 ms
                    batch.append(("noop", {"i": i}, {"delay": rnd.randint(1, 100)}))
                elif r < 0.40:  # 30 % with a priority 1..10 (higher runs first)
                    batch.append(("noop", {"i": i}, {"priority": rnd.randint(1, 10)}))
                else:
                    batch.append(("noop", {"i": i}))
            await q.add_jobs(batch)

    async def worker(self, ctl: Ctl, params: dict[str, Any]) -> None:
        q = self._queue(int(params.get("concurrency", 20)))
        sleep_s = float(params.get("sleep_ms", 0)) / 1000
        hit, done = ctl.hit, ctl.done

        if sleep_s:

            async def noop(job: Any) -> None:
                hit(job.data)
                await asyncio.sleep(sleep_s)
                done()

        else:

            async def noop(job: Any) -> None:
                hit(job.data)
                done()

        q.process("noop", noop)
        await q.client()
        ctl.ready()
        await ctl.wait_go_async()
        await q.start()
        await asyncio.Event().wait()


class KitiumBlocking(Adapter):
    """The producer from blocking code: ``SyncJobQueue`` (workload ``single_blocking``)."""

    name = "kitium-queue"

    def __init__(self, url: str, queue: str) -> None:
        super().__init__(url, queue)
        self.q: SyncJobQueue | None = None

    def connect(self) -> None:
        self.q = SyncJobQueue(self.queue, redis=self.url, prefix="kqb")

    def enqueue_one(self, data: dict[str, Any]) -> None:
        assert self.q is not None
        self.q.add_job("noop", data)


if __name__ == "__main__":
    blocking = len(sys.argv) > 2 and json.loads(sys.argv[2]).get("blocking")
    main(KitiumBlocking if blocking else Kitium)
