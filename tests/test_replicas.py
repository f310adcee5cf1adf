"""Replica-acknowledged writes (issue 18, item 5): ``ReplicaAcks`` runs ``WAIT`` after
each enqueue and each round of outcomes, on the same connection; ``ReplicaAckError``
when fewer replicas answer in time, saying the job was written on the primary.

A primary with one replica on loopback; the replica is frozen (SIGSTOP) to make it miss
its acknowledgements. The Sentinel test SIGKILLs the primary under load while the
replication link is stalled (``_replica_loss``): acknowledged enqueues are lost without
the option, none with it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis

from _redis import RedisServer
from helpers import wait_replica_online, wait_until
from kitium_queue import (
    ConfigurationError,
    JobQueue,
    ReplicaAckError,
    ReplicaAcks,
    WriteNotConfirmedError,
)
from kitium_queue.hooks import Subscriber

pytestmark = pytest.mark.redis_only


class Pair:
    def __init__(self) -> None:
        # The primary serves the replica's full sync at once (Redis waits 5 s by default).
        self.primary = RedisServer("--repl-diskless-sync-delay", "0").start()
        self.replica = RedisServer(
            "--replicaof", "127.0.0.1", str(self.primary.port), "--repl-diskless-sync-delay", "0"
        ).start()
        wait_replica_online(self.primary.port, self.replica.port)

    def freeze(self) -> None:
        assert self.replica.pid is not None
        os.kill(self.replica.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.replica.pid is not None
        os.kill(self.replica.pid, signal.SIGCONT)

    def close(self) -> None:
        self.thaw()
        self.replica.close()
        self.primary.close()


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    p = Pair()
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
async def queue(pair: Pair, prefix: str) -> AsyncIterator[JobQueue]:
    q = JobQueue("ra", redis=pair.primary.url, prefix=prefix)
    ReplicaAcks(q, replicas=1, timeout_ms=100)
    try:
        yield q
    finally:
        pair.thaw()
        await q.close()


async def test_an_enqueue_is_acknowledged_once_a_replica_has_it(
    pair: Pair, queue: JobQueue
) -> None:
    jid = await queue.add_job("n", {"x": 1})
    # WAIT returned 1: the replica has the job now.
    rc = redis.Redis(port=pair.replica.port)
    try:
        assert rc.exists(queue.keys.job(jid)) == 1
    finally:
        rc.close()


async def test_too_few_replicas_raise_after_the_timeout_and_say_what_was_written(
    pair: Pair, queue: JobQueue
) -> None:
    with pytest.raises(ReplicaAckError) as ei:
        await queue.add_job("n", 1, job_id="needs-two", wait_replicas=2, wait_timeout_ms=50)
    err = ei.value
    assert isinstance(err, WriteNotConfirmedError)
    assert (err.replicas, err.required, err.timeout_ms) == (1, 2, 50)
    assert err.written_ids == ["needs-two"]
    assert "written on the Redis primary" in str(err) and "1 of 2 replica(s)" in str(err)
    # It was written: it is in the queue, and adding it again adds nothing.
    assert (await queue.get_job_status("needs-two")) is not None
    assert await queue.add_job("n", 1, job_id="needs-two") == "needs-two"
    assert (await queue.get_stats()).waiting == 1


async def test_a_frozen_replica_fails_enqueues_that_wait_and_not_the_others(
    pair: Pair, queue: JobQueue
) -> None:
    pair.freeze()
    t0 = time.monotonic()
    with pytest.raises(ReplicaAckError, match="0 of 1 replica"):
        await queue.add_job("n", 1)
    assert time.monotonic() - t0 >= 0.09  # it waited for the timeout
    # wait_replicas=0: this job asks for nothing.
    assert await queue.add_job("n", 2, wait_replicas=0)
    # add_job calls that share a round trip are judged each by what it asked for.
    got = await asyncio.gather(
        *(queue.add_job("n", i, wait_replicas=i % 2) for i in range(8)), return_exceptions=True
    )
    for i, g in enumerate(got):
        assert isinstance(g, ReplicaAckError) if i % 2 else isinstance(g, str), (i, g)
    assert (await queue.get_stats()).waiting == 10  # every one written


async def test_add_jobs_stops_at_the_first_chunk_not_confirmed(pair: Pair, queue: JobQueue) -> None:
    pair.freeze()
    with pytest.raises(ReplicaAckError) as ei:
        await queue.add_jobs([("n", i) for i in range(2500)])
    err = ei.value
    assert len(err.written_ids) == 1000 and err.not_sent_from == 1000
    assert sorted(err.unconfirmed) == list(range(1000))
    assert (await queue.get_stats()).waiting == 1000


async def test_outcomes_wait_too_and_report_what_was_not_confirmed(
    pair: Pair, queue: JobQueue
) -> None:
    errors: list[BaseException] = []
    finished: list[str] = []

    class Watch(Subscriber):
        def queue_error(self, queue: str, error: BaseException) -> None:
            errors.append(error)

        def finished(self, queue: str, job: Any, outcome: Any) -> None:
            finished.append(job.id)

    queue.subscribe(Watch())
    queue.process("n", lambda job: job.data)
    await queue.start(concurrency=4)
    first = await queue.add_job("n", 1)
    await wait_until(lambda: first in finished)
    assert errors == []
    pair.freeze()
    late = await queue.add_job("n", 2, wait_replicas=0)
    await wait_until(lambda: late in finished, 5)
    # Recorded on the primary, reported as not confirmed.
    assert any(isinstance(e, ReplicaAckError) and "outcome" in str(e) for e in errors), errors
    info = await queue.get_job_status(late)
    assert info is not None and info.status.value == "completed"


async def test_configuration_is_checked(pair: Pair, prefix: str) -> None:
    with pytest.raises(ConfigurationError, match="memory:// has none"):
        ReplicaAcks(JobQueue("m"))
    q = JobQueue("c", redis=pair.primary.url, prefix=prefix)
    try:
        with pytest.raises(ConfigurationError, match="wait_replicas"):
            await q.add_job("n", 1, wait_replicas=1)  # the feature is not enabled
        for bad in ({"replicas": -1}, {"replicas": 65}, {"timeout_ms": 0},
                    {"timeout_ms": 60_000}, {"outcomes": "yes"}):  # fmt: skip
            with pytest.raises(ConfigurationError):
                ReplicaAcks(q, **bad)
        acks = ReplicaAcks(q, replicas=0)
        with pytest.raises(ConfigurationError, match="wait_timeout_ms"):
            await q.add_job("n", 1, wait_replicas=1, wait_timeout_ms=float("nan"))
        assert q.write_barrier is acks
        acks.close()
        assert q.write_barrier is None
    finally:
        await q.close()


# The Sentinel failover under load (SIGKILL of the primary; acknowledged enqueues lost
# without the option, none with it) runs in the suite as the short form of the
# `replica-acks` chaos scenario (tests/test_chaos_short.py, chaos/scenarios/
# s16_replica_acks.py), with the same assertions.


def test_cli_replicas_shows_the_replicas_and_their_lag(pair: Pair, tmp_path: Any) -> None:
    import json

    from click.testing import CliRunner

    from helpers import app_module
    from kitium_queue.cli import main

    source = "from kitium_queue import JobQueue\nqueue = JobQueue('cli')\n"
    with app_module(tmp_path, source, "kq_replicas") as module:
        app = f"{module}:queue"
        out = CliRunner().invoke(main, ["replicas", app, "--redis", pair.primary.url])
        assert out.exit_code == 0, out.output
        assert "role\tmaster" in out.stdout and "connected_replicas\t1" in out.stdout
        assert f"127.0.0.1:{pair.replica.port}\tonline" in out.stdout
        got = CliRunner().invoke(main, ["replicas", app, "--json", "--redis", pair.primary.url])
        st = json.loads(got.stdout)
        assert st["role"] == "master" and st["replicas"][0]["lag_bytes"] >= 0
        # A replica is not a primary with replicas: exit 1.
        again = CliRunner().invoke(main, ["replicas", app, "--redis", pair.replica.url])
        assert again.exit_code == 1 and "role\tslave" in again.stdout
