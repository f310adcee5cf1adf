"""A key (or a chosen ``job_id``) reused with different data, against a real Redis.

By default the second add returns the first job's id and its data is dropped. With
``IdempotencyManager(queue, conflicts="raise")`` or the job option
``idempotency_conflict="raise"`` it raises ``IdempotencyConflictError`` and writes
nothing; the same data still returns the first id. Checked: ``add_job``, ``add_jobs``
(the conflicting items refused, the others added), ``SyncJobQueue.add_job`` on both of
its paths, an encrypted queue (key held, and a job under a key this process does not
hold: not compared), a compressed payload, a removed job whose key still holds, a
debounce window (not compared), a custom ``job_id``, and that a plain add or a
duplicate nobody checks reads nothing more.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

import kitium_queue.dupcheck as dupcheck
from helpers import QueueFactory
from kitium_queue import (
    ConfigurationError,
    IdempotencyConflictError,
    IdempotencyManager,
    JobQueue,
    JobRefusedError,
    SyncJobQueue,
)
from kitium_queue.blocking import BlockingScripts
from kitium_queue.features.compression import CompressionCodec
from kitium_queue.features.encryption import EncryptionManager, KeyConfig, generate_key

pytestmark = pytest.mark.redis_only

A = {"order": 7, "amount_cents": 500}
B = {"order": 7, "amount_cents": 50000}


@pytest.fixture
async def rq(redis_url: str, prefix: str) -> AsyncIterator[QueueFactory]:
    factory = QueueFactory(redis_url, prefix)
    yield factory
    await factory.aclose()


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Ids of the duplicates whose job was read for a check."""
    seen: list[str] = []
    real = dupcheck._found

    def spy(ctx: Any, job_id: str, *args: Any) -> Any:
        seen.append(job_id)
        return real(ctx, job_id, *args)

    monkeypatch.setattr(dupcheck, "_found", spy)
    return seen


async def _data(q: JobQueue, job_id: str) -> Any:
    info = await q.get_job_status(job_id)
    assert info is not None
    return info.data


async def _count(q: JobQueue) -> int:
    stats = await q.get_stats()
    return stats.waiting + stats.delayed


# ------------------------------------------------------------------ the default


async def test_by_default_a_reused_key_returns_the_first_id_and_drops_the_data(
    rq: QueueFactory, reads: list[str]
) -> None:
    plain = rq("plain")
    a = await plain.add_job("charge", A, idempotency_key="order-7")
    assert await plain.add_job("charge", B, idempotency_key="order-7") == a
    q = rq("idem")
    IdempotencyManager(q)  # conflicts="return"
    b = await q.add_job("charge", A, idempotency_key="order-7")
    assert await q.add_job("charge", B, idempotency_key="order-7") == b
    assert await q.add_job("charge", B, job_id="c-1") == "c-1"
    assert await q.add_job("charge", A, job_id="c-1") == "c-1"
    assert await _data(q, b) == A and await _data(q, "c-1") == B
    assert reads == []  # nobody asked: no duplicate was read


# ------------------------------------------------------------------ conflicts="raise"


async def test_same_data_returns_the_id_different_data_raises_and_writes_nothing(
    rq: QueueFactory, reads: list[str]
) -> None:
    q = rq("pay")
    IdempotencyManager(q, conflicts="raise")
    a = await q.add_job("charge", A, idempotency_key="order-7")
    assert reads == []  # a new job is never read
    # Same data, keys in another order: canonical JSON, the same.
    same = {"amount_cents": 500, "order": 7}
    assert await q.add_job("charge", same, idempotency_key="order-7") == a
    assert reads == [a]
    with pytest.raises(IdempotencyConflictError) as caught:
        await q.add_job("charge", B, idempotency_key="order-7")
    err = caught.value
    assert isinstance(err, JobRefusedError)
    assert (err.key, err.key_kind, err.existing_id) == ("order-7", "idempotency_key", a)
    text = str(err)
    assert "order-7" in text and f"job {a}" in text
    assert "50000" not in text and "amount" not in text  # never the data
    assert await _data(q, a) == A
    assert await _count(q) == 1
    # The job option wins over the manager: "return" gives the id back.
    assert (
        await q.add_job("charge", B, idempotency_key="order-7", idempotency_conflict="return") == a
    )
    assert await _data(q, a) == A


