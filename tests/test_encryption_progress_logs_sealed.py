"""Sealed progress values and log lines of encrypted jobs
(``features/encryption/progresslogs.py``, the foundation's job-text filters and log
views in ``jobtexts.py``) against a real Redis.

A processor writing a secret into its progress and its log: the job's record, its log
list and the event stream hold no trace of it, the views of a process holding the key
show it, a process without the key shows ``(sealed: key k1)``; a plain job is
unchanged; a value moved to another job or field does not open;
``seal_progress_and_logs=False`` stores them in clear; a rotation re-seals them; a
sealed progress value above the limit is refused; a failing filter withholds the value.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

import test_encryption
import test_encryption_failures_sealed
from helpers import QueueFactory, wait_for_status, wait_until
from kitium_queue import ConfigurationError, JobQueue, JobStatus
from kitium_queue.errors import PayloadTooLargeError
from kitium_queue.features.encryption import EncryptionManager, KeyConfig
from kitium_queue.features.encryption.progresslogs import ProgressLogSeal
from kitium_queue.features.webhooks import WebhookConfig, WebhookManager, generate_secret
from test_encryption_failures_sealed import rotation_queue
from test_webhooks import FAST

K1, K2 = test_encryption_failures_sealed.K1, test_encryption_failures_sealed.K2  # rotation_queue
MARK = "CARD-4111-SECRET-7c1a"

rq = test_encryption.rq  # the Redis queue factory of the encryption tests


def enc_queue(rq: QueueFactory, name: str = "pl", **kw: Any) -> tuple[JobQueue, EncryptionManager]:
    q = rq(name, worker={"concurrency": 4})
    return q, EncryptionManager(q, keys=[KeyConfig("k1", K1)], run_rotation=False, **kw)


def charging(q: JobQueue) -> None:
    @q.process("charge")
    async def charge(job: Any) -> Any:
        card = job.data["card"]
        await job.update_progress(42)  # small: copied into the event stream
        await job.log(f"charging {card}")
        await job.log("no secret here")
        await job.update_progress({"pct": 50, "card": card})
        return {"ok": True}


async def raw_job(client: aioredis.Redis, q: JobQueue, job_id: str) -> bytes:
    """Every field and value of the job's hash (HGETALL), as one byte string."""
    return b"".join(f + b"=" + v for f, v in (await client.hgetall(q.keys.job(job_id))).items())


async def stream_bytes(client: aioredis.Redis, q: JobQueue) -> bytes:
    return b"".join(v for _, f in await client.xrange(q.keys.events) for v in f.values())


