"""Guaranteed webhooks: a batch's results are recorded in waves while it runs.

* A worker SIGKILLed mid-batch has another worker send again only what it had in
  flight and what was answered since its last wave (at most ``concurrency`` results, or
  about a second of them), not the whole batch. Before, a batch's results were recorded
  once it ended: every delivery of the batch answered before the kill was sent again
  (measured here: 64 duplicates of 100 events at the kill, 0.25 s answers, 8 at once).
* A wave records what is ready once ``concurrency`` results are, or about ``WAVE_S``
  after the last record; an outbox entry is acknowledged in the wave that records its
  last delivery, and the batch's keep touches only what is not acknowledged (leases of
  retries not yet recorded).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from helpers import wait_until
from kitium_queue import JobQueue, WebhookConfig, WebhookEvent, WebhookManager, generate_secret
from kitium_queue.features.webhooks.waves import Waves

SECRET = generate_secret()
SRC = str(Path(__file__).resolve().parents[1] / "src")
KNOBS: dict[str, Any] = dict(
    allow_networks=["127.0.0.0/8"],
    secrets={"waves": SECRET},
    concurrency=8,
    batch=100,
    claim_idle_ms=1000,
    poll_ms=20,
)
# A worker process running only the delivery service (what `webhooks deliver` runs).
CHILD = """
import asyncio, os, sys
from kitium_queue import JobQueue, WebhookManager

async def main():
    q = JobQueue("waves", redis=sys.argv[1], prefix=sys.argv[2])
    m = WebhookManager(q, secrets={"waves": os.environ["KQ_SECRET"]},
                       allow_networks=["127.0.0.0/8"], concurrency=8, batch=100,
                       claim_idle_ms=1000, poll_ms=20)
    await m.service.start(q)
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


