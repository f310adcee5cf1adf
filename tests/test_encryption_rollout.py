"""Rolling deploys of payload encryption, against a real Redis.

* Switching ``encrypt_all`` on while plaintext jobs wait: a never-encrypted job is
  refused with a reason saying what it is (plaintext, added without encryption) and what
  to do, apart from a job marked encrypted whose data was replaced (tampering); with
  ``accept_plaintext_before`` the backlog runs (results sealed), later plaintext does not.
* Key rotation while the ``encryption-rotation`` leader lacks the new key: that process
  steps down and stops campaigning, says so once (no traceback a second), the status
  says which key is missing where, and a process holding the key runs the pass.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from click.testing import CliRunner

from helpers import QueueFactory, app_module, wait_for_status, wait_until
from kitium_queue import ConfigurationError, JobQueue, JobStatus
from kitium_queue.cli import main
from kitium_queue.features.encryption import EncryptionManager, KeyConfig, generate_key

K1, K2 = generate_key(), generate_key()
DLQ = {"dlq": {"enabled": True}}


@pytest.fixture
async def rq(redis_url: str, prefix: str) -> AsyncIterator[QueueFactory]:
    factory = QueueFactory(redis_url, prefix)
    yield factory
    await factory.aclose()


def _process(queue: JobQueue, ran: list[Any]) -> None:
    @queue.process("*")
    async def anything(job: Any) -> dict[str, Any]:
        ran.append(job.data)
        return {"done": job.data}


async def _stored(client: aioredis.Redis, q: JobQueue, job_id: str, field: str) -> Any:
    return orjson.loads(await client.hget(q.keys.job(job_id), field))


# ---------------------------------------------------------------- encrypt_all rollout
async def test_encrypt_all_refuses_a_plaintext_backlog_saying_so_and_tampering_apart(
    rq: QueueFactory, redis_client: aioredis.Redis
) -> None:
    old = rq("roll")  # a producer without encryption: its jobs wait
    backlog = [await old.add_job("pay", {"n": i}) for i in range(3)]
    new = rq("roll", **DLQ)
    m = EncryptionManager(new, keys=[KeyConfig("k1", K1)], encrypt_all=True, run_rotation=False)
    await m.initialize()
    forged = await new.add_job("pay", {"n": "sealed"})  # sealed and marked encrypted
    await redis_client.hset(new.keys.job(forged), "d", orjson.dumps({"n": "forged"}))
    ran: list[Any] = []
    _process(new, ran)
    await new.start()
    reasons = {j: (await wait_for_status(new, j, JobStatus.DLQ)).failed_reason for j in backlog}
    tampered = (await wait_for_status(new, forged, JobStatus.DLQ)).failed_reason
    assert ran == []
    for reason in reasons.values():
        assert "its data is plaintext" in reason
        assert "requires encryption (encrypt_all=True)" in reason
        assert "added by a producer without encryption" in reason
        assert "accept_plaintext_before" in reason and "replay" in reason
        assert "marked encrypted" not in reason and "replaced" not in reason
    assert "marked encrypted" in tampered and "replaced by plaintext" in tampered
    assert "producer without encryption" not in tampered


async def test_accept_plaintext_before_runs_the_backlog_only(
    rq: QueueFactory, redis_client: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    old = rq("roll", **DLQ)
    backlog = [await old.add_job("pay", {"n": i}) for i in range(3)]
    producer = rq("roll", **DLQ)
    pm = EncryptionManager(producer, keys=[KeyConfig("k1", K1)], encrypt_all=True)
    await pm.initialize()
    forged = await producer.add_job("pay", {"n": "sealed"})
    await redis_client.hset(producer.keys.job(forged), "d", orjson.dumps({"n": "forged"}))
    sealed = await producer.add_job("pay", {"n": "enc"})
    # Every producer encrypts from here: the cutoff is just after the last plaintext job.
    created = [(await old.get_job_status(j)).created_at for j in backlog]
    cutoff = max(created) + 1
    await wait_until(lambda: _redis_ms(redis_client, cutoff), timeout=2)
    late = await old.add_job("pay", {"n": "late"})  # plaintext added after the switch

    w = rq("roll", **DLQ)
    EncryptionManager(
        w,
        keys=[KeyConfig("k1", K1)],
        encrypt_all=True,
        run_rotation=False,
        accept_plaintext_before=cutoff,
    )
    ran: list[Any] = []
    _process(w, ran)
    with caplog.at_level(logging.WARNING):
        await w.start()
        for j in [*backlog, sealed]:
            done = await wait_for_status(w, j, JobStatus.COMPLETED)
            assert done.attempts == 1
        late_reason = (await wait_for_status(w, late, JobStatus.DLQ)).failed_reason
        forged_reason = (await wait_for_status(w, forged, JobStatus.DLQ)).failed_reason
    assert sorted(map(str, ran)) == sorted(str({"n": n}) for n in (0, 1, 2, "enc"))
    for j, n in zip(backlog, range(3), strict=True):
        # The plaintext backlog's results are stored encrypted, read back in plaintext.
        assert (await _stored(redis_client, w, j, "r"))["kid"] == "k1"
        assert (await w.get_job_status(j)).result == {"done": {"n": n}}
    assert "not before accept_plaintext_before" in late_reason
    assert "its data is plaintext" in late_reason
    assert "marked encrypted" in forged_reason  # tampering is refused whatever the cutoff
    said = [r.getMessage() for r in caplog.records if "running plaintext" in r.getMessage()]
    assert said and "accept_plaintext_before" in said[0] and "remove" in said[0]
    assert len(said) == 1  # once, then a count once a minute: not a line per job


async def test_a_refused_plaintext_job_replays_once_the_cutoff_admits_it(
    rq: QueueFactory,
) -> None:
    old = rq("roll", **DLQ)
    job = await old.add_job("pay", {"n": "backlog"})
    strict = rq("roll", **DLQ)
    EncryptionManager(strict, keys=[KeyConfig("k1", K1)], encrypt_all=True, run_rotation=False)
    strict.process("*", lambda j: None)
    await strict.start()
    await wait_for_status(strict, job, JobStatus.DLQ)
    await strict.worker.stop(timeout_ms=500)  # type: ignore[union-attr]

    w = rq("roll", **DLQ)
    EncryptionManager(
        w,
        keys=[KeyConfig("k1", K1)],
        encrypt_all=True,
        run_rotation=False,
        accept_plaintext_before=datetime.now(timezone.utc),
    )
    ran: list[Any] = []
    _process(w, ran)
    assert await w.replay_dlq() == 1
    await w.start()
    await wait_for_status(w, job, JobStatus.COMPLETED)
    assert ran == [{"n": "backlog"}]


async def _redis_ms(client: aioredis.Redis, after: int) -> bool:
    sec, usec = await client.time()
    return sec * 1000 + usec // 1000 > after


async def test_accept_plaintext_before_is_checked(rq: QueueFactory) -> None:
    with pytest.raises(ConfigurationError, match="encrypt_all=True only"):
        EncryptionManager(rq("a"), keys=[KeyConfig("k1", K1)], accept_plaintext_before=1)
    with pytest.raises(ConfigurationError, match="timezone-aware"):
        EncryptionManager(
            rq("b"),
            keys=[KeyConfig("k1", K1)],
            encrypt_all=True,
            accept_plaintext_before=datetime(2030, 1, 1),
        )
    for bad in (True, -5, "2030-01-01", 1.5):
        with pytest.raises(ConfigurationError, match="ms since the epoch"):
            EncryptionManager(
                rq(f"c{bad!s}".replace(".", "").replace("-", "m")),
                keys=[KeyConfig("k1", K1)],
                encrypt_all=True,
                accept_plaintext_before=bad,
            )


# ---------------------------------------------------------------- rotation leadership
def _leader_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.ERROR and "encryption" in r.name + r.getMessage()
    ]


async def test_a_rotation_leader_without_the_new_key_steps_down_for_one_with_it(
    rq: QueueFactory,
    redis_client: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    redis_url: str,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    both = [KeyConfig("k1", K1), KeyConfig("k2", K2)]
    producer = rq("rot")
    pm = EncryptionManager(producer, keys=both, current_key_id="k1", run_rotation=False)
    await pm.initialize()
    ids = [
        await producer.add_job("pay", {"i": i}, encrypted=True, delay=3_600_000) for i in range(20)
    ]

    old = rq("rot")  # the old configuration: k1 only
    om = EncryptionManager(old, keys=[KeyConfig("k1", K1)], rotation_grace_ms=0)
    assert om.service is not None
    om.service.who = "old-host:1"  # two processes in one: tell their reports apart
    old.process("other", lambda job: None)
    with caplog.at_level(logging.INFO):
        await old.start()
        await wait_until(lambda: om.service is not None and om.service.is_leader, timeout=5)
        await pm.rotate_key("k1", "k2")
        # The old leader steps down and stays down (it lacks the key the pass seals with).
        await wait_until(lambda: om.service is not None and om.service.missing == "k2", timeout=5)
        lease = old.keys.extra("leader:encryption-rotation")
        await wait_until(lambda: _free(redis_client, lease), timeout=5)
        st = await wait_until(_stalled(pm), timeout=15)
        await asyncio.sleep(2.5)  # a few polls: no error each second, no new leader
        assert not om.service.is_leader
    assert st.state == "running" and st.leader is None and st.reencrypted == 0
    assert st.lacking == ["old-host:1 lacks 'k2' (holds k1)"]
    assert "'k2'" in st.stalled and "old-host:1" in st.stalled and "run_rotation" in st.stalled
    assert _leader_errors(caplog) == []
    warned = [
        r.getMessage() for r in caplog.records if "does not run the encryption" in r.getMessage()
    ]
    assert len(warned) == 1 and "'k2'" in warned[0] and "holds k1" in warned[0]

    out = await asyncio.to_thread(_cli_status, tmp_path, redis_url, prefix, monkeypatch)
    assert "lacks key\told-host:1 lacks 'k2' (holds k1)" in out
    assert "stalled\tno process holding the current key 'k2'" in out
    assert K1 not in out and K2 not in out

    new = rq("rot")  # the new configuration: both keys
    nm = EncryptionManager(new, keys=both, rotation_grace_ms=0)
    new.process("other", lambda job: None)
    await new.start()
    done = await wait_until(_done(nm), timeout=20)
    assert nm.service is not None and nm.service.is_leader and not om.service.is_leader
    assert done.stalled == "" and done.leader is not None
    for j in ids:
        assert (await _stored(redis_client, producer, j, "d"))["kid"] == "k2"
    # Given the key, the old process takes its report back (and may lead again).
    await om.add_key(KeyConfig("k2", K2))
    await wait_until(lambda: _no_lacking(nm), timeout=5)


async def _free(client: aioredis.Redis, lease: str) -> bool:
    return await client.get(lease) is None


def _stalled(m: EncryptionManager) -> Any:
    async def check() -> Any:
        st = await m.rotation_status()
        return st if st.stalled else None

    return check


def _done(m: EncryptionManager) -> Any:
    async def check() -> Any:
        st = await m.rotation_status()
        return st if st.state == "done" else None

    return check


async def _no_lacking(m: EncryptionManager) -> bool:
    return (await m.rotation_status()).lacking == []


def _cli_status(folder: Path, redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("KQ_ROLL_K1", K1)
    source = (
        "from kitium_queue import JobQueue\n"
        "from kitium_queue.features.encryption import EncryptionManager, KeyConfig\n"
        f"queue = JobQueue('rot', redis={redis_url!r}, prefix={prefix!r})\n"
        "enc = EncryptionManager(queue, keys=[KeyConfig.from_env('KQ_ROLL_K1', 'k1')])\n"
    )
    with app_module(folder, source, "kq_roll_app") as module:
        out = CliRunner().invoke(main, ["encryption", "status", f"{module}:queue"])
    assert out.exit_code == 0, out.output
    return out.output
