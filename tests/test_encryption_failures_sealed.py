"""Sealed failure texts of encrypted jobs (``features/encryption/failures.py``) against a
real Redis.

A processor's exception quoting a secret: the job's record (every field, in its retry
and in the DLQ) and the event stream hold no trace of it, the job views of a process
holding the key show it, a process without the key shows ``(sealed: key k1)``; a
reason moved to another job or field does not open; the worker's own refusals stay
readable; ``seal_failures=False`` stores the texts in clear; a rotation re-seals them
under the new key. The foundation's failure-text filter fails closed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

import test_encryption
from helpers import QueueFactory, wait_for_status, wait_until
from kitium_queue import ConfigurationError, JobQueue, JobStatus
from kitium_queue.features.encryption import EncryptionManager, KeyConfig, generate_key

K1, K2 = generate_key(), generate_key()
MARK = "CARD-4111-SECRET-9d2e"


rq = test_encryption.rq  # the Redis queue factory of the encryption tests


def enc_queue(rq: QueueFactory, name: str = "sf", **kw: Any) -> tuple[JobQueue, EncryptionManager]:
    q = rq(name, worker={"concurrency": 4}, dlq={"enabled": True})
    return q, EncryptionManager(q, keys=[KeyConfig("k1", K1)], run_rotation=False, **kw)


def rotation_queue(rq: QueueFactory) -> tuple[JobQueue, EncryptionManager]:
    """A queue holding k1 (current) and k2 (CBC), rotated by hand (``run_rotation``)."""
    q = rq("rot", worker={"concurrency": 4}, dlq={"enabled": True})
    keys = [KeyConfig("k1", K1), KeyConfig("k2", K2, "aes-256-cbc")]
    return q, EncryptionManager(q, keys=keys, rotation_grace_ms=0, run_rotation=False)


def failing(q: JobQueue) -> None:
    @q.process("charge")
    async def charge(job: Any) -> Any:
        raise ValueError(f"bad amount {job.data['amount']} for card {job.data['card']}")


async def raw_job(client: aioredis.Redis, q: JobQueue, job_id: str) -> bytes:
    """Every field and value of the job's hash (HGETALL), as one byte string."""
    return b"".join(f + b"=" + v for f, v in (await client.hgetall(q.keys.job(job_id))).items())


async def stream_bytes(client: aioredis.Redis, q: JobQueue) -> bytes:
    return b"".join(v for _, f in await client.xrange(q.keys.events) for v in f.values())


