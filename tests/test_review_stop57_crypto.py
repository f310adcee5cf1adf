"""Adversarial review of payload encryption and compression: a key id whose material
differs between processes (a wrong secret mounted on one worker or producer), a large
payload near the ciphertext bound, key material quoted in errors. Against a real Redis.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from helpers import QueueFactory, wait_for_status, wait_until
from kitium_queue import ConfigurationError, JobStatus
from kitium_queue.features.encryption import (
    EncryptionError,
    EncryptionManager,
    KeyConfig,
    generate_key,
)
from test_encryption_missing_key import _process

K1, K1_WRONG, K2 = generate_key(), generate_key(), generate_key()
MARK = "PLAINTEXT-MARKER-57c"


@pytest.fixture
async def rq(redis_url: str, prefix: str) -> AsyncIterator[QueueFactory]:
    factory = QueueFactory(redis_url, prefix)
    yield factory
    await factory.aclose()


def _no_key_in(text: str, *keys: str) -> None:
    for k in keys:
        raw = base64.b64decode(k)
        assert k not in text and raw.hex() not in text and repr(raw) not in text


async def test_a_worker_holding_other_material_under_the_key_id_does_not_dead_letter(
    rq: QueueFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """One worker mounted the wrong secret for key id k1: it must not dead-letter the
    queue's jobs as 'tampered'; it defers them (no attempt spent) for a worker holding
    the right key, and says what is wrong."""
    q = rq("wrongw")
    m = EncryptionManager(q, keys=[KeyConfig("k1", K1)])
    assert await m.initialize() == "k1"
    job = await q.add_job("pay", {"v": MARK}, encrypted=True, attempts=3)

    bad = rq("wrongw", dlq={"enabled": True})
    EncryptionManager(bad, keys=[KeyConfig("k1", K1_WRONG)], run_rotation=False)
    ran_bad: list[Any] = []
    _process(bad, ran_bad)
    with caplog.at_level(logging.WARNING):
        await bad.start()
        info = await wait_for_status(bad, job, JobStatus.DELAYED, timeout=15)
        await bad.worker.stop(timeout_ms=500)  # type: ignore[union-attr]
    assert info.attempts == 0 and ran_bad == []
    said = [r.getMessage() for r in caplog.records if "k1" in r.getMessage()]
    assert any("differs" in s for s in said), said
    for r in caplog.records:
        assert MARK not in r.getMessage()
        _no_key_in(r.getMessage(), K1, K1_WRONG)

    good = rq("wrongw")
    EncryptionManager(good, keys=[KeyConfig("k1", K1)], run_rotation=False)
    ran: list[Any] = []
    _process(good, ran)
    await good.start()
    done = await wait_for_status(good, job, JobStatus.COMPLETED, timeout=20)
    assert ran == [{"v": MARK}] and done.attempts == 1


async def test_a_producer_holding_other_material_under_the_key_id_refuses_to_seal(
    rq: QueueFactory,
) -> None:
    """A producer with the wrong secret for the current key id must not store jobs
    every correct worker would dead-letter as tampered."""
    q = rq("wrongp")
    m = EncryptionManager(q, keys=[KeyConfig("k1", K1)])
    await m.initialize()
    p = rq("wrongp")
    pm = EncryptionManager(p, keys=[KeyConfig("k1", K1_WRONG)], run_rotation=False)
    with pytest.raises((ConfigurationError, EncryptionError), match="other material") as got:
        await pm.initialize()
    _no_key_in(str(got.value), K1, K1_WRONG)
    with pytest.raises(EncryptionError, match="other material"):
        await p.add_job("pay", {"v": MARK}, encrypted=True)
    assert (await q.get_stats()).waiting == 0


async def test_a_payload_the_queue_accepts_opens_however_large_its_ciphertext(
    rq: QueueFactory,
) -> None:
    """A queue configured for large payloads (max_payload_bytes above 64 MiB) stored a
    ~49 MiB encrypted payload whose ciphertext the worker then refused to open ('too
    large') and dead-lettered: what seal accepts, open must take."""
    q = rq("big", max_payload_bytes=80 * 1024 * 1024, dlq={"enabled": True})
    m = EncryptionManager(q, keys=[KeyConfig("k1", K1)])
    await m.initialize()
    blob = "x" * (49 * 1024 * 1024)
    job = await q.add_job("big", {"blob": blob}, encrypted=True, attempts=1)
    sizes: list[int] = []

    @q.process("big")
    async def big(job: Any) -> int:
        sizes.append(len(job.data["blob"]))
        return 1

    await q.start()

    async def ended() -> bool:
        st = await q.get_stats()
        return st.completed + st.dlq > 0

    await wait_until(ended, timeout=90, interval=0.2)
    info = await q.get_job_status(job)
    assert info is not None
    assert info.status is JobStatus.COMPLETED, info.failed_reason
    assert sizes == [len(blob)]


def test_a_swapped_key_id_and_key_are_not_quoted_in_the_error() -> None:
    """KeyConfig(key, key_id) by mistake: the error about the bad key id must not print
    the key itself (it goes to logs and tracebacks)."""
    from kitium_queue.features.encryption.crypto import KeyRing

    for swapped in (K1, K1.encode(), base64.urlsafe_b64encode(base64.b64decode(K1)).decode()):
        with pytest.raises(ConfigurationError, match="key_id") as got:
            KeyRing().add(KeyConfig(swapped, "k1"))  # type: ignore[arg-type]
        _no_key_in(str(got.value), K1)
        assert base64.urlsafe_b64encode(base64.b64decode(K1)).decode() not in str(got.value)
    with pytest.raises(ConfigurationError, match="'bad id!'"):
        KeyRing().add(KeyConfig("bad id!", K1))  # other bad ids are still quoted