async def test_the_job_option_alone_asks_for_it(rq: QueueFactory, reads: list[str]) -> None:
    q = rq("opt")
    IdempotencyManager(q)
    a = await q.add_job("charge", A, idempotency_key="k")
    assert await q.add_job("charge", B, idempotency_key="k") == a
    assert reads == []
    with pytest.raises(IdempotencyConflictError):
        await q.add_job("charge", B, idempotency_key="k", idempotency_conflict="raise")
    assert await q.add_job("charge", A, idempotency_key="k", idempotency_conflict="raise") == a
    with pytest.raises(ConfigurationError, match="idempotency_conflict must be one of"):
        await q.add_job("charge", A, idempotency_key="k", idempotency_conflict="error")
    with pytest.raises(ConfigurationError, match="conflicts must be one of"):
        IdempotencyManager(rq("bad"), conflicts="strict")
    # Not stored with the job: the producer's choice, not the job's.
    info = await q.get_job_status(a)
    assert info is not None and "idempotency_conflict" not in info.options
    # A queue without the feature refuses the option.
    with pytest.raises(ConfigurationError, match="idempotency_conflict"):
        await rq("none").add_job("charge", A, idempotency_key="k", idempotency_conflict="raise")


async def test_a_custom_job_id_reused_with_other_data(rq: QueueFactory) -> None:
    q = rq("ids")
    IdempotencyManager(q, conflicts="raise")
    assert await q.add_job("charge", A, job_id="pay-1") == "pay-1"
    assert await q.add_job("charge", A, job_id="pay-1") == "pay-1"
    with pytest.raises(IdempotencyConflictError) as caught:
        await q.add_job("charge", B, job_id="pay-1")
    assert (caught.value.key_kind, caught.value.key, caught.value.existing_id) == (
        "job_id",
        "pay-1",
        "pay-1",
    )
    assert "job_id pay-1" in str(caught.value)
    assert await _data(q, "pay-1") == A


async def test_add_jobs_refuses_the_conflicting_items_and_adds_the_others(
    rq: QueueFactory,
) -> None:
    q = rq("bulk")
    IdempotencyManager(q, conflicts="raise")
    first = await q.add_jobs(
        [("charge", A, {"idempotency_key": "k1"}), ("charge", A, {"idempotency_key": "k2"})]
    )
    with pytest.raises(JobRefusedError) as caught:
        await q.add_jobs(
            [
                ("charge", B, {"idempotency_key": "k1"}),  # conflict
                ("charge", A, {"idempotency_key": "k2"}),  # same data: the id
                ("charge", B, {"idempotency_key": "k3"}),  # new
                ("charge", B, {"idempotency_key": "k2"}),  # conflict
                ("charge", B, {"idempotency_key": "k3"}),  # same call, same data: the id
            ]
        )
    err = caught.value
    assert not isinstance(err, IdempotencyConflictError)  # the call's error
    assert err.ids[0] is None and err.ids[3] is None
    assert err.ids[1] == first[1] and err.ids[2] is not None and err.ids[4] == err.ids[2]
    assert sorted(err.refused) == [0, 3]
    assert all(isinstance(e, IdempotencyConflictError) for e in err.errors.values())
    assert err.errors[0].existing_id == first[0] and err.errors[3].existing_id == first[1]
    assert await _data(q, first[0]) == A and await _data(q, first[1]) == A
    assert await _count(q) == 3


# ------------------------------------------------------------------ what is not compared


async def test_a_removed_job_whose_key_holds_is_not_compared(rq: QueueFactory) -> None:
    q = rq("gone")
    IdempotencyManager(q, conflicts="raise")
    a = await q.add_job("charge", A, idempotency_key="k")
    await q.add_job("charge", A, job_id="c-9")
    assert await q.remove_job(a) and await q.remove_job("c-9")
    # The windows hold (key and chosen id): the adds are duplicates of jobs that are gone.
    assert await q.add_job("charge", B, idempotency_key="k") == a
    assert await q.add_job("charge", B, job_id="c-9") == "c-9"
    assert await q.get_job_status(a) is None
    assert await _count(q) == 0