async def test_failure_reason_and_traceback_are_sealed_and_opened_by_the_key_holder(
    rq: QueueFactory, redis_client: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kitium_queue")
    q, _ = enc_queue(rq)
    failing(q)
    retried: list[str] = []
    q.on("job-retrying", lambda ev: retried.append(ev.job_id))
    job_id = await q.add_job(
        "charge", {"amount": 12, "card": MARK}, encrypted=True, attempts=2, backoff=0
    )
    plain_id = await q.add_job("charge", {"amount": 1, "card": "not secret"}, attempts=1)
    # A job whose data was replaced: the worker's own refusal quotes no payload, and
    # stays readable without the key.
    tampered = await q.add_job("charge", {"amount": 3, "card": MARK}, encrypted=True)
    await redis_client.hset(q.keys.job(tampered), "d", orjson.dumps({"card": "forged"}))
    await q.start()
    await wait_for_status(q, job_id, JobStatus.DLQ)
    await wait_for_status(q, plain_id, JobStatus.DLQ)
    await wait_for_status(q, tampered, JobStatus.DLQ)
    await wait_until(lambda: job_id in retried)  # retried once: the error still counts

    raw = await raw_job(redis_client, q, job_id)
    assert MARK.encode() not in raw and b"bad amount" not in raw
    stored = await redis_client.hmget(q.keys.job(job_id), "e", "tb", "st", "a")
    assert stored[2] == b"dlq" and stored[3] == b"2"
    for value in stored[:2]:
        assert value.startswith(b"(sealed: key k1) {")
    assert MARK.encode() not in await stream_bytes(redis_client, q)
    refused = await redis_client.hget(q.keys.job(tampered), "e")
    assert refused.startswith(b"NonRetryableError: encrypted job cannot run")
    assert MARK.encode() not in await raw_job(redis_client, q, tampered)
    # A job that is not encrypted keeps its texts in clear, as before.
    assert b"not secret" in await redis_client.hget(q.keys.job(plain_id), "e")
    # The worker's own log lines (retrying, failed for good) name the sealed job's error
    # by its type only; the plain job's lines keep its text.
    logged = [r.getMessage() for r in caplog.records]
    assert not [m for m in logged if MARK in m or "bad amount 12" in m]
    assert [m for m in logged if "failed for good" in m and "ValueError (its text is withheld" in m]
    assert [m for m in logged if "retrying" in m and "ValueError (its text is withheld" in m]
    assert [m for m in logged if "failed for good" in m and "not secret" in m]

    # The job views of the process holding the key show the texts.
    info = await q.get_job_status(job_id)
    assert info is not None
    assert info.failed_reason == f"ValueError: bad amount 12 for card {MARK}"
    assert info.stacktrace is not None and MARK in info.stacktrace
    assert "Traceback" in info.stacktrace
    dlq = {i.id: i for i in await q.get_dlq_jobs()}
    assert dlq[job_id].failed_reason == info.failed_reason
    q.ctx.redact_payloads = True  # what the CLI sets: data hidden, the reason opened
    detail = await q.get_job_detail(job_id)
    assert detail is not None and detail.data == "<encrypted key=k1 aes-256-gcm>"
    assert detail.failed_reason == info.failed_reason and detail.stacktrace == info.stacktrace
    q.ctx.redact_payloads = False

    # A process with the manager but without key k1: the placeholder, no crash.
    other = rq("sf")
    EncryptionManager(other, keys=[KeyConfig("k2", K2)], run_rotation=False)
    seen = await other.get_job_detail(job_id)
    assert seen is not None
    assert seen.failed_reason == "(sealed: key k1)" and seen.stacktrace == "(sealed: key k1)"
    listed = {i.id: i for i in await other.get_dlq_jobs()}
    assert listed[job_id].failed_reason == "(sealed: key k1)"
    assert listed[tampered].failed_reason.startswith("NonRetryableError: encrypted job")
    # A process without the manager shows what is stored: the placeholder comes first.
    bare = rq("sf")
    shown = await bare.get_job_status(job_id)
    assert shown is not None and shown.failed_reason is not None
    assert shown.failed_reason.startswith("(sealed: key k1) ") and MARK not in shown.failed_reason


async def test_a_sealed_reason_moved_to_another_job_or_field_does_not_open(
    rq: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q, _ = enc_queue(rq)
    failing(q)
    a = await q.add_job("charge", {"amount": 1, "card": MARK}, encrypted=True, attempts=1)
    b = await q.add_job("charge", {"amount": 2, "card": "b"}, encrypted=True, attempts=1)
    await q.start()
    await wait_for_status(q, a, JobStatus.DLQ)
    await wait_for_status(q, b, JobStatus.DLQ)
    e_a, tb_a = await redis_client.hmget(q.keys.job(a), "e", "tb")
    await redis_client.hset(q.keys.job(b), mapping={"e": e_a, "tb": tb_a})
    await redis_client.hset(q.keys.job(a), "tb", e_a)  # the reason as a traceback
    moved = "(sealed: key k1; it does not open: altered or moved)"
    info_b = await q.get_job_status(b)
    assert info_b is not None
    assert info_b.failed_reason == moved and info_b.stacktrace == moved
    info_a = await q.get_job_status(a)
    assert info_a is not None
    assert info_a.stacktrace == moved and MARK in (info_a.failed_reason or "")
    # A damaged sealed text is shown as such, never as its bytes.
    await redis_client.hset(q.keys.job(a), "e", b"(sealed: key k1) {not json")
    info_a = await q.get_job_status(a)
    assert info_a is not None and info_a.failed_reason == "(sealed: malformed)"


async def test_seal_failures_false_keeps_the_texts_in_clear(
    rq: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q, m = enc_queue(rq, seal_failures=False)
    assert m.seal_failures is False
    failing(q)
    job_id = await q.add_job("charge", {"amount": 1, "card": MARK}, encrypted=True, attempts=1)
    await q.start()
    info = await wait_for_status(q, job_id, JobStatus.DLQ)
    assert MARK.encode() in await redis_client.hget(q.keys.job(job_id), "e")
    assert info.failed_reason == f"ValueError: bad amount 1 for card {MARK}"
    assert MARK.encode() not in await redis_client.hget(q.keys.job(job_id), "d")
    with pytest.raises(ConfigurationError, match="seal_failures must be True or False"):
        EncryptionManager(rq("other"), keys=[KeyConfig("k1", K1)], seal_failures="no")  # type: ignore[arg-type]


async def test_rotation_reseals_failure_texts_under_the_new_key(
    rq: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q, m = rotation_queue(rq)

    @q.process("charge")
    async def charge(job: Any) -> Any:
        if job.data["ok"] and job.attempts > 1:
            return {"done": True}
        raise ValueError(f"declined card {job.data['card']}")

    dead = [
        await q.add_job("charge", {"ok": False, "card": f"{MARK}-{i}"}, encrypted=True, attempts=1)
        for i in range(3)
    ]
    # Fails, then succeeds: its reason is kept as the last error ('le').
    healed = await q.add_job(
        "charge", {"ok": True, "card": f"{MARK}-h"}, encrypted=True, attempts=3, backoff=0
    )
    await q.start()
    for j in dead:
        await wait_for_status(q, j, JobStatus.DLQ)
    await wait_for_status(q, healed, JobStatus.COMPLETED)
    le = await redis_client.hget(q.keys.job(healed), "le")
    assert le is not None and le.startswith(b"(sealed: key k1) ")
    await m.rotate_key("k1", "k2")
    final = await asyncio.wait_for(m.run_rotation(), 30)
    assert final.state == "done" and final.undecryptable == 0
    for j in dead:
        e, tb = await redis_client.hmget(q.keys.job(j), "e", "tb")
        assert e.startswith(b"(sealed: key k2) ") and tb.startswith(b"(sealed: key k2) ")
    le = await redis_client.hget(q.keys.job(healed), "le")
    assert le is not None and le.startswith(b"(sealed: key k2) ")
    # A process holding only the new key opens every text.
    other = rq("rot")
    EncryptionManager(other, keys=[KeyConfig("k2", K2, "aes-256-cbc")], run_rotation=False)
    for i, j in enumerate(dead):
        info = await other.get_job_status(j)
        assert info is not None and info.failed_reason == f"ValueError: declined card {MARK}-{i}"
        assert MARK in (info.stacktrace or "")
    info = await other.get_job_status(healed)
    assert info is not None and info.last_error == f"ValueError: declined card {MARK}-h"


async def test_a_failing_failure_text_filter_withholds_the_texts(
    rq: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q = rq("filt", dlq={"enabled": True})
    failing(q)

    def broken(job: Any, exc: BaseException | None, reason: bytes, tb: bytes) -> Any:
        raise RuntimeError("filter bug")

    q.failure_text_filters.append(broken)
    job_id = await q.add_job("charge", {"amount": 1, "card": MARK}, attempts=1)
    await q.start()
    info = await wait_for_status(q, job_id, JobStatus.DLQ)
    e, tb = await redis_client.hmget(q.keys.job(job_id), "e", "tb")
    assert MARK.encode() not in e and not tb
    assert info.failed_reason is not None
    assert info.failed_reason.startswith("failure text withheld: the failure-text filter")
    assert "raised RuntimeError" in info.failed_reason and not info.stacktrace


async def test_a_failure_is_sealed_once_the_log_line_asks_the_filter(
    rq: QueueFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The worker's log line of a failure learns from the filter's ``rewrites`` that the
    texts are sealed: the texts are sealed once per failure (for the job), not twice."""
    from kitium_queue.features.encryption.failures import FailureSeal

    calls: list[str] = []
    original = FailureSeal.__call__

    def counting(self: FailureSeal, job: Any, *args: Any) -> Any:
        calls.append(job.id)
        return original(self, job, *args)

    monkeypatch.setattr(FailureSeal, "__call__", counting)
    caplog.set_level(logging.INFO, logger="kitium_queue")
    q, _ = enc_queue(rq)
    failing(q)
    job_id = await q.add_job("charge", {"amount": 5, "card": MARK}, encrypted=True, attempts=1)
    await q.start()
    await wait_for_status(q, job_id, JobStatus.DLQ)
    assert calls == [job_id]
    logged = [r.getMessage() for r in caplog.records if "failed for good" in r.getMessage()]
    assert logged and all("ValueError (its text is withheld" in m for m in logged)


async def test_a_deferral_reason_of_an_encrypted_job_is_sealed_in_the_event_stream(
    rq: QueueFactory, redis_client: aioredis.Redis
) -> None:
    """``RetryLater`` with a reason quoting data: the ``job-delayed`` entry of the event
    stream carries the sealed text's placeholder, never the reason; a plain job's reason
    is kept as given."""
    from kitium_queue import RetryLater

    q, _ = enc_queue(rq)
    deferred: set[str] = set()

    @q.process("charge")
    async def charge(job: Any) -> Any:
        if job.id not in deferred:  # the first run only (a deferral spends no attempt)
            deferred.add(job.id)
            raise RetryLater(10, f"card {job.data['card']} is busy")
        return {"ok": True}

    sealed = await q.add_job("charge", {"card": MARK}, encrypted=True)
    plain = await q.add_job("charge", {"card": "not secret"})
    await q.start()
    await wait_for_status(q, sealed, JobStatus.COMPLETED)
    await wait_for_status(q, plain, JobStatus.COMPLETED)
    stream = await stream_bytes(redis_client, q)
    assert MARK.encode() not in stream
    assert b"card not secret is busy" in stream
    assert b"(sealed: key k1)" in stream
