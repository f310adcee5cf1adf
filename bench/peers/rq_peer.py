"""RQ in the benchmark harness (runs in bench/.peers/rq).

Settings: ``SimpleWorker`` (runs jobs in the worker process; RQ's default ``Worker``
forks a child per job, far slower). One job at a time per worker process, as RQ does.
Bulk enqueue: ``Queue.enqueue_many`` (one pipeline per batch).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import Adapter, Ctl, main
from redis import Redis
from rq import Queue, SimpleWorker
from rq_jobs import noop


class Rq(Adapter):
    name = "rq"
    has_bulk = True

    def connect(self) -> None:
        self.r = Redis.from_url(self.url)
        self.q = Queue(self.queue, connection=self.r)

    def enqueue_one(self, data: dict[str, Any]) -> None:
        self.q.enqueue(noop, data)

    def enqueue_many(self, datas: list[dict[str, Any]]) -> None:
        self.q.enqueue_many([Queue.prepare_data(noop, (d,)) for d in datas])

    def worker(self, ctl: Ctl, params: dict[str, Any]) -> None:
        import rq_jobs

        rq_jobs.CTL = ctl
        self.connect()
        w = SimpleWorker([self.q], connection=self.r)
        ctl.ready()
        ctl.wait_go()
        logging.getLogger("rq").setLevel(logging.WARNING)
        w.work(burst=False, logging_level="WARNING", with_scheduler=False)


if __name__ == "__main__":
    main(Rq)
