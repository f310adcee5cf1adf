"""A key (or a chosen ``job_id``) reused with different data, against a real Redis.

By default the second add returns the first job's id and its data is dropped. With
``IdempotencyManager(queue, conflicts="raise")`` or the job option
``idempotency_conflict="raise"`` it raises ``IdempotencyConflictError`` and writes
nothing; the same data still returns the first id. Checked: ``add_job``, ``add_jobs``
(the conflicting items refused, the others added), ``SyncJobQueue.add_job`` on both of
its paths, an encrypted queue (key held, and a job under a key this process does not
hold: not compared), a compressed payload, a removed job whose key still holds, a
debounce window (not compared), a custom ``job_id``, and that a plain add or a
duplicate nobody checks reads nothing more. A read that fails: raised when every job of
the call with an id was being checked, else only the checked items are refused (an
error reply such as NOPERM is such a failure; only WRONGTYPE is the record's damage);
a check that raises refuses its add; a write barrier's unconfirmed jobs leave out a
refused one; an option set to None leaves the default.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import redis as redis_sync
from redis.exceptions import NoPermissionError

import kitium_queue.dupcheck as dupcheck
from _redis import RedisServer
from helpers import QueueFactory
from kitium_queue import (
    ConfigurationError,
    IdempotencyConflictError,
    IdempotencyManager,
    JobQueue,
    JobRefusedError,
    ReplicaAckError,
    ReplicaAcks,
    SyncJobQueue,
)
from kitium_queue.blocking import BlockingScripts
from kitium_queue.features.compression import CompressionCodec
from kitium_queue.features.encryption import EncryptionManager, KeyConfig, generate_key
from kitium_queue.hooks import DuplicateCheck, FoundDuplicate, Subscriber
from kitium_queue.producer import Producer

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


# ------------------------------------------------------------------ error replies of the read

PASSWORD = f"kq-dup-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def acl_server() -> Iterator[RedisServer]:
    """A server of its own, for a user whose right to HMGET (the duplicate check's
    read) is taken away once the producer's first add has passed its rights check."""
    srv = RedisServer().start()
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture
def acl_user(acl_server: RedisServer) -> Iterator[tuple[str, Callable[[], None]]]:
    """(the user's URL, a function taking HMGET away from it)."""
    admin = redis_sync.Redis(host="127.0.0.1", port=acl_server.port)
    name = f"u{uuid.uuid4().hex[:8]}"
    admin.execute_command("ACL", "SETUSER", name, "on", f">{PASSWORD}", "~*", "&*", "+@all")

    def take_hmget() -> None:
        admin.execute_command("ACL", "SETUSER", name, "-hmget")

    try:
        yield f"redis://{name}:{PASSWORD}@127.0.0.1:{acl_server.port}/0", take_hmget
    finally:
        admin.execute_command("ACL", "DELUSER", name)
        admin.close()


async def test_an_error_reply_of_the_read_is_raised_not_taken_for_an_unreadable_record(
    acl_user: tuple[str, Callable[[], None]], prefix: str
) -> None:
    """A NOPERM (like BUSY, CLUSTERDOWN, MASTERDOWN, TRYAGAIN) says nothing of the
    record: the conflicting add is not let through with the existing id."""
    url, take_hmget = acl_user
    q = JobQueue("acl", redis=url, prefix=prefix)
    try:
        IdempotencyManager(q, conflicts="raise")
        a = await q.add_job("charge", A, idempotency_key="k")
        take_hmget()  # the enqueue script's own HMGET is for a job it writes to wait
        with pytest.raises(NoPermissionError):
            await q.add_job("charge", B, idempotency_key="k")
        with pytest.raises(NoPermissionError):  # the same data: not known either
            await q.add_job("charge", A, idempotency_key="k")
        # A call that wrote another job (delayed: no HMGET in the script): the
        # unchecked item is refused, the other stands.
        with pytest.raises(JobRefusedError) as caught:
            await q.add_jobs(
                [
                    ("charge", B, {"idempotency_key": "k"}),
                    ("charge", A, {"idempotency_key": "n", "delay": 60_000}),
                ]
            )
        err = caught.value
        assert err.ids[0] is None and err.ids[1] not in (None, a)
        assert "could not be read" in err.refused[0] and "NoPermissionError" in err.refused[0]
        assert PASSWORD not in str(err)
        assert await _data(q, a) == A
        assert await _count(q) == 2
    finally:
        await q.close()


