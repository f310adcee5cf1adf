"""Dramatiq in the benchmark harness (runs in bench/.peers/dramatiq).

Settings: ``RedisBroker`` with its default middleware, ``Worker(worker_threads=...)``
(Dramatiq's default is 8 threads; the bench uses 20). No bulk enqueue.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dramatiq
from _common import Adapter, Ctl, main
from dramatiq.brokers.redis import RedisBroker

CTL: Ctl | None = None


def noop(data: Any) -> None:
    assert CTL is not None
    CTL.hit(data)
    CTL.done()


class DramatiqPeer(Adapter):
    name = "dramatiq"

    def connect(self) -> None:
        self.broker = RedisBroker(url=self.url, namespace=f"dq-{self.queue}")
        dramatiq.set_broker(self.broker)
        self.actor = dramatiq.actor(noop, actor_name="noop", queue_name="bench", broker=self.broker)

    def enqueue_one(self, data: dict[str, Any]) -> None:
        self.actor.send(data)

    def worker(self, ctl: Ctl, params: dict[str, Any]) -> None:
        global CTL
        CTL = ctl
        self.connect()
        w = dramatiq.Worker(self.broker, worker_threads=int(params.get("concurrency", 20)))
        ctl.ready()
        ctl.wait_go()
        w.start()
        w.join()


if __name__ == "__main__":
    main(DramatiqPeer)
