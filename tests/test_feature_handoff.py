"""A job that needs a feature an old worker has not enabled goes to a worker that has it.

During a rolling deploy a worker of the previous release (without ``FIFOQueueManager``,
without ``EncryptionManager``) runs beside new ones. Before, it ran such jobs without the
feature: group jobs out of their order (leaving their turns held), encrypted jobs with
the envelope as their data. Now, when a live worker declares the job's feature option,
the old worker defers the job for it without spending an attempt; when none does, it
runs as before.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from helpers import QueueFactory, wait_until
from kitium_queue import JobStatus
from kitium_queue.features.encryption import EncryptionManager, KeyConfig, generate_key
from kitium_queue.features.groups import FIFOQueueManager
from kitium_queue.presence import live_workers


async def _all(q: Any, ids: list[str], status: JobStatus) -> bool:
    for job_id in ids:
        info = await q.get_job_status(job_id)
        if info is None or info.status is not status:
            return False
    return True


async def test_group_jobs_go_to_the_worker_with_groups_in_order(make_queue: QueueFactory) -> None:
    new = make_queue("roll-g", worker={"concurrency": 2})
    FIFOQueueManager(new)
    old = make_queue("roll-g", worker={"concurrency": 8})  # idle, and eager to claim
    ran: dict[str, list[tuple[str, int]]] = {"new": [], "old": []}

    def proc(who: str) -> Any:
        async def n(job: Any) -> None:
            ran[who].append((job.data["g"], job.data["i"]))
            await asyncio.sleep(0.005)

        return n

    new.process("n", proc("new"))
    old.process("n", proc("old"))
    await new.start()
    await old.start()  # both announced before any job
    ids = await new.add_jobs(
        [
            ("n", {"g": f"g{g}", "i": i}, {"message_group_id": f"g{g}"})
            for i in range(6)
            for g in range(6)
        ]
    )
    await wait_until(lambda: _all(new, ids, JobStatus.COMPLETED), 30)
    assert ran["old"] == []
    for g in range(6):
        assert [i for gg, i in ran["new"] if gg == f"g{g}"] == list(range(6))
    for job_id in ids:
        info = await new.get_job_status(job_id)
        assert info is not None and info.attempts == 1, info


async def test_encrypted_jobs_go_to_the_worker_holding_the_keys(make_queue: QueueFactory) -> None:
    key = KeyConfig("k1", generate_key())
    new = make_queue("roll-e", worker={"concurrency": 4})
    EncryptionManager(new, keys=[key], run_rotation=False)
    old = make_queue("roll-e", worker={"concurrency": 4})
    seen: dict[str, list[Any]] = {"new": [], "old": []}

    def proc(who: str) -> Any:
        async def n(job: Any) -> None:
            seen[who].append(job.data)
            await asyncio.sleep(0.01)

        return n

    new.process("n", proc("new"))
    old.process("n", proc("old"))
    await new.start()
    await old.start()
    ids = await new.add_jobs([("n", {"card": i}, {"encrypted": True}) for i in range(12)])
    await wait_until(lambda: _all(new, ids, JobStatus.COMPLETED), 60)
    assert seen["old"] == []
    assert sorted(d["card"] for d in seen["new"]) == list(range(12))


async def test_without_a_worker_that_has_the_feature_the_job_runs_as_before(
    make_queue: QueueFactory,
) -> None:
    producer = make_queue("roll-n")
    FIFOQueueManager(producer)
    old = make_queue("roll-n")
    ran: list[int] = []

    @old.process("n")
    async def n(job: Any) -> None:
        ran.append(job.data["i"])

    await old.start()
    jid = await producer.add_job("n", {"i": 1}, message_group_id="g")
    await wait_until(lambda: _all(producer, [jid], JobStatus.COMPLETED), 10)
    assert ran == [1]


async def test_a_worker_warns_of_a_live_worker_without_its_feature(
    make_queue: QueueFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A plain job (no feature option) finished by a worker without a feature skips that
    feature's step (a workflow's dependents, a webhook, an effectively-once key): nothing
    can hand it over, so a worker that has the feature says which live worker lacks it."""
    new = make_queue("roll-w")
    FIFOQueueManager(new)
    old = make_queue("roll-w")
    for q in (new, old):
        q.process("n", lambda job: None)
    await old.start()
    await new.start()
    assert new.worker is not None and old.worker is not None
    with caplog.at_level(logging.WARNING, logger="kitium_queue"):
        found = await new.worker.presence(new).compare()
        again = await new.worker.presence(new).compare()
    assert found == again == [(old.worker.id, "fifo-groups")]
    said = [r.getMessage() for r in caplog.records if "runs without the" in r.getMessage()]
    assert len(said) == 1 and old.worker.id in said[0] and "fifo-groups" in said[0], said
    # The worker without the feature has nothing to say about the other.
    assert await old.worker.presence(old).compare() == []


async def test_a_worker_of_a_release_that_does_not_announce_features_is_not_warned_of(
    make_queue: QueueFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A presence record without the ``feat`` field (a release from before features were
    announced, in a rolling deploy) says nothing of its features: before, every newer
    worker warned that it ran without each of them, though it had them all."""
    new = make_queue("roll-o")
    FIFOQueueManager(new)
    new.process("n", lambda job: None)
    await new.start()
    assert new.worker is not None
    client = await new.client()
    earlier = f"{new.worker.id}-earlier"
    now = int(time.time() * 1000)
    await client.hset(
        new.keys.worker(earlier),
        mapping={"host": "h", "pid": 1, "conc": 1, "run": 0, "done": 0, "start": now,
                 "seen": now, "names": '["n"]'},
    )  # fmt: skip
    await client.pexpire(new.keys.worker(earlier), 30_000)
    await client.zadd(new.keys.workers, {earlier: now})
    (seen,) = [w for w in await live_workers(new) if w.id == earlier]
    assert seen.features == () and seen.features_known is False
    with caplog.at_level(logging.WARNING, logger="kitium_queue"):
        assert await new.worker.presence(new).compare() == []
    assert "runs without the" not in caplog.text


async def test_a_stopped_worker_leaves_no_record_behind(
    make_queue: QueueFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop writes the record once more (``stop=1``: peers hand it no job) in a task;
    before, that write could land after the stop deleted the record, which then listed
    the stopped worker alive until its TTL (the regions example left it behind)."""
    from kitium_queue.presence import Presence

    q = make_queue("roll-leave")
    q.process("n", lambda job: None)
    await q.start()
    assert q.worker is not None
    wid = q.worker.id
    beat = Presence.beat

    async def slow_beat(self: Presence) -> None:
        await asyncio.sleep(0.3)  # a slow server: the stop's heartbeat arrives late
        await beat(self)

    monkeypatch.setattr(Presence, "beat", slow_beat)
    await q.close()
    await asyncio.sleep(0.5)
    client = await q.client()
    assert await client.exists(q.keys.worker(wid)) == 0
    assert await client.zscore(q.keys.workers, wid) is None