async def test_progress_and_log_lines_are_sealed_and_opened_by_the_key_holder(
    rq: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q, _ = enc_queue(rq)
    charging(q)
    heard: list[Any] = []
    q.on("job-progress", lambda ev: heard.append(ev.progress))
    job_id = await q.add_job("charge", {"card": MARK}, encrypted=True)
    plain_id = await q.add_job("charge", {"card": "not secret"})
    await q.start()
    await wait_for_status(q, job_id, JobStatus.COMPLETED)
    await wait_for_status(q, plain_id, JobStatus.COMPLETED)

    # Redis holds no trace: the record, the log list, the event stream.
    assert MARK.encode() not in await raw_job(redis_client, q, job_id)
    pg = await redis_client.hget(q.keys.job(job_id), "pg")
    assert pg.startswith(b'"(sealed: key k1) {')
    lines = await redis_client.lrange(q.keys.logs(job_id), 0, -1)
    assert len(lines) == 2 and all(line.startswith(b"(sealed: key k1) {") for line in lines)
    assert not [line for line in lines if b"charging" in line or b"no secret" in line]
    stream = await stream_bytes(redis_client, q)
    assert MARK.encode() not in stream and b"(sealed: key k1)" in stream
    events = [ev async for ev in q.events(last_id="0", follow=False, block_ms=50)]
    progress = [
        ev.fields["progress"] for ev in events if ev.job_id == job_id and ev.event == "job-progress"
    ]
    assert len(progress) == 2 and not [p for p in progress if MARK in p or p == "42"]
    # The in-process hooks get the value the processor gave (documented).
    assert {"pct": 50, "card": MARK} in heard
    # A plain job is unchanged.
    assert await redis_client.hget(q.keys.job(plain_id), "pg") == orjson.dumps(
        {"pct": 50, "card": "not secret"}
    )
    assert await q.get_job_logs(plain_id) == ["charging not secret", "no secret here"]

    # The views of the process holding the key show the values.
    info = await q.get_job_status(job_id)
    assert info is not None and info.progress == {"pct": 50, "card": MARK}
    assert await q.get_job_logs(job_id) == [f"charging {MARK}", "no secret here"]
    assert await q.get_job_logs(job_id, -1, -1) == ["no secret here"]
    q.ctx.redact_payloads = True  # what the CLI sets: data hidden, progress and logs opened
    detail = await q.get_job_detail(job_id)
    assert detail is not None and detail.data == "<encrypted key=k1 aes-256-gcm>"
    assert detail.progress == {"pct": 50, "card": MARK} and detail.log_lines == 2
    assert await q.get_job_logs(job_id) == [f"charging {MARK}", "no secret here"]
    q.ctx.redact_payloads = False
    listed = {i.id: i for i in await q.get_jobs_by_status(JobStatus.COMPLETED)}
    assert listed[job_id].progress == {"pct": 50, "card": MARK}

    # A process with the manager but without key k1: the placeholder, no crash.
    other = rq("pl")
    EncryptionManager(other, keys=[KeyConfig("k2", K2)], run_rotation=False)
    seen = await other.get_job_detail(job_id)
    assert seen is not None and seen.progress == "(sealed: key k1)"
    assert await other.get_job_logs(job_id) == ["(sealed: key k1)"] * 2
    # A process without the manager shows what is stored: the placeholder comes first.
    bare = rq("pl")
    shown = await bare.get_job_status(job_id)
    assert shown is not None and isinstance(shown.progress, str)
    assert shown.progress.startswith("(sealed: key k1) ") and MARK not in shown.progress
    assert all(line.startswith("(sealed: key k1) ") for line in await bare.get_job_logs(job_id))


async def test_a_sealed_value_moved_to_another_job_or_field_does_not_open(
    rq: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q, _ = enc_queue(rq)
    charging(q)
    a = await q.add_job("charge", {"card": MARK}, encrypted=True)
    b = await q.add_job("charge", {"card": "b"}, encrypted=True)
    await q.start()
    await wait_for_status(q, a, JobStatus.COMPLETED)
    await wait_for_status(q, b, JobStatus.COMPLETED)
    pg_a = await redis_client.hget(q.keys.job(a), "pg")
    line_a = (await redis_client.lrange(q.keys.logs(a), 0, 0))[0]
    moved = "(sealed: key k1; it does not open: altered or moved)"
    # Into another job: progress, and a log line.
    await redis_client.hset(q.keys.job(b), "pg", pg_a)
    await redis_client.rpush(q.keys.logs(b), line_a)
    info_b = await q.get_job_status(b)
    assert info_b is not None and info_b.progress == moved
    assert (await q.get_job_logs(b))[-1] == moved
    # Into another field of the same job: a log line as progress, progress as a log line,
    # a log line as the failure reason.
    await redis_client.hset(q.keys.job(a), mapping={"pg": orjson.dumps(line_a.decode())})
    await redis_client.hset(q.keys.job(a), "e", line_a)
    await redis_client.rpush(q.keys.logs(a), orjson.loads(pg_a).encode())
    info_a = await q.get_job_status(a)
    assert info_a is not None and info_a.progress == moved and info_a.failed_reason == moved
    assert await q.get_job_logs(a) == [f"charging {MARK}", "no secret here", moved]
    # A damaged sealed value is shown as such, never as its bytes; a line that only
    # starts like one holds no envelope: it is shown as it is.
    await redis_client.hset(q.keys.job(a), "pg", orjson.dumps("(sealed: key k1) {not json"))
    info_a = await q.get_job_status(a)
    assert info_a is not None and info_a.progress == "(sealed: malformed)"
    await redis_client.rpush(q.keys.logs(b), b"(sealed: key k1) a plain line")
    assert (await q.get_job_logs(b))[-1] == "(sealed: key k1) a plain line"


async def test_seal_progress_and_logs_false_keeps_them_in_clear(
    rq: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q, m = enc_queue(rq, seal_progress_and_logs=False)
    assert m.seal_progress_and_logs is False and m.seal_failures is True
    charging(q)
    job_id = await q.add_job("charge", {"card": MARK}, encrypted=True)
    await q.start()
    info = await wait_for_status(q, job_id, JobStatus.COMPLETED)
    assert MARK.encode() in await redis_client.hget(q.keys.job(job_id), "pg")
    assert info.progress == {"pct": 50, "card": MARK}
    assert await q.get_job_logs(job_id) == [f"charging {MARK}", "no secret here"]
    assert MARK.encode() not in await redis_client.hget(q.keys.job(job_id), "d")
    with pytest.raises(ConfigurationError, match="seal_progress_and_logs must be True or False"):
        EncryptionManager(rq("other"), keys=[KeyConfig("k1", K1)], seal_progress_and_logs=1)  # type: ignore[arg-type]


async def test_rotation_reseals_progress_and_log_lines_under_the_new_key(
    rq: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q, m = rotation_queue(rq)

    @q.process("charge")
    async def charge(job: Any) -> Any:
        await job.update_progress({"card": job.data["card"]})
        for n in range(3):
            await job.log(f"line {n} of {job.data['card']}")
        if job.data["fail"]:
            raise ValueError("declined")
        return 1

    jobs = [
        await q.add_job(
            "charge", {"card": f"{MARK}-{i}", "fail": i == 0}, encrypted=True, attempts=1
        )
        for i in range(3)
    ]
    await q.start()
    await wait_for_status(q, jobs[0], JobStatus.DLQ)
    for j in jobs[1:]:
        await wait_for_status(q, j, JobStatus.COMPLETED)
    # A clear line among the sealed ones (written before sealing was on) stays as it is.
    await redis_client.rpush(q.keys.logs(jobs[1]), b"kept in clear")
    await m.rotate_key("k1", "k2")
    final = await asyncio.wait_for(m.run_rotation(), 30)
    assert final.state == "done" and final.undecryptable == 0
    for j in jobs:
        pg = await redis_client.hget(q.keys.job(j), "pg")
        assert pg.startswith(b'"(sealed: key k2) ')
        lines = await redis_client.lrange(q.keys.logs(j), 0, -1)
        sealed = [line for line in lines if line != b"kept in clear"]
        assert len(sealed) == 3 and all(line.startswith(b"(sealed: key k2) ") for line in sealed)
    assert (await redis_client.lrange(q.keys.logs(jobs[1]), -1, -1)) == [b"kept in clear"]
    # A process holding only the new key opens every value, in order.
    other = rq("rot")
    EncryptionManager(other, keys=[KeyConfig("k2", K2, "aes-256-cbc")], run_rotation=False)
    for i, j in enumerate(jobs):
        info = await other.get_job_status(j)
        assert info is not None and info.progress == {"card": f"{MARK}-{i}"}
        logs = await other.get_job_logs(j)
        assert logs[:3] == [f"line {n} of {MARK}-{i}" for n in range(3)]


async def test_a_sealed_progress_value_above_the_limit_is_refused(
    rq: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q, _ = enc_queue(rq)
    refused: list[BaseException] = []

    @q.process("big")
    async def big(job: Any) -> Any:
        await job.update_progress(1)
        # 60,000 bytes encoded: within the limit in clear, above it once sealed.
        try:
            await job.update_progress("x" * 59_998)
        except PayloadTooLargeError as exc:
            refused.append(exc)
        await job.update_progress("y" * 40_000)  # within it sealed too
        return None

    job_id = await q.add_job("big", {}, encrypted=True)
    await q.start()
    info = await wait_for_status(q, job_id, JobStatus.COMPLETED)
    assert len(refused) == 1
    assert "60000 bytes encoded" in str(refused[0]) and "above 65536" in str(refused[0])
    assert info.progress == "y" * 40_000
    assert len(await redis_client.hget(q.keys.job(job_id), "pg")) <= 65_536


async def test_a_failing_job_text_filter_withholds_the_value(
    rq: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q = rq("filt")

    def broken(job: Any, kind: str, raw: bytes) -> Any:
        if kind == "log":
            raise RuntimeError("filter bug")
        return "not bytes"

    q.job_texts.filters.append(broken)

    @q.process("p")
    async def p(job: Any) -> Any:
        await job.update_progress({"card": MARK})
        await job.log(f"card {MARK}")

    job_id = await q.add_job("p", {})
    await q.start()
    info = await wait_for_status(q, job_id, JobStatus.COMPLETED)
    assert MARK.encode() not in await raw_job(redis_client, q, job_id)
    assert info.progress == (
        "progress withheld: the job-text filter test_a_failing_job_text_filter_withholds_the_value"
        ".<locals>.broken returned str, not bytes"
    )
    (line,) = await q.get_job_logs(job_id)
    assert line.startswith("log withheld: the job-text filter ") and MARK not in line
    assert line.endswith("raised RuntimeError")


async def test_a_processor_in_a_child_process_has_its_progress_and_log_lines_sealed(
    rq: QueueFactory, redis_client: aioredis.Redis
) -> None:
    import procjobs

    q, _ = enc_queue(rq, "child")
    q.process("double", procjobs.double, mode="process")
    job_id = await q.add_job("double", {"x": 4111}, encrypted=True)
    await q.start()
    info = await wait_for_status(q, job_id, JobStatus.COMPLETED, timeout=60)
    assert (await redis_client.hget(q.keys.job(job_id), "pg")).startswith(b'"(sealed: key k1) ')
    (line,) = await redis_client.lrange(q.keys.logs(job_id), 0, -1)
    assert line.startswith(b"(sealed: key k1) ") and b"doubling" not in line
    assert info.progress == 40 and info.result["value"] == 8222
    assert await q.get_job_logs(job_id) == ["doubling 4111"]


async def test_the_swap_of_a_log_list_is_compare_and_set_and_waits_for_an_active_job(
    rq: QueueFactory, redis_client: aioredis.Redis
) -> None:
    from kitium_queue.features.encryption.progresslogs import pack_lines, unpack_lines

    q = rq("swap")
    m = EncryptionManager(q, keys=[KeyConfig("k1", K1), KeyConfig("k2", K2)], run_rotation=False)
    await m.initialize()
    await m.rotate_key("k1", "k2")
    n = (await redis_client.hget(q.keys.extra("enc:rotation"), "n")).decode()
    logs, job = q.keys.logs("j1"), q.keys.job("j1")
    read = [b"a", b"b:c", b""]
    await redis_client.rpush(logs, *read)
    await redis_client.pexpire(logs, 600_000)
    await redis_client.hset(job, mapping={"st": "active", "n": "x"})
    new = [b"A", b"B:C", b"new"]
    assert unpack_lines(pack_lines(new)) == new

    async def swap(old: list[bytes]) -> int:
        reply = await q.run(
            "enc_swap", [n, "logs:j1", "job:j1", pack_lines(old), pack_lines(new), "L"]
        )
        return int(reply[1][0])

    assert await swap(read) == 2  # active: its worker appends
    await redis_client.hset(job, "st", "completed")
    assert await swap([b"a", b"b:c"]) == 0  # changed since it was read
    assert await redis_client.lrange(logs, 0, -1) == read
    assert await swap(read) == 1
    assert await redis_client.lrange(logs, 0, -1) == new
    assert 0 < await redis_client.pttl(logs) <= 600_000


@pytest.mark.parametrize("delivery", ["guaranteed", "reliable"])
async def test_webhooks_withhold_a_sealed_jobs_progress(
    rq: QueueFactory,
    redis_client: aioredis.Redis,
    receiver: Any,
    delivery: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An endpoint subscribed to ``job-progress`` gets ``progress_withheld`` for a job
    whose progress is stored sealed (nothing of the value in the outbox in Redis nor in
    the request), and the value for a plain job, as before."""
    q, _ = enc_queue(rq)
    m = WebhookManager(q, **FAST)
    await m.register_webhook(
        WebhookConfig(
            url=receiver.url,
            secret=generate_secret(),
            events=["job-progress"],
            delivery_strategy=delivery,
        )
    )
    written: list[bytes] = []
    sealed_calls: list[str] = []
    original = ProgressLogSeal.__call__

    def counting(self: ProgressLogSeal, job: Any, kind: str, raw: bytes) -> bytes:
        sealed_calls.append(job.id)
        return original(self, job, kind, raw)

    monkeypatch.setattr(ProgressLogSeal, "__call__", counting)

    @q.process("charge")
    async def charge(job: Any) -> Any:
        await job.update_progress({"pct": 50, "card": job.data["card"]})
        # What the outbox holds right after the progress was reported.
        for key in await redis_client.keys(f"{q.keys.base}*"):
            if await redis_client.type(key) == b"stream":
                written.extend(v for _, f in await redis_client.xrange(key) for v in f.values())

    sealed = await q.add_job("charge", {"card": MARK}, encrypted=True)
    plain = await q.add_job("charge", {"card": "not secret"})
    await q.start()
    await wait_until(lambda: len(receiver.ok()) == 2, 10)
    got = {r.json()["data"]["job_id"]: r.json()["data"] for r in receiver.ok()}
    assert got[sealed].get("progress_withheld") is True and "progress" not in got[sealed]
    assert got[plain]["progress"] == {"pct": 50, "card": "not secret"}
    assert not [r for r in receiver.ok() if MARK.encode() in r.body]
    # Each value sealed once, for the job (the subscriber asks the filter's rewrites).
    assert sorted(sealed_calls) == sorted([sealed, plain])
    assert not [v for v in written if MARK.encode() in v]
    for key in await redis_client.keys(f"{q.keys.base}*"):
        kind = await redis_client.type(key)
        if kind == b"hash":
            assert MARK.encode() not in b"".join((await redis_client.hgetall(key)).values())