async def test_a_debounce_replaces_the_data_and_is_not_compared(
    rq: QueueFactory, reads: list[str]
) -> None:
    q = rq("deb")
    IdempotencyManager(q, conflicts="raise", window="debounce")
    a = await q.add_job("charge", A, idempotency_key="k", delay=60_000)
    assert await q.add_job("charge", B, idempotency_key="k", delay=60_000) == a
    assert await _data(q, a) == B
    assert reads == []  # not even read
    # The window is the job's: a ttl add with the same key is compared again.
    with pytest.raises(IdempotencyConflictError):
        await q.add_job("charge", A, idempotency_key="k", idempotency_window="ttl")


# ------------------------------------------------------------------ payload codecs and views


async def test_a_compressed_payload_is_compared_decompressed(rq: QueueFactory) -> None:
    q = rq("zip", codecs=[CompressionCodec(threshold=16)])
    IdempotencyManager(q, conflicts="raise")
    big = {"lines": ["x" * 50] * 40}
    a = await q.add_job("charge", big, idempotency_key="k")
    client = await q.client()
    stored = await client.hget(q.keys.job(a), "d")
    assert stored is not None and stored.startswith(b"\x00kqz")  # compressed in Redis
    assert await q.add_job("charge", {"lines": ["x" * 50] * 40}, idempotency_key="k") == a
    with pytest.raises(IdempotencyConflictError):
        await q.add_job("charge", {"lines": ["x" * 50] * 41}, idempotency_key="k")


async def test_an_encrypted_job_is_compared_in_plaintext_where_its_key_is_held(
    rq: QueueFactory,
) -> None:
    k1, k2 = generate_key(), generate_key()
    q = rq("enc")
    enc = EncryptionManager(q, keys=[KeyConfig("k1", k1)], run_rotation=False)
    IdempotencyManager(q, conflicts="raise")
    a = await q.add_job("charge", A, idempotency_key="k", encrypted=True)
    assert await q.add_job("charge", A, job_id="enc-1", encrypted=True) == "enc-1"
    client = await q.client()
    assert b"amount_cents" not in (await client.hget(q.keys.job(a), "d") or b"")  # sealed
    # A fresh ciphertext of the same data (a new nonce): the same.
    assert await q.add_job("charge", dict(A), idempotency_key="k", encrypted=True) == a
    assert await q.add_job("charge", dict(A), job_id="enc-1", encrypted=True) == "enc-1"
    with pytest.raises(IdempotencyConflictError):
        await q.add_job("charge", B, idempotency_key="k", encrypted=True)
    with pytest.raises(IdempotencyConflictError):
        await q.add_job("charge", B, job_id="enc-1", encrypted=True)
    # The same data in plaintext (encrypted=False) is the same data too.
    assert await q.add_job("charge", A, idempotency_key="k") == a
    # The queue moves to a new key; a process holding only that one cannot open the
    # job sealed under the old key: not compared, the existing id as before.
    await enc.add_key(KeyConfig("k2", k2))
    await enc.rotate_key("k1", "k2")
    other = rq("enc")
    EncryptionManager(other, keys=[KeyConfig("k2", k2)], run_rotation=False)
    IdempotencyManager(other, conflicts="raise")
    assert await other.add_job("charge", B, idempotency_key="k", encrypted=True) == a
    # Where both keys are held, the same add is a conflict.
    with pytest.raises(IdempotencyConflictError):
        await q.add_job("charge", B, idempotency_key="k", encrypted=True)
    assert await _data(q, a) == A


# ------------------------------------------------------------------ the blocking client


@pytest.fixture
def direct_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the scripts run from the caller's thread (``BlockingScripts``)."""
    calls: list[str] = []
    real = BlockingScripts.call

    def spy(self: BlockingScripts, name: str, keys: Any, args: Any, registry: Any = None) -> Any:
        calls.append(name)
        return real(self, name, keys, args, registry)

    monkeypatch.setattr(BlockingScripts, "call", spy)
    return calls


