"""taskiq in the benchmark harness (runs in bench/.peers/taskiq).

Settings: taskiq-redis ``ListQueueBroker`` (LPUSH/BRPOP; the fastest of its brokers) or,
with ``broker=stream``, ``RedisStreamBroker`` (consumer group with acks), no result
backend, ``max_async_tasks`` set by the orchestrator. No bulk enqueue.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import Adapter, Ctl, main
from taskiq.api import run_receiver_task
from taskiq_redis import ListQueueBroker, RedisStreamBroker

CTL: Ctl | None = None


async def noop(data: Any) -> None:
    assert CTL is not None
    CTL.hit(data)
    CTL.done()


class TaskiqPeer(Adapter):
    name = "taskiq"

    def _broker(self, kind: str) -> None:
        cls = RedisStreamBroker if kind == "stream" else ListQueueBroker
        self.broker = cls(url=self.url, queue_name=self.queue)
        self.task = self.broker.register_task(noop, task_name="noop")

    async def connect(self) -> None:
        self._broker("list")
        await self.broker.startup()

    async def enqueue_one(self, data: dict[str, Any]) -> None:
        await self.task.kiq(data)

    async def worker(self, ctl: Ctl, params: dict[str, Any]) -> None:
        global CTL
        CTL = ctl
        self._broker(str(params.get("broker", "list")))
        ctl.ready()
        await ctl.wait_go_async()
        await run_receiver_task(
            self.broker, max_async_tasks=int(params.get("concurrency", 100)), run_startup=True
        )


if __name__ == "__main__":
    main(TaskiqPeer)
