"""A claim's reply bigger than the server lets a normal client's output buffer hold.

A server with ``client-output-buffer-limit normal 64kb 32kb 5`` (managed services may
set such a limit) closes a connection whose pending reply grows past 64 KB. A claim of
five 20 KB jobs has such a reply. Before, the worker took each closed connection for an
outage and claimed as many again: no job ever ran, each claim's leases expired, and every
job was dead-lettered as "stalled 3 times ... its worker died" (200 of 200 in the first
run). The worker now halves the jobs it claims per call when Redis closed the
connection while sending a claim's reply yet answers at once.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from _redis import RedisServer
from helpers import wait_until
from kitium_queue import JobQueue


async def test_claims_shrink_until_their_replies_fit_and_every_job_runs(
    prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    with RedisServer("--client-output-buffer-limit", "normal 64kb 32kb 5") as srv:
        q = JobQueue(
            "big-replies",
            redis=srv.url,
            prefix=prefix,
            worker={"concurrency": 10},
            settings={"lock_duration": 2000, "max_stalled_interval": 500},
        )
        ran: list[str] = []

        @q.process("n")
        async def n(job: Any) -> None:
            ran.append(job.id)

        try:
            ids = await q.add_jobs([("n", {"pad": "x" * 20_000, "i": i}) for i in range(40)])
            with caplog.at_level(logging.WARNING, logger="kitium_queue"):
                await q.start()

                async def all_done() -> bool:
                    return (await q.get_stats()).completed == len(ids)

                await wait_until(all_done, 40)
            stats = await q.get_stats()
            assert (stats.completed, stats.dlq) == (40, 0), stats
            assert sorted(set(ran)) == sorted(ids)
            said = [r.getMessage() for r in caplog.records]
            assert any("client-output-buffer-limit" in t for t in said), said[:5]
            assert q.worker is not None and q.worker.claim_cap <= 3
        finally:
            await q.close()
