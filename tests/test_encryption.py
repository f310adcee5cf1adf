"""Payload encryption (``kitium_queue.features.encryption``) against a real Redis.

Round trips with both algorithms, what is stored (a raw dump of the whole keyspace holds
no plaintext after a workload with results, retries and dead-lettered jobs), tampered,
swapped, moved and unknown-key ciphertexts dead-lettered with a reason while the worker
goes on, the binding of schedules, key material never reaching Redis or a log, the
JobInfo view (plaintext in process, redacted in the CLI), and bad input. Rotation is in
``tests/test_encryption_rotation.py``.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from _redis import RedisServer
from helpers import QueueFactory, wait_for_status, wait_until
from kitium_queue import ConfigurationError, JobQueue, JobStatus
from kitium_queue.features.encryption import (
    DecryptionError,
    EncryptionManager,
    KeyConfig,
    generate_key,
)

K1, K2 = generate_key(), generate_key()
MARK = "PLAINTEXT-MARKER-7f3a"
RESULT_MARK = "RESULT-MARKER-c91e"


@pytest.fixture
async def rq(redis_url: str, prefix: str) -> AsyncIterator[QueueFactory]:
    """Queues on the real Redis (this feature is tested there only)."""
    factory = QueueFactory(redis_url, prefix)
    yield factory
    await factory.aclose()


def enc_queue(
    rq: QueueFactory, name: str = "e", *, algorithm: str = "aes-256-gcm", **kw: Any
) -> tuple[JobQueue, EncryptionManager]:
    q = rq(name, worker={"concurrency": 4}, **kw.pop("queue_kw", {}))
    m = EncryptionManager(q, keys=[KeyConfig("k1", K1, algorithm)], **kw)
    return q, m


async def dump_keyspace(client: aioredis.Redis) -> bytes:
    """Every key's value, raw: DUMP of each key plus a plain read of hashes, lists,
    strings, sets, sorted sets and streams (DUMP may compress values)."""
    out = bytearray()
    async for key in client.scan_iter(count=1000):
        out += key
        dumped = await client.dump(key)
        if dumped:
            out += dumped
        kind = (await client.type(key)).decode()
        if kind == "hash":
            for f, v in (await client.hgetall(key)).items():
                out += f + v
        elif kind == "list":
            out += b"".join(await client.lrange(key, 0, -1))
        elif kind == "string":
            out += await client.get(key) or b""
        elif kind == "set":
            out += b"".join(await client.smembers(key))
        elif kind == "zset":
            out += b"".join(m for m, _ in await client.zrange(key, 0, -1, withscores=True))
        elif kind == "stream":
            for _, fields in await client.xrange(key):
                for f, v in fields.items():
                    out += f + v
    return bytes(out)


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("algorithm", ["aes-256-gcm", "aes-256-cbc"])
async def test_processor_sees_plaintext_and_redis_holds_ciphertext(
    rq: QueueFactory, redis_client: aioredis.Redis, algorithm: str
) -> None:
    q, _ = enc_queue(rq, algorithm=algorithm)
    seen: list[Any] = []

    @q.process("pay")
    async def pay(job: Any) -> dict[str, str]:
        seen.append(job.data)
        return {"receipt": RESULT_MARK}

    job_id = await q.add_job("pay", {"card": MARK}, encrypted=True)
    plain_id = await q.add_job("pay", {"card": "not secret"})
    raw = await redis_client.hget(q.keys.job(job_id), "d")
    assert MARK.encode() not in raw
    env = orjson.loads(raw)
    assert env["kid"] == "k1" and env["alg"] == algorithm and env["for"] == "job"
    await q.start()
    await wait_for_status(q, job_id, JobStatus.COMPLETED)
    await wait_for_status(q, plain_id, JobStatus.COMPLETED)
    assert {"card": MARK} in seen and {"card": "not secret"} in seen
    r = await redis_client.hget(q.keys.job(job_id), "r")
    assert RESULT_MARK.encode() not in r and orjson.loads(r)["kid"] == "k1"
    info = await q.get_job_status(job_id)  # in process, holding the key: plaintext
    assert info is not None
    assert info.data == {"card": MARK} and info.result == {"receipt": RESULT_MARK}
    q.ctx.redact_payloads = True  # what the CLI sets
    info = await q.get_job_status(job_id)
    assert info is not None
    assert info.data == f"<encrypted key=k1 {algorithm}>"
    assert info.result == f"<encrypted key=k1 {algorithm}>"
    # A job that was not encrypted is shown as it is.
    plain = await q.get_job_status(plain_id)
    assert plain is not None and plain.data == {"card": "not secret"}


async def test_encrypt_all_and_auto_ids(rq: QueueFactory, redis_client: aioredis.Redis) -> None:
    q, _ = enc_queue(rq, encrypt_all=True)
    ids = await q.add_jobs([("a", {"x": MARK}), ("b", {"y": MARK}, {"job_id": "mine-1"})])
    assert ids[1] == "mine-1"
    assert ids[0] and not ids[0].isdigit()  # a client-made id: the AAD needs it up front
    for i in ids:
        assert MARK.encode() not in await redis_client.hget(q.keys.job(i), "d")
    with pytest.raises(ConfigurationError, match="encrypts every job"):
        await q.add_job("a", {}, encrypted=False)


async def test_the_option_needs_the_feature(rq: QueueFactory) -> None:
    q = rq("plain")
    with pytest.raises(ConfigurationError, match=r"needs payload encryption.*EncryptionManager"):
        await q.add_job("a", {}, encrypted=True)
    _, _ = EncryptionManager(q, keys=[KeyConfig("k1", K1)]), None
    with pytest.raises(ConfigurationError, match="True or False"):
        await q.add_job("a", {}, encrypted="yes")
    with pytest.raises(ConfigurationError, match="already has an EncryptionManager"):
        EncryptionManager(q)


# ---------------------------------------------------------------- tampering


async def _hset(client: aioredis.Redis, q: JobQueue, job_id: str, field: str, value: Any) -> None:
    await client.hset(q.keys.job(job_id), field, value)


async def test_tampered_swapped_and_unknown_key_jobs_are_dead_lettered(
    rq: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q, _ = enc_queue(rq, queue_kw={"dlq": {"enabled": True}}, missing_key_wait_ms=0)
    ran: list[Any] = []

    @q.process("*")
    async def anything(job: Any) -> str:
        ran.append(job.data)
        return "ok"

    a = await q.add_job("pay", {"n": "a"}, encrypted=True, attempts=5)
    b = await q.add_job("pay", {"n": "b"}, encrypted=True, attempts=5)
    c = await q.add_job("pay", {"n": "c"}, encrypted=True)
    d = await q.add_job("pay", {"n": "d"}, encrypted=True)
    e = await q.add_job("pay", {"n": "e"}, encrypted=True)
    good = await q.add_job("pay", {"n": "good"}, encrypted=True)
    da = await redis_client.hget(q.keys.job(a), "d")
    db = await redis_client.hget(q.keys.job(b), "d")
    # Swap two jobs' ciphertexts (same queue, same name, valid key).
    await _hset(redis_client, q, a, "d", db)
    await _hset(redis_client, q, b, "d", da)
    # Flip one bit of c's ciphertext.
    env = orjson.loads(await redis_client.hget(q.keys.job(c), "d"))
    ct = bytearray(base64.b64decode(env["ct"]))
    ct[20] ^= 1
    env["ct"] = base64.b64encode(bytes(ct)).decode()
    await _hset(redis_client, q, c, "d", orjson.dumps(env))
    # An envelope naming a key nobody holds.
    env = orjson.loads(await redis_client.hget(q.keys.job(d), "d"))
    env["kid"] = "k-gone"
    await _hset(redis_client, q, d, "d", orjson.dumps(env))
    # Plaintext where a ciphertext should be.
    await _hset(redis_client, q, e, "d", orjson.dumps({"n": "forged"}))
    await q.start()
    await wait_for_status(q, good, JobStatus.COMPLETED)
    reasons = {}
    for j in (a, b, c, d, e):
        info = await wait_for_status(q, j, JobStatus.DLQ)
        assert info.attempts == 1  # no retry loop
        reasons[j] = info.failed_reason
    assert ran == [{"n": "good"}]
    for j in (a, b, c):
        assert "failed authentication" in reasons[j] and "moved" in reasons[j]
    assert "k-gone" in reasons[d] and "does not hold" in reasons[d]
    assert "not an envelope" in reasons[e]


async def test_a_ciphertext_moved_to_another_queue_or_name_does_not_open(
    rq: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q1, m1 = enc_queue(rq, "one")
    q2, _ = enc_queue(rq, "two", queue_kw={"dlq": {"enabled": True}})
    src = await q1.add_job("pay", {"v": MARK}, encrypted=True, job_id="same-id")
    raw = await redis_client.hget(q1.keys.job(src), "d")
    dst = await q2.add_job("pay", {"v": "x"}, encrypted=True, job_id="same-id")
    await _hset(redis_client, q2, dst, "d", raw)
    q2.process("pay", lambda job: None)
    await q2.start()
    info = await wait_for_status(q2, dst, JobStatus.DLQ)
    assert "failed authentication" in (info.failed_reason or "")
    # Renamed in place: the name is bound too.
    await redis_client.hset(q1.keys.job(src), "n", "refund")
    with pytest.raises(DecryptionError):
        m1.open_job_data(src, "refund", orjson.loads(raw))
    assert m1.open_job_data(src, "pay", orjson.loads(raw)) == {"v": MARK}


# ---------------------------------------------------------------- what is stored


@pytest.fixture
async def private() -> AsyncIterator[tuple[QueueFactory, aioredis.Redis]]:
    """A redis-server of this test's own: its whole keyspace is this test's."""
    with RedisServer() as server:
        factory = QueueFactory(server.url, "kq")
        client = aioredis.Redis.from_url(server.url)
        try:
            yield factory, client
        finally:
            await factory.aclose()
            await client.aclose()


async def test_raw_keyspace_holds_no_plaintext_after_a_workload(
    private: tuple[QueueFactory, aioredis.Redis], caplog: pytest.LogCaptureFixture
) -> None:
    rq, redis_client = private
    caplog.set_level(logging.DEBUG)
    q, m = enc_queue(rq, queue_kw={"dlq": {"enabled": True}})
    await m.add_key(KeyConfig("k2", K2, "aes-256-cbc"))
    tries: dict[str, int] = {}

    @q.process("work")
    async def work(job: Any) -> Any:
        n = job.data["n"]
        tries[n] = tries.get(n, 0) + 1
        await job.update_progress(50)
        await job.log("step done")
        if n % 5 == 0 and tries[n] == 1:
            raise RuntimeError("transient")  # retried, then completes
        if n % 7 == 0:
            raise RuntimeError("always fails")  # dead-lettered
        if n % 11 == 0:
            return {"bad": float("nan")}  # unserializable result: reason must not quote it
        return {"out": f"{RESULT_MARK}-{n}"}

    ids = [
        await q.add_job(
            "work", {"n": i, "secret": f"{MARK}-{i}"}, encrypted=True, attempts=2, backoff=1
        )
        for i in range(40)
    ]
    await q.schedule_every("work", {"n": 1000, "secret": f"{MARK}-sched"}, 60_000, encrypted=True)
    await q.start()
    await wait_until(lambda: all_done(q, ids), timeout=20)
    # Control: a job that is not encrypted shows up in the same dump.
    await q.add_job("idle", {"control": "CONTROL-MARKER-55"}, delay=600_000)
    dump = await dump_keyspace(redis_client)
    assert b"CONTROL-MARKER-55" in dump
    assert MARK.encode() not in dump and RESULT_MARK.encode() not in dump
    # Key material is never in Redis, raw or base64.
    for k in (K1, K2):
        assert k.encode() not in dump and base64.b64decode(k) not in dump
    logs = "\n".join(r.getMessage() for r in caplog.records)
    assert MARK not in logs and RESULT_MARK not in logs and K1 not in logs and K2 not in logs
    dlq = await q.get_dlq_jobs(100)
    assert {i.data["n"] for i in dlq} == {n for n in range(40) if n % 7 == 0 or (n % 11 == 0)}
    nan_job = next(i for i in dlq if i.data["n"] == 11)
    assert "details withheld" in (nan_job.failed_reason or "")


async def all_done(q: JobQueue, ids: list[str]) -> bool:
    for i in ids:
        info = await q.get_job_status(i)
        if info is None or info.status not in (JobStatus.COMPLETED, JobStatus.DLQ):
            return False
    return True


async def test_schedule_payloads_are_encrypted_and_bound_to_the_schedule(
    rq: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q, _ = enc_queue(rq, queue_kw={"dlq": {"enabled": True}})
    got: list[Any] = []
    q.process("tick", lambda job: got.append(job.data))
    sched = await q.schedule_every(
        "tick", {"s": MARK}, 200, encrypted=True, schedule_id="every-200"
    )
    raw = await redis_client.hget(q.keys.schedule(sched.id), "d")
    assert MARK.encode() not in raw and orjson.loads(raw)["for"] == "schedule"
    listed = await q.get_schedule(sched.id)
    assert listed is not None and MARK not in str(listed.data)
    # Updating the schedule without new data keeps it working (no double encryption).
    await q.schedules.update(sched.id, interval_ms=150)
    # The schedule's ciphertext copied into a job it did not make is refused.
    stray = await q.add_job("tick", {"s": "x"}, encrypted=True, job_id="stray")
    await _hset(redis_client, q, stray, "d", raw)
    await q.start()
    await wait_until(lambda: len(got) >= 2, timeout=10)
    assert got[0] == {"s": MARK}
    info = await wait_for_status(q, stray, JobStatus.DLQ)
    assert "not made by a schedule" in (info.failed_reason or "")


# ---------------------------------------------------------------- keys and values


async def test_keys_from_argument_environment_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rq: QueueFactory
) -> None:
    monkeypatch.setenv("KQ_TEST_KEY", K2)
    (tmp_path / "key").write_text(K1 + "\n")
    from_env = KeyConfig.from_env("KQ_TEST_KEY", "env")
    from_file = KeyConfig.from_file(tmp_path / "key", "file", "aes-256-cbc")
    for cfg in (from_env, from_file):
        assert K1 not in repr(cfg) and K2 not in repr(cfg) and K1 not in str(cfg)
    with pytest.raises(ConfigurationError, match="not set"):
        KeyConfig.from_env("KQ_TEST_MISSING", "x")
    with pytest.raises(ConfigurationError, match="cannot read"):
        KeyConfig.from_file(tmp_path / "nope", "x")
    q = rq("keys")
    m = EncryptionManager(q, keys=[from_file], current_key_id="file")
    await m.add_key(from_env)
    assert await m.initialize() == "file"
    env = await m.encrypt({"v": MARK}, context="ctx-1")
    assert MARK not in str(env) and env["alg"] == "aes-256-cbc"
    assert await m.decrypt(env, context="ctx-1") == {"v": MARK}
    with pytest.raises(DecryptionError):
        await m.decrypt(env, context="ctx-2")
    ids = (await m.rotation_status()).key_ids
    assert ids == ["env", "file"]


async def test_bad_keys_are_refused_without_quoting_them(rq: QueueFactory) -> None:
    q = rq("bad")
    m = EncryptionManager(q)
    with pytest.raises(ConfigurationError, match="32 bytes") as short:
        await m.add_key({"key_id": "a", "key": base64.b64encode(b"x" * 16).decode()})
    assert "eHh4" not in str(short.value)
    with pytest.raises(ConfigurationError, match="not valid base64"):
        await m.add_key({"key_id": "a", "key": "not base64 !!"})
    with pytest.raises(ConfigurationError, match="key_id must be"):
        await m.add_key({"key_id": "a b", "key": K1})
    with pytest.raises(ConfigurationError, match="algorithm must be"):
        await m.add_key({"key_id": "a", "key": K1, "algorithm": "rot13"})
    await m.add_key({"key_id": "a", "key": K1})
    with pytest.raises(ConfigurationError, match="other key material"):
        await m.add_key({"key_id": "a", "key": K2})
    with pytest.raises(ConfigurationError, match="holds no key"):
        await EncryptionManager(rq("empty")).initialize()


async def test_a_process_without_the_current_key_refuses_to_encrypt(rq: QueueFactory) -> None:
    _, m = enc_queue(rq, "cur")
    await m.initialize()
    other = rq("cur")  # another process of the same queue, holding another key only
    m2 = EncryptionManager(other, keys=[KeyConfig("k9", K2)])
    with pytest.raises(Exception, match="does not hold"):
        await other.add_job("a", {"v": 1}, encrypted=True)
    assert await m2.rotation_status() is not None


async def test_events_and_dlq_notifications_carry_no_plaintext(
    rq: QueueFactory, redis_client: aioredis.Redis
) -> None:
    notified: list[Any] = []
    q, _ = enc_queue(
        rq, queue_kw={"dlq": {"enabled": True, "notification_handler": notified.append}}
    )
    events: list[Any] = []
    for ev in ("job-completed", "job-failed", "job-dlq", "job-started"):
        q.on(ev, events.append)

    @q.process("p")
    async def p(job: Any) -> Any:
        if job.data["fail"]:
            raise ValueError("no")
        return {"r": RESULT_MARK}

    ok = await q.add_job("p", {"fail": False, "m": MARK}, encrypted=True)
    bad = await q.add_job("p", {"fail": True, "m": MARK}, encrypted=True, attempts=1)
    await q.start()
    await wait_for_status(q, ok, JobStatus.COMPLETED)
    await wait_for_status(q, bad, JobStatus.DLQ)
    await wait_until(lambda: len(events) >= 4)
    for ev in events:
        assert MARK not in repr(getattr(ev, "job", None) and ev.job.data)
        assert RESULT_MARK not in repr(getattr(ev, "result", None))
    stream = b"".join(v for _, f in await redis_client.xrange(q.keys.events) for v in f.values())
    assert MARK.encode() not in stream and RESULT_MARK.encode() not in stream
    await asyncio.sleep(0.1)


def test_the_readme_example_runs(tmp_path: Path) -> None:
    import re
    import subprocess
    import sys

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Payload encryption") :]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    script = tmp_path / "readme_encryption.py"
    script.write_text(code.group(1))
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines() == ["{'charged': '1111'}", "done 2"]
