"""Huey in the benchmark harness (runs in bench/.peers/huey).

Settings: ``RedisHuey`` (blocking pop, its default), a thread consumer with the number
of worker threads set by the orchestrator (default 1), periodic tasks off. No bulk enqueue.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import Adapter, Ctl, main
from huey import RedisHuey

CTL: Ctl | None = None


def noop(data: Any) -> None:
    assert CTL is not None
    CTL.hit(data)
    CTL.done()


class HueyPeer(Adapter):
    name = "huey"

    def connect(self) -> None:
        self.huey = RedisHuey(self.queue, url=self.url)
        self.task = self.huey.task(name="noop")(noop)

    def enqueue_one(self, data: dict[str, Any]) -> None:
        self.task(data)

    def worker(self, ctl: Ctl, params: dict[str, Any]) -> None:
        global CTL
        CTL = ctl
        self.connect()
        logging.getLogger("huey").setLevel(logging.WARNING)
        consumer = self.huey.create_consumer(
            workers=int(params.get("concurrency", 1)), worker_type="thread", periodic=False
        )
        ctl.ready()
        ctl.wait_go()
        consumer.run()


if __name__ == "__main__":
    main(HueyPeer)
