"""Review of replica-acknowledged writes (``ReplicaAcks``, docs/replicas.md): what a
demanding user hits.

* A Redis Cluster queue was accepted (the docs said refused) and acknowledged writes its
  shard's replica never got: redis-py sends ``WAIT`` to every primary and adds up the
  answers, so the replicas of the other shards confirmed it.
* A duplicate ``idempotency_key`` add writes nothing; on Redis 7.2+ and Valkey ``WAIT``
  waits for the connection's last *write*, so the retry the error message advises (or a
  second producer) was acknowledged while no replica had the job, and a failover lost
  it. ``ReplicaAcks`` now rewrites the record a duplicate finds (same value, same
  expiry) so the call writes and its ``WAIT`` covers the job. On Redis 7.0 (which takes
  every command's offset) the retry was refused already; the write itself is what
  these tests can see on any version.
* ``add_jobs``' error said "the job was written" for a call that wrote 1,000 jobs and
  sent none of the next 1,500, and a single job's error did not name the job.
* ``timeout_ms`` longer than the window in which a worker starts the jobs it claimed:
  a round's ``WAIT`` delays its claim's reply, and with a lagging replica the claimed
  jobs' leases ran out before they started (stalls, recoveries). Now refused.
* ``kitium-queue replicas`` exited 1 on a primary without replicas, or on a replica,
  without saying why.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis
from redis.asyncio.cluster import RedisCluster

import test_replicas
from _redis import RedisServer
from kitium_queue import ConfigurationError, JobQueue, ReplicaAckError, ReplicaAcks
from test_replicas import Pair

pytestmark = pytest.mark.redis_only


#: test_replicas' fixtures: its primary and replica, and a queue "ra" on them.
pair, queue = test_replicas.pair, test_replicas.queue


def _changes(port: int) -> int:
    """The server's count of writes since its last save (reads do not count)."""
    c = redis.Redis(port=port)
    try:
        return int(c.info("persistence")["rdb_changes_since_last_save"])
    finally:
        c.close()


async def test_cluster_queues_are_refused(pair: Pair) -> None:
    seeds = f"127.0.0.1:{pair.primary.port}"
    forms: list[Any] = [
        f"redis+cluster://{seeds}",
        {"cluster": True, "startup_nodes": [seeds]},
        RedisCluster(host="127.0.0.1", port=pair.primary.port),
    ]
    for form in forms:
        q = JobQueue("c58", redis=form)
        try:
            with pytest.raises(ConfigurationError, match="not available on Redis Cluster"):
                ReplicaAcks(q, replicas=1)
            assert q.write_barrier is None
        finally:
            await q.close()
    await forms[2].aclose()


async def test_a_duplicate_idempotency_key_is_confirmed_only_once_replicas_have_its_job(
    pair: Pair, queue: JobQueue, prefix: str
) -> None:
    pair.freeze()
    with pytest.raises(ReplicaAckError) as first:
        await queue.add_job("charge", {"order": 7}, idempotency_key="order-7")
    jid = first.value.written_ids[0]
    # Another producer (its own connections) retries, as the error advises: the job is
    # there, no replica has it, so the retry is not confirmed either.
    other = JobQueue("ra", redis=pair.primary.url, prefix=prefix)
    ReplicaAcks(other, replicas=1, timeout_ms=100)
    try:
        await other.get_stats()  # connected: what follows counts the add alone
        before = _changes(pair.primary.port)
        with pytest.raises(ReplicaAckError) as again:
            await other.add_job("charge", {"order": 7}, idempotency_key="order-7")
        assert again.value.written_ids == [jid]
        # The duplicate wrote (the record again, as it was): on Redis 7.2+ and Valkey
        # that write is what makes WAIT cover the job it found.
        assert _changes(pair.primary.port) > before
        pair.thaw()
        assert await other.add_job("charge", {"order": 7}, idempotency_key="order-7") == jid
        rc = redis.Redis(port=pair.primary.port)
        try:
            key = queue.keys.idempotency("order-7")
            assert rc.get(key) == jid.encode()
            assert 0 < rc.pttl(key) <= 86_400_000  # its expiry kept
        finally:
            rc.close()
        assert (await queue.get_stats()).waiting == 1
    finally:
        await other.close()


