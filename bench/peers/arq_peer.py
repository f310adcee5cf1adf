"""arq in the benchmark harness (runs in bench/.peers/arq).

Settings: ``max_jobs=20`` (kitium's default concurrency) and ``poll_delay`` set by the
orchestrator (arq polls the queue; its default is 0.5 s between polls). Results are
kept (arq's default ``keep_result=3600``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import Adapter, Ctl, main
from arq import create_pool
from arq.connections import RedisSettings
from arq.worker import Worker, func

CTL: Ctl | None = None


async def noop(ctx: Any, data: Any) -> None:
    assert CTL is not None
    CTL.hit(data)
    CTL.done()


class Arq(Adapter):
    name = "arq"

    async def connect(self) -> None:
        self.pool = await create_pool(
            RedisSettings.from_dsn(self.url), default_queue_name=self.queue
        )

    async def enqueue_one(self, data: dict[str, Any]) -> None:
        await self.pool.enqueue_job("noop", data)

    async def worker(self, ctl: Ctl, params: dict[str, Any]) -> None:
        global CTL
        CTL = ctl
        await self.connect()
        w = Worker(
            functions=[func(noop, name="noop")],
            queue_name=self.queue,
            redis_pool=self.pool,
            max_jobs=int(params.get("concurrency", 20)),
            poll_delay=float(params.get("poll_delay", 0.5)),
            handle_signals=False,
        )
        ctl.ready()
        await ctl.wait_go_async()
        await w.main()


if __name__ == "__main__":
    main(Arq)
