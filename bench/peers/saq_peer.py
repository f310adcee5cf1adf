"""SAQ in the benchmark harness (runs in bench/.peers/saq).

Settings: ``Worker(concurrency=...)``; everything else SAQ's defaults. SAQ has no bulk
enqueue.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import Adapter, Ctl, main
from saq import Queue, Worker

CTL: Ctl | None = None


async def noop(ctx: Any, **data: Any) -> None:
    assert CTL is not None
    CTL.hit(data)
    CTL.done()


class Saq(Adapter):
    name = "saq"

    async def connect(self) -> None:
        self.q = Queue.from_url(self.url, name=self.queue)
        await self.q.connect()

    async def enqueue_one(self, data: dict[str, Any]) -> None:
        await self.q.enqueue("noop", **data)

    async def worker(self, ctl: Ctl, params: dict[str, Any]) -> None:
        global CTL
        CTL = ctl
        await self.connect()
        w = Worker(self.q, functions=[noop], concurrency=int(params.get("concurrency", 20)))
        ctl.ready()
        await ctl.wait_go_async()
        await w.start()


if __name__ == "__main__":
    main(Saq)