async def test_errors_say_what_was_written_and_what_was_not(pair: Pair, queue: JobQueue) -> None:
    pair.freeze()
    with pytest.raises(ReplicaAckError) as one:
        await queue.add_job("n", 1, job_id="needs-a-replica")
    assert "job 'needs-a-replica' was written on the Redis primary" in str(one.value)
    assert "0 of 1 replica(s) acknowledged within 100 ms" in str(one.value)

    with pytest.raises(ReplicaAckError) as big:
        await queue.add_jobs([("n", i) for i in range(1500)])
    text = str(big.value)
    assert "1000 job(s) of this call (indexes 0..999) were written" in text, text
    assert "0 other job(s) were written and confirmed" in text, text
    assert "the jobs from index 1000 on were not sent, nothing of them was written" in text

    with pytest.raises(ReplicaAckError) as mixed:
        await queue.add_jobs([("n", 1, {"wait_replicas": 0}), ("n", 2), ("n", 3)])
    text = str(mixed.value)
    assert "2 job(s) of this call (indexes 1..2) were written" in text, text
    assert "1 other job(s) were written and confirmed" in text, text
    assert "not sent" not in text
    assert str(mixed.value.unconfirmed[2]).startswith(
        f"queue 'ra': job {mixed.value.written_ids[2]!r} was written"
    )
    # A copy (the call's error is one) and a pickle keep the text.
    import copy
    import pickle

    for clone in (copy.copy(mixed.value), pickle.loads(pickle.dumps(mixed.value))):
        assert str(clone) == text


async def test_a_timeout_outlasting_the_start_of_claimed_jobs_is_refused(
    pair: Pair, prefix: str
) -> None:
    q = JobQueue("lease58", redis=pair.primary.url, prefix=prefix, settings={"lock_duration": 1000})
    try:
        with pytest.raises(ConfigurationError, match="must start within 750 ms") as ei:
            ReplicaAcks(q, replicas=1, timeout_ms=3000)
        assert "timeout_ms below 750" in str(ei.value)
        assert q.write_barrier is None
        # What does not delay the start of claimed jobs is accepted.
        for ok in ({"timeout_ms": 700}, {"timeout_ms": 3000, "outcomes": False},
                   {"replicas": 0, "timeout_ms": 3000}):  # fmt: skip
            acks = ReplicaAcks(q, **ok)
            assert q.write_barrier is acks
    finally:
        await q.close()


def test_cli_says_why_it_exits_1(pair: Pair, tmp_path: Any) -> None:
    from click.testing import CliRunner

    from helpers import app_module
    from kitium_queue.cli import main

    alone = RedisServer().start()
    try:
        source = "from kitium_queue import JobQueue\nqueue = JobQueue('cli58')\n"
        with app_module(tmp_path, source, "kq_replicas58") as module:
            app = f"{module}:queue"
            got = CliRunner().invoke(main, ["replicas", app, "--redis", alone.url])
            assert got.exit_code == 1 and "connected_replicas\t0" in got.stdout
            assert "no replica is connected to this primary" in got.stderr, got.stderr
            got = CliRunner().invoke(main, ["replicas", app, "--redis", pair.replica.url])
            assert got.exit_code == 1
            primary = f"127.0.0.1:{pair.primary.port}"
            assert f"this server is a replica of {primary}, not the primary" in got.stderr
            got = CliRunner().invoke(main, ["replicas", app, "--redis", pair.primary.url])
            assert got.exit_code == 0 and got.stderr == "", got.stderr
    finally:
        alone.close()


async def test_a_plain_queue_is_unchanged(pair: Pair, prefix: str) -> None:
    """Without ReplicaAcks a duplicate add writes nothing (its script has no duplicate
    slot), and closing ReplicaAcks takes that slot out again."""
    q = JobQueue("plain58", redis=pair.primary.url, prefix=prefix)
    try:
        jid = await q.add_job("n", 1, idempotency_key="k")
        await asyncio.sleep(0)
        before = _changes(pair.primary.port)
        assert await q.add_job("n", 1, idempotency_key="k") == jid
        assert _changes(pair.primary.port) == before
        acks = ReplicaAcks(q, replicas=1, timeout_ms=500)
        assert "replica-acks" in q.scripts.slot_names("duplicate")
        acks.close()
        assert "replica-acks" not in q.scripts.slot_names("duplicate")
        before = _changes(pair.primary.port)
        assert await q.add_job("n", 1, idempotency_key="k") == jid
        assert _changes(pair.primary.port) == before
    finally:
        await q.close()
