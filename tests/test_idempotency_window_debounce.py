"""Effectively-once windows against a demanding user (docs/effectively-once.md).

* An ``until_finished`` job keeps the length of its window from the moment it is added
  (``it``: the TTL its key was set with, exactly). It was recovered when the key was
  freed, from the key's TTL left, so a job whose key expired before it finished kept
  none, and a process with the default TTL putting it back (``replay_dlq``,
  ``retry_job``) took its key for 24 h (PTTL 86,400,000 ms for a 1 s window).
* A ``debounce`` acts only on a job that has not started. It acted on any delayed job:
  a job waiting out its retry's backoff had its data replaced and its retry moved (a
  3 s backoff ran after 0.2 s, with the new add's data). Now the add creates a new job
  and the key points to it; the started job runs again as it was, when it was due.
"""

from __future__ import annotations

import asyncio
from typing import Any

from helpers import QueueFactory, wait_for_status, wait_until
from kitium_queue import IdempotencyManager, JobQueue, JobStatus, NonRetryableError, RetryLater

FAST = {"concurrency": 1, "scheduler": False}
DEB = {"idempotency_key": "D", "idempotency_window": "debounce"}


async def _pttl(q: JobQueue, key: str) -> int:
    client = await q.client()
    return int(await client.pttl(q.keys.idempotency(key)))


async def _kept(q: JobQueue, job_id: str) -> str | None:
    client = await q.client()
    raw = await client.hget(q.keys.job(job_id), "it")
    return None if raw is None else raw.decode()


async def _due(q: JobQueue, job_id: str) -> float | None:
    client = await q.client()
    score = await client.zscore(q.keys.delayed, job_id)
    return None if score is None else float(score)


# ------------------------------------------------------------------ until_finished


async def test_an_until_finished_job_keeps_its_window_exactly_when_added(
    make_queue: QueueFactory,
) -> None:
    q = make_queue("itw", idempotency_ttl=3000)
    IdempotencyManager(q, window="until_finished")
    a = await q.add_job("j", 1, idempotency_key="A")
    assert await _kept(q, a) == "3000"
    assert 0 < await _pttl(q, "A") <= 3000
    # A second manager with another TTL (same settings): the new window is kept.
    IdempotencyManager(q, window="until_finished", ttl_ms=1234)
    b = await q.add_job("j", 2, idempotency_key="B")
    assert await _kept(q, b) == "1234"
    # A TTL changed after the manager (a configuration capping it): kept as the key's.
    q.ctx.idempotency_ttl = 2222
    c = await q.add_job("j", 3, idempotency_key="C")
    assert await _kept(q, c) == "2222"
    assert 0 < await _pttl(q, "C") <= 2222
    # The other windows keep nothing.
    d = await q.add_job("j", 4, idempotency_key="E", idempotency_window="ttl")
    assert await _kept(q, d) is None


async def test_a_key_that_expired_while_its_job_ran_is_taken_again_for_the_jobs_window(
    make_queue: QueueFactory,
) -> None:
    # The producer and its worker hold keys for 600 ms; the job runs longer than that.
    # An admin process of the same queue keeps the default 24 h and puts the job back.
    admin = make_queue("itx")
    IdempotencyManager(admin, window="until_finished")
    worker = make_queue("itx", idempotency_ttl=600, worker=FAST)
    IdempotencyManager(worker, window="until_finished")
    fixed = False

    @worker.process("j")
    async def j(job: Any) -> str:
        await asyncio.sleep(0.9)
        if not fixed:
            raise NonRetryableError("not yet")
        return "ok"

    jid = await worker.add_job("j", 1, idempotency_key="K", attempts=1)
    await worker.start()
    await wait_for_status(worker, jid, JobStatus.DLQ)
    await worker.worker.stop()
    assert await _pttl(worker, "K") == -2  # expired while the job ran
    assert await admin.replay_dlq() == 1
    # Held again for the job's own 600 ms (it was 86,400,000: the admin's TTL).
    assert 0 < await _pttl(admin, "K") <= 600
    assert await admin.add_job("j", 2, idempotency_key="K", attempts=1) == jid
    fixed = True
    await worker.start()
    await wait_for_status(worker, jid, JobStatus.COMPLETED)
    assert await _pttl(worker, "K") == -2
    # Stopped first: a running worker could take the put-back job and finish it (freeing
    # its key) before the key's TTL is read.
    await worker.worker.stop()
    await admin.retry_job(jid)
    assert 0 < await _pttl(admin, "K") <= 600


