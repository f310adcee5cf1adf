"""Celery in the benchmark harness (runs in bench/.peers/celery).

Settings: Redis broker, no result backend, the pool and concurrency set by the
orchestrator (``-P threads -c 20`` by default; prefork would add processes), no
heartbeat/gossip/mingle, everything else Celery's defaults (early ack,
``worker_prefetch_multiplier=4``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import Adapter, Ctl, main
from celery import Celery

CTL: Ctl | None = None
app = Celery("kqbench")


@app.task(name="noop")
def noop(data: Any) -> None:
    assert CTL is not None
    CTL.hit(data)
    CTL.done()


class CeleryPeer(Adapter):
    name = "celery"

    def connect(self) -> None:
        app.conf.update(
            broker_url=self.url,
            task_default_queue=self.queue,
            broker_connection_retry_on_startup=True,
            worker_hijack_root_logger=False,
            worker_redirect_stdouts=False,
        )

    def enqueue_one(self, data: dict[str, Any]) -> None:
        noop.apply_async((data,))

    def worker(self, ctl: Ctl, params: dict[str, Any]) -> None:
        global CTL
        CTL = ctl
        self.connect()
        ctl.ready()
        ctl.wait_go()
        app.worker_main([
            "worker", "-P", str(params.get("pool", "threads")),
            "-c", str(params.get("concurrency", 20)),
            "--without-heartbeat", "--without-gossip", "--without-mingle",
            "-l", "WARNING", "-Q", self.queue,
        ])


if __name__ == "__main__":
    main(CeleryPeer)