@pytest.fixture
def sync_queue(redis_url: str, prefix: str) -> Iterator[SyncJobQueue]:
    q = SyncJobQueue("sync", redis=redis_url, prefix=prefix)
    try:
        yield q
    finally:
        q.close()


def test_sync_add_job_and_add_jobs_raise_the_same(
    sync_queue: SyncJobQueue, direct_calls: list[str]
) -> None:
    IdempotencyManager(sync_queue.queue, conflicts="raise")
    a = sync_queue.add_job("charge", A, idempotency_key="k")
    assert sync_queue.add_job("charge", A, idempotency_key="k") == a
    with pytest.raises(IdempotencyConflictError) as caught:
        sync_queue.add_job("charge", B, idempotency_key="k")
    assert caught.value.existing_id == a
    with pytest.raises(JobRefusedError) as bulk:
        sync_queue.add_jobs([("charge", B, {"idempotency_key": "k"}), ("charge", B)])
    assert bulk.value.ids[0] is None and bulk.value.ids[1] is not None
    assert isinstance(bulk.value.errors[0], IdempotencyConflictError)
    # The feature's enqueue middleware keeps these adds on the loop thread.
    assert direct_calls == []


def test_sync_add_job_from_the_callers_thread_checks_too(
    sync_queue: SyncJobQueue, direct_calls: list[str], reads: list[str]
) -> None:
    q = sync_queue.queue
    IdempotencyManager(q, conflicts="raise")
    # Without the feature's enqueue middleware (it changes nothing for these adds: the
    # default window, no exactly-once), add_job runs in the caller's thread; the
    # duplicate check is the hook's, there too.
    q.enqueue_middleware.clear()
    a = sync_queue.add_job("charge", A, idempotency_key="k")
    assert reads == []
    assert sync_queue.add_job("charge", dict(A), idempotency_key="k") == a
    with pytest.raises(IdempotencyConflictError) as caught:
        sync_queue.add_job("charge", B, idempotency_key="k")
    assert (caught.value.key, caught.value.existing_id) == ("k", a)
    assert sync_queue.add_job("charge", B, idempotency_key="k", idempotency_conflict="return") == a
    assert sync_queue.add_job("charge", A, job_id="s-1") == "s-1"
    with pytest.raises(IdempotencyConflictError) as by_id:
        sync_queue.add_job("charge", B, job_id="s-1")
    assert by_id.value.key_kind == "job_id"
    assert direct_calls.count("enqueue") == 6
    assert reads == [a, a, "s-1"]
    info = sync_queue.get_job_status(a)
    assert info is not None and info.data == A
    assert sync_queue.get_stats().waiting == 2


# ------------------------------------------------------------------ a read that fails


async def test_a_failed_read_is_raised_when_the_call_wrote_nothing(
    rq: QueueFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = rq("lost")
    IdempotencyManager(q, conflicts="raise")
    a = await q.add_job("charge", A, idempotency_key="k")
    client = await q.client()

    async def lost(*args: Any) -> Any:
        raise ConnectionError("connection lost")

    monkeypatch.setattr(client, "hmget", lost)
    with pytest.raises(ConnectionError, match="connection lost"):
        await q.add_job("charge", A, idempotency_key="k")

    class LostPipeline:
        def __init__(self) -> None:
            self.n = 0

        def hmget(self, *args: Any) -> None:
            self.n += 1

        async def execute(self, raise_on_error: bool = True) -> Any:
            raise ConnectionError("connection lost")

    monkeypatch.setattr(client, "pipeline", lambda transaction=True: LostPipeline())
    # Another job of the call was written: the unchecked ones are refused, it stands.
    with pytest.raises(JobRefusedError) as caught:
        await q.add_jobs(
            [
                ("charge", A, {"idempotency_key": "k"}),
                ("charge", A, {"idempotency_key": "new"}),
                ("charge", B, {"idempotency_key": "k"}),
            ]
        )
    err = caught.value
    assert err.ids[0] is None and err.ids[2] is None and err.ids[1] is not None
    assert "could not be read" in err.refused[0] and f"job {a}" in err.refused[0]
    assert await _count(q) == 2