# ------------------------------------------------------------------ debounce


async def test_a_debounce_leaves_a_job_waiting_out_its_retry_as_it_is(
    make_queue: QueueFactory,
) -> None:
    q = make_queue("dbr", worker={"concurrency": 2})
    IdempotencyManager(q)
    runs: list[tuple[str, str, int]] = []

    @q.process("j")
    async def j(job: Any) -> None:
        runs.append((job.id, job.data, job.attempts))
        if job.data == "v1" and job.attempts == 1:
            raise RuntimeError("the first attempt fails")

    a = await q.add_job("j", "v1", attempts=2, backoff=3000, **DEB)
    await q.start()
    await wait_until(lambda: runs == [(a, "v1", 1)], 5)
    await wait_for_status(q, a, JobStatus.DELAYED)
    due = await _due(q, a)
    assert due is not None
    b = await q.add_job("j", "v2", delay=100, **DEB)
    # It started: the add is a new job, the key points to it, and the job waiting out
    # its backoff keeps its data and its retry time.
    assert b != a
    client = await q.client()
    assert (await client.get(q.keys.idempotency("D"))).decode() == b
    info = await q.get_job_status(a)
    assert info is not None and info.status is JobStatus.DELAYED and info.data == "v1"
    assert await _due(q, a) == due
    await wait_for_status(q, b, JobStatus.COMPLETED)
    assert (a, "v1", 2) not in runs  # not before its backoff
    await wait_for_status(q, a, JobStatus.COMPLETED, timeout=10)
    assert sorted(runs) == sorted([(a, "v1", 1), (b, "v2", 1), (a, "v1", 2)])


async def test_a_debounce_leaves_a_job_that_asked_to_run_later_as_it_is(
    make_queue: QueueFactory,
) -> None:
    # RetryLater spends no attempt (attempts is 0 again): the job started all the same.
    q = make_queue("dbl", worker={"concurrency": 2})
    IdempotencyManager(q)
    runs: list[tuple[str, str]] = []

    @q.process("j")
    async def j(job: Any) -> None:
        runs.append((job.id, job.data))
        if job.data == "v1" and len(runs) == 1:
            raise RetryLater(delay_ms=60_000)

    a = await q.add_job("j", "v1", **DEB)
    await q.start()
    await wait_until(lambda: runs == [(a, "v1")], 5)
    await wait_for_status(q, a, JobStatus.DELAYED)
    due = await _due(q, a)
    b = await q.add_job("j", "v2", **DEB)
    assert b != a
    info = await q.get_job_status(a)
    assert info is not None and info.status is JobStatus.DELAYED and info.data == "v1"
    assert await _due(q, a) == due
    await wait_for_status(q, b, JobStatus.COMPLETED)
    assert runs == [(a, "v1"), (b, "v2")]


async def test_a_debounce_still_replaces_the_data_of_a_job_that_has_not_started(
    make_queue: QueueFactory,
) -> None:
    q = make_queue("dbn")
    IdempotencyManager(q)
    a = await q.add_job("j", "v1", delay=60_000, **DEB)
    assert await q.add_job("j", "v2", delay=60_000, **DEB) == a
    info = await q.get_job_status(a)
    assert info is not None and info.status is JobStatus.DELAYED and info.data == "v2"
    assert await q.add_job("j", "v3", **DEB) == a  # no delay: due now, in wait
    info = await q.get_job_status(a)
    assert info is not None and info.status is JobStatus.WAITING and info.data == "v3"
