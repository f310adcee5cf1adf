"""bullmq (Python) in the benchmark harness (runs in bench/.peers/bullmq).

Settings: ``Worker(concurrency=...)``, everything else bullmq's defaults (locks, stalled
checks, completed jobs kept). Bulk enqueue: ``Queue.addBulk``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import Adapter, Ctl, main
from bullmq import Queue, Worker


class BullmqPeer(Adapter):
    name = "bullmq"
    has_bulk = True

    async def connect(self) -> None:
        self.q = Queue(self.queue, {"connection": self.url})

    async def enqueue_one(self, data: dict[str, Any]) -> None:
        await self.q.add("noop", data)

    async def enqueue_many(self, datas: list[dict[str, Any]]) -> None:
        await self.q.addBulk([{"name": "noop", "data": d} for d in datas])

    async def worker(self, ctl: Ctl, params: dict[str, Any]) -> None:
        hit, done = ctl.hit, ctl.done

        async def process(job: Any, token: Any) -> None:
            hit(job.data)
            done()

        w = Worker(
            self.queue,
            process,
            {
                "connection": self.url,
                "concurrency": int(params.get("concurrency", 20)),
                "autorun": False,
            },
        )
        ctl.ready()
        await ctl.wait_go_async()
        await w.run()


if __name__ == "__main__":
    main(BullmqPeer)