def test_an_error_reply_of_the_read_is_raised_from_the_callers_thread_too(
    acl_user: tuple[str, Callable[[], None]], prefix: str, direct_calls: list[str]
) -> None:
    url, take_hmget = acl_user
    sq = SyncJobQueue("acl-sync", redis=url, prefix=prefix)
    try:
        IdempotencyManager(sq.queue, conflicts="raise")
        sq.queue.enqueue_middleware.clear()  # add_job from the caller's thread
        a = sq.add_job("charge", A, idempotency_key="k")
        take_hmget()
        with pytest.raises(NoPermissionError):
            sq.add_job("charge", B, idempotency_key="k")
        assert direct_calls.count("enqueue") == 2
        info = sq.get_job_status(a)
        assert info is not None and info.data == A
    finally:
        sq.close()


async def test_a_job_key_of_another_type_is_not_compared(rq: QueueFactory) -> None:
    """A WRONGTYPE is the record's own damage: nothing to compare, the existing id."""
    q = rq("wrongtype")
    IdempotencyManager(q, conflicts="raise")
    a = await q.add_job("charge", A, idempotency_key="k")
    b = await q.add_job("charge", A, idempotency_key="k2")
    client = await q.client()
    await client.delete(q.keys.job(a), q.keys.job(b))
    await client.set(q.keys.job(a), "not a hash")
    await client.set(q.keys.job(b), "not a hash")
    assert await q.add_job("charge", B, idempotency_key="k") == a
    assert await q.add_jobs(
        [("charge", B, {"idempotency_key": "k"}), ("charge", B, {"idempotency_key": "k2"})]
    ) == [a, b]


# ------------------------------------------------------------------ a write barrier


async def test_with_replica_acks_a_conflict_raises_the_conflict_not_an_unconfirmed_write(
    rq: QueueFactory,
) -> None:
    """Replica acks asked for and never met (no replica): a refused duplicate wrote
    nothing, so it is refused, not reported as written but not confirmed."""
    q = rq("acks")
    ReplicaAcks(q, replicas=1, timeout_ms=20)
    IdempotencyManager(q, conflicts="raise")
    with pytest.raises(ReplicaAckError) as first:
        await q.add_job("charge", A, idempotency_key="k")
    a = first.value.written_ids[0]
    with pytest.raises(IdempotencyConflictError) as caught:
        await q.add_job("charge", B, idempotency_key="k")
    assert caught.value.existing_id == a
    with pytest.raises(ReplicaAckError) as same:  # the same data: the id, not confirmed
        await q.add_job("charge", A, idempotency_key="k")
    assert same.value.written_ids == [a]
    with pytest.raises(ReplicaAckError) as bulk:
        await q.add_jobs(
            [("charge", B, {"idempotency_key": "k"}), ("charge", A, {"idempotency_key": "n"})]
        )
    err = bulk.value
    assert sorted(err.unconfirmed) == [1]
    assert err.written_ids[0] == "" and err.written_ids[1] not in ("", a)
    assert await _data(q, a) == A


# ------------------------------------------------------------------ a check that fails


class Failing(DuplicateCheck):
    """Wants every duplicate; raises in ``where`` ("wants" or "check")."""

    def __init__(self, where: str) -> None:
        self.where = where

    def wants(self, options: Any) -> bool:
        if self.where == "wants":
            raise ValueError(f"secret-{options.get('idempotency_key')}")
        return True

    def check(self, found: FoundDuplicate) -> str | None:
        raise ValueError(f"secret-{found.data}")


class Added(Subscriber):
    def __init__(self) -> None:
        self.ids: list[str] = []

    def enqueued(self, queue: str, job_ids: Any, names: Any) -> None:
        self.ids.extend(job_ids)


