"""Encrypted jobs that need a key the worker's process does not hold (a rolling deploy of
a new key): deferred for ``missing_key_wait_ms`` without spending an attempt, taken by a
process that holds the key, dead-lettered with the reason once the wait is over; a
tampered ciphertext still fails at once. Against a real Redis.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from typing import Any

import pytest

from helpers import QueueFactory, wait_for_status, wait_until
from kitium_queue import ConfigurationError, JobQueue, JobStatus
from kitium_queue.features.encryption import (
    EncryptionManager,
    KeyConfig,
    KeyNotHeldError,
    generate_key,
)

K1, K2 = generate_key(), generate_key()
MARK = "PLAINTEXT-MARKER-0d5e"


@pytest.fixture
async def rq(redis_url: str, prefix: str) -> AsyncIterator[QueueFactory]:
    factory = QueueFactory(redis_url, prefix)
    yield factory
    await factory.aclose()


def _process(queue: JobQueue, ran: list[Any]) -> None:
    @queue.process("*")
    async def anything(job: Any) -> str:
        ran.append(job.data)
        return "ok"


async def _producer(rq: QueueFactory, name: str) -> tuple[JobQueue, EncryptionManager]:
    """A process that holds both keys and seals new jobs under k2."""
    q = rq(name)
    m = EncryptionManager(q, keys=[KeyConfig("k1", K1), KeyConfig("k2", K2)], current_key_id="k2")
    assert await m.initialize() == "k2"
    return q, m


async def test_an_old_worker_defers_a_job_under_a_new_key_for_one_that_holds_it(
    rq: QueueFactory, caplog: pytest.LogCaptureFixture
) -> None:
    q, _ = await _producer(rq, "roll")
    job = await q.add_job("pay", {"v": MARK}, encrypted=True, attempts=1)
    old = rq("roll", worker={"concurrency": 2})
    EncryptionManager(old, keys=[KeyConfig("k1", K1)], run_rotation=False)
    ran_old: list[Any] = []
    _process(old, ran_old)
    with caplog.at_level(logging.WARNING):
        await old.start()
        info = await wait_for_status(old, job, JobStatus.DELAYED)
        await old.worker.stop(timeout_ms=500)  # type: ignore[union-attr]
    assert info.attempts == 0  # no attempt spent
    assert ran_old == []
    warned = [r.getMessage() for r in caplog.records if "does not hold" in r.getMessage()]
    assert warned and "'k2'" in warned[0]
    assert all(MARK not in r.getMessage() for r in caplog.records)

    new = rq("roll")
    EncryptionManager(new, keys=[KeyConfig("k1", K1), KeyConfig("k2", K2)], run_rotation=False)
    ran_new: list[Any] = []
    _process(new, ran_new)
    await new.start()
    done = await wait_for_status(new, job, JobStatus.COMPLETED, timeout=10)
    assert ran_new == [{"v": MARK}]
    assert done.attempts == 1


async def test_a_worker_without_the_current_key_defers_rather_than_dead_letters(
    rq: QueueFactory,
) -> None:
    q = rq("cur", dlq={"enabled": True})
    m = EncryptionManager(q, keys=[KeyConfig("k1", K1), KeyConfig("k2", K2)])
    assert await m.initialize() == "k1"
    job = await q.add_job("pay", {"v": 1}, encrypted=True)  # sealed under k1
    await m.rotate_key("k1", "k2")  # the queue now seals results under k2
    old = rq("cur")
    # It opens the job's data (k1) but cannot seal the result under k2.
    EncryptionManager(old, keys=[KeyConfig("k1", K1)], run_rotation=False, refresh_ms=1)
    ran: list[Any] = []
    _process(old, ran)
    await old.start()
    info = await wait_for_status(old, job, JobStatus.DELAYED)
    assert info.attempts == 0 and ran == []
    assert await old.get_job_status(job) is not None
    assert (await old.get_job_status(job)).status is not JobStatus.DLQ  # type: ignore[union-attr]


async def test_after_missing_key_wait_ms_the_job_is_dead_lettered_with_the_reason(
    rq: QueueFactory,
) -> None:
    q, _ = await _producer(rq, "gone")
    job = await q.add_job("pay", {"v": MARK}, encrypted=True, attempts=3)
    other = await q.add_job("pay", {"v": "plain"})
    old = rq("gone", dlq={"enabled": True})
    EncryptionManager(old, keys=[KeyConfig("k1", K1)], run_rotation=False, missing_key_wait_ms=1500)
    ran: list[Any] = []
    _process(old, ran)
    await old.start()
    info = await wait_for_status(old, job, JobStatus.DLQ, timeout=15)
    reason = info.failed_reason or ""
    assert "'k2'" in reason and "does not hold" in reason and "missing_key_wait_ms" in reason
    assert MARK not in reason
    assert info.attempts == 1  # the deferrals spent none; the final failure one
    assert ran == [{"v": "plain"}]  # the worker went on with the other job
    assert (await old.get_job_status(other)).status is JobStatus.COMPLETED  # type: ignore[union-attr]


async def test_zero_wait_dead_letters_at_once_and_tampering_never_waits(
    rq: QueueFactory, redis_client: Any
) -> None:
    q, _ = await _producer(rq, "now")
    unheld = await q.add_job("pay", {"v": 1}, encrypted=True)
    w = rq("now", dlq={"enabled": True})
    EncryptionManager(w, keys=[KeyConfig("k1", K1)], run_rotation=False, missing_key_wait_ms=0)
    _process(w, [])
    await w.start()
    info = await wait_for_status(w, unheld, JobStatus.DLQ)
    assert "does not hold" in (info.failed_reason or "") and info.attempts == 1

    # A worker that holds the key, with the default wait: a ciphertext altered in Redis
    # fails at once (another process could not open it either).
    q2, _ = await _producer(rq, "tamper")
    bad = await q2.add_job("pay", {"v": 1}, encrypted=True, attempts=5)
    raw = await redis_client.hget(q2.keys.job(bad), "d")
    await redis_client.hset(q2.keys.job(bad), "d", raw.replace(b'"ct":"', b'"ct":"AAAA', 1))
    w2 = rq("tamper", dlq={"enabled": True})
    EncryptionManager(w2, keys=[KeyConfig("k1", K1), KeyConfig("k2", K2)], run_rotation=False)
    _process(w2, [])
    await w2.start()
    info = await wait_for_status(w2, bad, JobStatus.DLQ)
    assert "failed authentication" in (info.failed_reason or "") and info.attempts == 1


@pytest.mark.parametrize("bad", [-1, math.nan, math.inf, True, "10s", [1]])
async def test_missing_key_wait_ms_is_checked(rq: QueueFactory, bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="missing_key_wait_ms"):
        EncryptionManager(rq("opt"), keys=[KeyConfig("k1", K1)], missing_key_wait_ms=bad)


def test_key_not_held_is_a_decryption_error_naming_the_key() -> None:
    from kitium_queue.features.encryption import DecryptionError

    exc = KeyNotHeldError("needs key 'k9'", "k9")
    assert isinstance(exc, DecryptionError) and exc.key_id == "k9"


async def test_rolling_deploy_old_and_new_workers_together_run_every_job_once(
    rq: QueueFactory,
) -> None:
    """Chaos: during a rolling deploy, workers without the new key run beside workers
    with it while jobs sealed under the new key arrive; the old workers stop midway.
    Every job runs exactly once, on a worker that holds the key; none is dead-lettered."""
    q, _ = await _producer(rq, "mix")
    ids = [await q.add_job("pay", {"i": i}, encrypted=True, attempts=1) for i in range(120)]
    ran_old: list[Any] = []
    ran_new: list[Any] = []
    olds = []
    for _ in range(2):
        old = rq("mix", dlq={"enabled": True}, worker={"concurrency": 8})
        EncryptionManager(old, keys=[KeyConfig("k1", K1)], run_rotation=False)
        _process(old, ran_old)
        olds.append(old)
        await old.start()
    # The old workers get the first look at the jobs (the first one is deferred).
    await wait_for_status(q, ids[0], JobStatus.DELAYED, timeout=10)
    new = rq("mix", dlq={"enabled": True}, worker={"concurrency": 8})
    EncryptionManager(new, keys=[KeyConfig("k1", K1), KeyConfig("k2", K2)], run_rotation=False)
    _process(new, ran_new)
    await new.start()
    await olds[0].worker.stop(timeout_ms=500)  # type: ignore[union-attr]
    more = [await q.add_job("pay", {"i": i}, encrypted=True) for i in range(120, 160)]

    async def all_done() -> bool:
        for j in ids + more:
            info = await q.get_job_status(j)
            if info is None or info.status is not JobStatus.COMPLETED:
                return False
        return True

    await wait_until(all_done, timeout=60, interval=0.2)
    assert ran_old == []
    assert sorted(d["i"] for d in ran_new) == list(range(160))


async def test_the_advanced_section_passes_missing_key_wait_ms_on(rq: QueueFactory) -> None:
    from kitium_queue.features.advanced import EncryptionConfig

    with pytest.raises(ConfigurationError, match=r"advanced\.encryption\.missing_key_wait_ms"):
        EncryptionConfig(enabled=True, missing_key_wait_ms=-5)
    q = rq(
        "adv",
        advanced={
            "encryption": {
                "enabled": True,
                "keys": [{"key_id": "k1", "key": K1}],
                "missing_key_wait_ms": 2500,
            }
        },
    )
    assert EncryptionManager.for_queue(q).missing_key_wait_ms == 2500
