"""Outbox, partitioned queues, the blocking client and alerts under a demanding user's
hands, against a real Redis: processes SIGKILLed between steps, several threads and
processes at once, keys read back as untrusted."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from helpers import EventLog, backlog_alert_rules, wait_until
from kitium_queue import JobQueue

pytestmark = pytest.mark.redis_only

ROOT = Path(__file__).resolve().parent.parent

_RULES = backlog_alert_rules()

# A leader that dies right after it recorded an alert change, before it reported it:
# its lifecycle subscriber (called inline by the report) SIGKILLs the process.
_DIES_AT_REPORT = """
import asyncio, os, signal, sys
from kitium_queue import JobQueue

async def main():
    url, prefix, name = sys.argv[1:4]
    q = JobQueue(name, redis=url, prefix=prefix, worker={"scheduler": False},
                 advanced=%r)

    class Die:
        def feature_event(self, event):
            os.kill(os.getpid(), signal.SIGKILL)

    q.subscribe(Die())
    q.process("n", lambda job: None)
    await q.start()
    await asyncio.sleep(60)

asyncio.run(main())
"""


def _run(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


# ------------------------------------------------------------------ alerts
async def test_alert_recorded_by_a_leader_killed_before_it_reported_is_reported_by_the_next(
    redis_url: str, prefix: str
) -> None:
    """The change is recorded (alerts:state, alerts:log) and the leader dies before the
    report: the next leader finds the state already firing, so without a record of what
    was reported the alert was never sent to anyone (webhook, queue.on)."""
    q = JobQueue("alerted", redis=redis_url, prefix=prefix)
    try:
        await q.pause()
        await q.add_job("n", {})
        done = await asyncio.to_thread(
            _run, _DIES_AT_REPORT % (_RULES,), redis_url, prefix, "alerted"
        )
        assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    finally:
        await q.close()
    q2 = JobQueue("alerted", redis=redis_url, prefix=prefix, worker={"scheduler": False},
                  advanced=_RULES)  # fmt: skip
    log = EventLog(q2, ["alert-fired"])
    q2.process("n", lambda job: None)
    try:
        (recorded,) = await q2.advanced.alerts.history()
        assert recorded.state == "firing"
        await q2.start()
        await wait_until(lambda: log.of("alert-fired"), 10, message="the unreported alert")
        await asyncio.sleep(0.5)  # ten more evaluations: reported once
        (ev,) = log.of("alert-fired")
        assert ev.extra["event_id"] == recorded.id and ev.extra["subject"] == "backlog"
        assert [t.state for t in await q2.advanced.alerts.history()] == ["firing"]
    finally:
        await q2.close()


# ------------------------------------------------------------------ outbox
async def test_outbox_poison_entry_is_buried_with_its_reason_while_the_others_flow(
    redis_url: str, prefix: str
) -> None:
    from kitium_queue.outbox import Outbox

    q = JobQueue("ob", redis=redis_url, prefix=prefix)
    ob = Outbox(q)
    try:
        await ob.create_group("g")
        poison = await ob.add("t", b"\xff\xfe not json")
        good = [await ob.add("t", b"{}") for _ in range(20)]
        c = ob.consumer("g", "c1", claim_idle_ms=50, max_deliveries=2, block_ms=0)
        done: list[str] = []
        deadline = time.monotonic() + 10
        while (len(done) < 20 or not await ob.dead()) and time.monotonic() < deadline:
            for e in await c.read(block_ms=0):
                if e.payload.startswith(b"\xff"):
                    continue  # the handler fails on it: never acknowledged
                await c.ack(e.id)
                done.append(e.id)
            await asyncio.sleep(0.02)
        assert sorted(done) == sorted(good)
        (dead,) = await ob.dead()
        assert dead.entry.id == poison and dead.group == "g"
        assert "after 2 deliveries" in dead.reason
        assert (await ob.stats()).groups[0].pending == 0
    finally:
        await q.close()


async def test_outbox_trim_keeps_what_a_group_behind_still_needs_and_is_bounded(
    redis_url: str, prefix: str, redis_client: Any
) -> None:
    """100,000 entries: a group far behind holds back the trim; each trim call removes
    at most its limit; the group behind still reads every entry it had not acknowledged."""
    from kitium_queue.outbox import Outbox

    q = JobQueue("big", redis=redis_url, prefix=prefix)
    ob = Outbox(q)
    try:
        await ob.create_group("fast")
        await ob.create_group("slow")
        pipe = redis_client.pipeline(transaction=False)
        for i in range(100_000):
            pipe.xadd(ob.key, {"t": "t", "p": str(i)})
        await pipe.execute()
        fast = ob.consumer("fast", "f", count=5000, block_ms=0)
        while batch := await fast.read(block_ms=0):
            assert len(batch) <= 5000
            await fast.ack([e.id for e in batch])
        slow = ob.consumer("slow", "s", count=1000, block_ms=0)
        first = await slow.read(block_ms=0)
        await slow.ack([e.id for e in first[:500]])  # 500 acknowledged, 500 pending
        removed = [await ob.trim(limit=200) for _ in range(5)]
        assert all(r <= 200 for r in removed) and sum(removed) <= 500
        assert await ob.trim(limit=10_000) + sum(removed) == 500
        assert (await ob.stats()).length == 99_500
        # the pending ones and all the rest are still there for the slow group
        left = {e.id for e in first[500:]}
        client = await q.client()
        assert len(await client.xrange(ob.key, first[500].id, first[-1].id)) == len(left)
        n = 0
        while batch := await slow.read(block_ms=0):
            n += len(batch)
            await slow.ack([e.id for e in batch])
        assert n == 99_000
    finally:
        await q.close()


# ------------------------------------------------------------------ partitions
_PARTITION_OF = """
import sys, unicodedata
from kitium_queue.features.partitioned import PartitionedQueue
q = PartitionedQueue("orders", partitions=7)
print(" ".join(str(q.partition_of(k)) for k in sys.argv[1:]))
"""


def test_a_key_maps_to_the_same_partition_in_every_process_and_unnormalised() -> None:
    """crc32 of the key's exact UTF-8 bytes: the same in any process (no per-process
    hash seed); no Unicode normalisation, so 'café' composed and decomposed are two
    keys, as they are two idempotency keys (docs/scale-out.md says so)."""
    import unicodedata

    from kitium_queue.features.partitioned import PartitionedQueue

    keys = ["customer-7", "ключ", unicodedata.normalize("NFC", "café-7"),
            unicodedata.normalize("NFD", "café-7")]  # fmt: skip
    here = PartitionedQueue("orders", partitions=7)
    mine = [here.partition_of(k) for k in keys]
    for _ in range(2):  # PYTHONHASHSEED differs per process
        there = _run(_PARTITION_OF, *keys, timeout=60)
        assert there.stdout.split() == [str(p) for p in mine], there.stderr
    assert mine[2] != mine[3]


async def test_changing_the_partition_count_is_refused_while_the_old_layout_holds_jobs(
    redis_url: str, prefix: str
) -> None:
    """Documented (docs/scale-out.md): 4 -> 2 partitions while the 8 jobs wait in the old
    layout's queues is refused, naming both counts and the 8 jobs (before, the new count
    saw 0 waiting and None for every id, and nothing warned); once the old count ran them
    and stopped, the new count is recorded and used."""
    from kitium_queue import ConfigurationError
    from kitium_queue.features.partitioned import PartitionedQueue

    old = PartitionedQueue("orders", partitions=4, redis=redis_url, prefix=prefix)
    new = PartitionedQueue("orders", partitions=2, redis=redis_url, prefix=prefix)
    try:
        ids = [await old.add_job("n", {"i": i}) for i in range(8)]
        refused = r"recorded in Redis with 4 partitions .*partitions=2.* 8 job\(s\)"
        with pytest.raises(ConfigurationError, match=refused):
            await new.get_stats()
        with pytest.raises(ConfigurationError, match=refused):
            await new.get_job_status(ids[0])
        with pytest.raises(ConfigurationError, match=refused):
            await new.add_job("n", {"i": 8})
        assert (await old.get_stats()).waiting == 8
        old.process("n", lambda job: None)
        await old.start(concurrency=4)
        await wait_until(lambda: _completed(old, 8), timeout=30)
        await old.close()
        assert (await new.get_stats()).waiting == 0  # empty and unused: 2 is recorded
        assert (await new.get_job_status(await new.add_job("n", {"i": 9}))) is not None
        assert (await new.get_stats()).waiting == 1
    finally:
        await old.close()
        await new.close()


async def _completed(q: Any, n: int) -> bool:
    return (await q.get_stats()).completed >= n