@pytest.mark.parametrize("where", ["check", "wants"])
async def test_a_check_that_raises_refuses_its_add_and_the_jobs_written_are_reported(
    rq: QueueFactory, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    q = rq(f"failing-{where}")
    a = await q.add_job("charge", A, idempotency_key="k")
    q.hooks.add_duplicate_check(Failing(where))
    added = Added()
    q.subscribe(added)
    caplog.set_level(logging.WARNING, "kitium_queue")
    with pytest.raises(JobRefusedError) as one:
        await q.add_job("charge", B, idempotency_key="k")
    assert f"job {a}" in str(one.value) and "Failing" in str(one.value)
    with pytest.raises(JobRefusedError) as caught:
        await q.add_jobs(
            [("charge", A, {"idempotency_key": "n"}), ("charge", B, {"idempotency_key": "k"})]
        )
    err = caught.value
    assert err.ids[1] is None and err.ids[0] not in (None, a)
    assert added.ids == [err.ids[0]]  # the enqueued hook heard of the job written
    assert "Failing" in err.refused[1] and "ValueError" in err.refused[1]
    assert "secret" not in err.refused[1] and "secret" not in caplog.text
    assert "Failing" in caplog.text and "ValueError" in caplog.text
    assert await _count(q) == 2


# ------------------------------------------------------------------ a read that fails, others wait


async def test_a_failed_read_refuses_only_the_checked_items_when_other_duplicates_wait(
    rq: QueueFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Duplicates no check wanted get their ids; only the checked one is refused, and
    the error's text comes without credentials."""
    q = rq("lost-mixed")
    IdempotencyManager(q, conflicts="raise")
    a = await q.add_job("charge", A, idempotency_key="k")
    b = await q.add_job("charge", A, idempotency_key="k2")
    client = await q.client()

    async def lost(*args: Any) -> Any:
        raise ConnectionError("lost redis://app:hunter2-pw@10.0.0.9:6379/0")

    monkeypatch.setattr(client, "hmget", lost)
    # An add_jobs of only duplicates: one checked, one not.
    with pytest.raises(JobRefusedError) as caught:
        await q.add_jobs(
            [
                ("charge", B, {"idempotency_key": "k"}),
                ("charge", B, {"idempotency_key": "k2", "idempotency_conflict": "return"}),
            ]
        )
    err = caught.value
    assert err.ids == [None, b]
    assert "could not be read" in err.refused[0] and "ConnectionError" in err.refused[0]
    assert "hunter2" not in err.refused[0]
    # add_job calls sharing a round trip: the first goes alone, the others together.
    results = await asyncio.gather(
        q.add_job("charge", A, idempotency_key="k3"),
        q.add_job("charge", B, idempotency_key="k"),
        q.add_job("charge", B, idempotency_key="k2", idempotency_conflict="return"),
        return_exceptions=True,
    )
    assert isinstance(results[0], str)
    assert isinstance(results[1], JobRefusedError) and "hunter2" not in str(results[1])
    assert results[2] == b
    assert await _data(q, a) == A


# ------------------------------------------------------------------ options set to None


class Seen(DuplicateCheck):
    def __init__(self) -> None:
        self.options: list[dict[str, Any]] = []

    def wants(self, options: Any) -> bool:
        self.options.append(dict(options))
        return False


async def test_an_option_set_to_none_leaves_the_default_as_the_checks_see_it(
    rq: QueueFactory,
) -> None:
    q = rq("nones", default_job_options={"attempts": 7})
    seen = Seen()
    q.hooks.add_duplicate_check(seen)
    await q.add_job("charge", A, job_id="x")
    assert await q.add_job("charge", A, job_id="x", attempts=None) == "x"
    assert await q.add_jobs([("charge", A, {"job_id": "x", "attempts": None})]) == ["x"]
    info = await q.get_job_status("x")
    assert info is not None and info.options.get("attempts") == 7  # as prepare has it
    assert [o.get("attempts") for o in seen.options] == [7, 7]


# ------------------------------------------------------------------ the direct path's reader


def test_the_direct_add_job_hands_the_same_reader_every_time(
    sync_queue: SyncJobQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No function is made per direct add_job for the duplicate check's read."""
    readers: list[Any] = []
    real = Producer.add_job_blocking

    def spy(self: Producer, *args: Any) -> Any:
        readers.append(args[-1])
        return real(self, *args)

    monkeypatch.setattr(Producer, "add_job_blocking", spy)
    sync_queue.add_job("charge", A)
    sync_queue.add_job("charge", B)
    assert len(readers) == 2 and readers[0] is readers[1]