class Receiver:
    """Answers 200 to each request after ``delay`` s; ``seen`` counts requests by
    webhook-id as they arrive, ``answered`` the answers sent."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.seen: Counter[str] = Counter()
        self.answered = 0
        self.server: asyncio.AbstractServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/hook"

    async def start(self) -> Receiver:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                hdr = {
                    k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in head[1:])
                }
                await reader.readexactly(int(hdr.get("content-length", "0")))
                self.seen[hdr.get("webhook-id", "")] += 1
                await asyncio.sleep(self.delay)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
                self.answered += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.mark.redis_only
async def test_a_sigkilled_worker_resends_in_flight_and_one_wave(
    redis_url: str, prefix: str
) -> None:
    rec = await Receiver(0.25).start()  # 100 deliveries, 8 at once: a batch of ~3.2 s
    q = JobQueue("waves", redis=redis_url, prefix=prefix)
    m = WebhookManager(q, run_service=False, **KNOBS)
    env = {**os.environ, "KQ_SECRET": SECRET, "PYTHONPATH": SRC}
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, redis_url, prefix, stdout=asyncio.subprocess.PIPE, env=env
    )
    try:
        await m.register_webhook(
            WebhookConfig(id="waves", url=rec.url, secret=SECRET, events=["app-ping"])
        )
        ids = [await m.send_event(WebhookEvent("app-ping", {"n": i})) for i in range(100)]
        assert child.stdout is not None
        assert await asyncio.wait_for(child.stdout.readline(), 30) == b"ready\n"
        await wait_until(lambda: sum(rec.seen.values()) >= 64, 30)  # mid-batch
        child.send_signal(signal.SIGKILL)
        await child.wait()
        sent, answered = sum(rec.seen.values()), rec.answered
        client = await q.client()
        pending = (await client.xpending(q.keys.extra("outbox"), "webhooks"))["pending"]
        # Another worker takes the killed one's entries over (after claim_idle_ms).
        await m.service.start(q)

        async def settled() -> bool:
            groups = await client.xinfo_groups(q.keys.extra("outbox"))
            return set(rec.seen) == set(ids) and all(g["pending"] == 0 for g in groups)

        await wait_until(settled, 30, interval=0.05, message=lambda: f"{rec.seen}")
        await asyncio.sleep(1.5)  # past claim_idle_ms: a late duplicate would be sent now
        dups = sum(n - 1 for n in rec.seen.values())
        # At most what was in flight at the kill and one wave (concurrency each); the
        # entries left pending at the kill are no more than those and the ones not sent.
        assert dups <= 2 * 8, (dups, sent, answered, pending)
        assert pending <= 2 * 8 + (100 - sent), (pending, sent)
        history = await m.get_delivery_history("waves", limit=200)
        assert len(history) == 100 and all(r.state == "delivered" for r in history)
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
        await m.service.stop()
        await q.close()
        rec.close()


async def test_waves_record_by_count_or_time_and_ack_an_entry_with_its_last_delivery() -> None:
    writes: list[tuple[float, list[Any], list[str], int]] = []
    started = time.monotonic()

    async def write(fields: list[Any], acks: list[str], back: list[Any], ok: int) -> None:
        writes.append((time.monotonic() - started, [*fields, *back], acks, ok))

    # Entry e1: deliveries 0 and 1; e2: delivery 2..5; e3: none (acked in the first wave).
    members = ["a/1", "b/1", "a/2", "a/3", "a/4", "a/5"]
    waves = Waves(write, members, ["e1", "e1", "e2", "e2", "e2", "e2"], ["e1", "e2", "e3"], 2)
    run = asyncio.ensure_future(waves.run())
    waves.add(0, "a/1", ["r0"], back=False, ok=True)
    await asyncio.sleep(0.2)
    assert writes == []  # one ready of 2: waits for a second one or the time
    assert waves.unacked() == ["e1", "e2", "e3"] and waves.unrecorded() == members
    waves.add(1, "b/1", ["r1"], back=True, ok=False)
    await asyncio.sleep(0.05)
    assert [w[1:] for w in writes] == [(["r0", "r1"], ["e3", "e1"], 1)]  # count reached
    assert waves.unacked() == ["e2"] and waves.unrecorded() == members[2:]
    waves.add(2, "a/2", ["r2"], back=False, ok=True)
    await asyncio.sleep(0.5)
    assert len(writes) == 1
    await asyncio.sleep(0.7)  # about WAVE_S after the last record: what is ready goes
    assert len(writes) == 2 and writes[1][1:] == (["r2"], [], 1)
    assert 0.9 < writes[1][0] - writes[0][0] < 1.5
    for i in (3, 4, 5):
        waves.add(i, members[i], [f"r{i}"], back=False, ok=True)
    await asyncio.wait_for(run, 2)  # the last results: recorded at once, e2 acknowledged
    assert [w[1:] for w in writes[2:]] == [(["r3", "r4", "r5"], ["e2"], 3)]
    assert waves.unacked() == [] and waves.unrecorded() == []


async def test_a_cancel_landing_as_a_result_comes_ends_the_waves() -> None:
    """The batch cancels its waves' writer (a forced stop, the loop's end). A cancel
    landing as a result wakes the writer was dropped by ``asyncio.wait_for`` before
    Python 3.12: the writer ran on, waiting for results of deliveries cancelled with it."""
    writes: list[list[Any]] = []

    async def write(fields: list[Any], acks: list[str], back: list[Any], ok: int) -> None:
        writes.append(fields)

    members = ["a/1", "a/2", "a/3"]
    waves = Waves(write, members, ["e1", "e1", "e1"], ["e1"], 10, every_s=100.0)
    run = asyncio.ensure_future(waves.run())
    waves.add(0, "a/1", ["r0"], back=False, ok=True)
    await asyncio.sleep(0.05)  # one ready of 10: waiting for more, or 100 s
    waves.add(1, "a/2", ["r1"], back=False, ok=True)  # wakes it ...
    run.cancel()  # ... as the cancel lands
    await asyncio.wait({run}, timeout=1.0)
    assert run.cancelled()
    assert writes == []
