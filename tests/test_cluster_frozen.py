"""A Redis Cluster node that stops answering without closing its connections (its
process frozen with SIGSTOP, as a paused VM or container is): every call whose command
goes to that node gives up within its deadline with a clear error, and works again after
the thaw without a new process. Plain reads, asyncio and ``SyncJobQueue`` alike; on
connections opened while the node is frozen, and on a node the client reaches through a
``MOVED`` or ``ASK`` redirection; pipelines and transactions; a client built from the
URL or passed in. A blocking wait (a worker's ``BZPOPMIN``) keeps its own wait on top.
And a primary that stays frozen is left for its replica once that has taken over.

A private three-master cluster (no replicas, and a node timeout longer than any freeze
here, so no node is marked failed) is shared by the tests; deadlines are shortened to
``DEADLINE_S``, and each frozen node is thawed before the test ends.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from redis.asyncio.cluster import ClusterNode, RedisCluster

from _cluster import LocalCluster, key_slot
from _redis import RedisServer, frozen, thaw
from kitium_queue import ConnectionUnavailableError, JobQueue, SyncJobQueue
from kitium_queue.connerrors import ReplyTimeoutError

pytestmark = pytest.mark.redis_only

DEADLINE_S = 1.0
#: Longer than any bound under test: a call still waiting then waits for ever.
HUNG_S = 20.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(masters=3, replicas=0, node_timeout_ms=60_000) as c:
        yield c


@pytest.fixture(autouse=True)
def short_deadlines(monkeypatch: pytest.MonkeyPatch, cluster: LocalCluster) -> Iterator[None]:
    monkeypatch.setattr("kitium_queue.connerrors.REPLY_DEADLINE_S", DEADLINE_S)
    monkeypatch.setattr("kitium_queue.scripts.REPLY_TIMEOUT_S", DEADLINE_S)
    monkeypatch.setattr("kitium_queue.sync.REPLY_TIMEOUT_S", DEADLINE_S)
    monkeypatch.setattr("kitium_queue.context.CONNECT_TIMEOUT_S", DEADLINE_S)
    monkeypatch.setattr("kitium_queue.queries.CONNECT_TIMEOUT_S", DEADLINE_S)
    try:
        yield
    finally:
        for node in cluster.nodes:
            thaw(node)


def _home(cluster: LocalCluster, q: JobQueue) -> RedisServer:
    """The master that holds the queue's hash slot."""
    return cluster.master_for_key(q.keys.marker)


def _key(q: JobQueue, what: str) -> str:
    """A key of no use to the queue, in its hash slot."""
    return f"cfz-test:{{{q.name}}}:{what}"


async def _warm(q: JobQueue, n: int = 4) -> None:
    """Open ``n`` connections to the queue's node and leave them idle: the calls made
    while it is frozen then use open ones, and new ones beyond."""
    client = await q.client()
    await asyncio.gather(*(client.get(_key(q, "warm")) for _ in range(n)))


def _clear(name: str, exc: BaseException | None) -> None:
    """``exc`` is the library's connection error, saying the call may have run."""
    assert isinstance(exc, ConnectionUnavailableError), (name, repr(exc))
    assert "may not have run" in str(exc), (name, str(exc))


# ------------------------------------------------------------------ plain reads
async def test_every_read_on_a_frozen_node_gives_up_then_works_after_the_thaw(
    cluster: LocalCluster,
) -> None:
    q = JobQueue("cfz-reads", redis=cluster.url, dlq={"enabled": True})
    try:
        job = await q.add_job("t", {"a": 1})
        await q.schedule_every("t", {}, 60_000, schedule_id="s1")
        await _warm(q)
        calls: dict[str, Any] = {
            "get_job_status": lambda: q.get_job_status(job),
            "get_job_detail": lambda: q.get_job_detail(job),
            "get_job_logs": lambda: q.get_job_logs(job),
            "get_jobs_by_status": lambda: q.get_jobs_by_status("waiting"),
            "list_jobs": lambda: q.list_jobs("waiting"),
            "get_dlq_jobs": lambda: q.get_dlq_jobs(),
            "get_schedules": lambda: q.get_schedules(),
            "get_schedule": lambda: q.get_schedule("s1"),
            "update_schedule": lambda: q.update_schedule("s1", interval_ms=30_000),
            "schedule_every": lambda: q.schedule_every("t", {}, 90_000, schedule_id="s2"),
            # Scripts: on a Cluster they go through redis-py's pipeline, whose
            # connections now keep the deadline too (unbounded before).
            "add_job": lambda: q.add_job("t", {"b": 2}),
            "get_stats": lambda: q.get_stats(),
            "pause": lambda: q.pause(),
        }
        # More calls at once than connections open: the others open theirs on the
        # frozen node (the handshake gets the deadline too).
        with frozen(_home(cluster, q)):
            got = await asyncio.wait_for(
                asyncio.gather(*(fn() for fn in calls.values()), return_exceptions=True),
                HUNG_S,
            )
        for name, outcome in zip(calls, got, strict=True):
            _clear(name, outcome)
        # After the thaw, the same process and client work again.
        for fn in calls.values():
            await asyncio.wait_for(fn(), HUNG_S)
        assert (await q.get_job_status(job)) is not None
    finally:
        await q.close()


async def test_pipelines_and_transactions_on_a_frozen_node_give_up(
    cluster: LocalCluster,
) -> None:
    q = JobQueue("cfz-pipes", redis=cluster.url)
    try:
        client = await q.client()
        await client.set(_key(q, "a"), "1")
        for transaction in (False, True):
            pipe = client.pipeline(transaction=transaction)
            pipe.get(_key(q, "a")).incr(_key(q, "b")).get(_key(q, "c"))
            with frozen(_home(cluster, q)), pytest.raises(ConnectionUnavailableError) as cut:
                await asyncio.wait_for(pipe.execute(), HUNG_S)
            _clear(f"pipeline(transaction={transaction})", cut.value)
            pipe = client.pipeline(transaction=transaction)
            got = await asyncio.wait_for(pipe.get(_key(q, "a")).get(_key(q, "c")).execute(), 5)
            assert got == [b"1", None]
    finally:
        await q.close()


# ------------------------------------------------------------------ redirections
def _node_id(cluster: LocalCluster, node: RedisServer) -> str:
    c = cluster.client(node)
    try:
        return str(c.execute_command("CLUSTER", "MYID"), "utf-8")
    finally:
        c.close()


def _run(cluster: LocalCluster, node: RedisServer, *args: Any) -> Any:
    c = cluster.client(node)
    try:
        return c.execute_command(*args)
    finally:
        c.close()


def _redirections(cluster: LocalCluster, node: RedisServer, kind: str) -> int:
    """How many ``kind`` (``ASK``, ``MOVED``) redirections ``node`` has answered."""
    entry = cluster.info(node, "errorstats").get(f"errorstat_{kind}")
    return int(entry.get("count", 0)) if isinstance(entry, dict) else 0


async def test_a_read_redirected_to_a_frozen_node_gives_up(cluster: LocalCluster) -> None:
    """``ASK`` (the slot half-way to another node, the key already there) and then
    ``MOVED`` (the slot moved while the client still knows the old owner): each sends
    the read to a node the client has no connection to yet, frozen."""
    q = JobQueue("cfz-moved", redis=cluster.url)
    try:
        job = await q.add_job("t", {"a": 1})
        assert await q.get_job_status(job) is not None  # the client knows the slot's owner
        slot = key_slot(q.keys.marker)
        src = _home(cluster, q)
        dst = next(m for m in cluster.masters() if m is not src)
        src_id, dst_id = _node_id(cluster, src), _node_id(cluster, dst)
        _run(cluster, dst, "CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        _run(cluster, src, "CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        keys = _run(cluster, src, "CLUSTER", "GETKEYSINSLOT", slot, 1000)
        _run(cluster, src, "MIGRATE", "127.0.0.1", dst.port, "", 0, 5000, "KEYS", *keys)
        try:
            asks = _redirections(cluster, src, "ASK")
            with frozen(dst), pytest.raises(ConnectionUnavailableError) as asked:
                await asyncio.wait_for(q.get_job_status(job), HUNG_S)  # ASK, then ASKING
            _clear("ASK", asked.value)
            assert _redirections(cluster, src, "ASK") > asks
            assert await asyncio.wait_for(q.get_job_status(job), 5) is not None
        finally:  # the slot's keys are all on dst: the slot is dst's
            for node in (dst, src, *(m for m in cluster.masters() if m not in (src, dst))):
                _run(cluster, node, "CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        moves = _redirections(cluster, src, "MOVED")
        with frozen(dst), pytest.raises(ConnectionUnavailableError) as moved:
            await asyncio.wait_for(q.get_job_detail(job), HUNG_S)  # MOVED
        _clear("MOVED", moved.value)
        assert _redirections(cluster, src, "MOVED") > moves
        assert (await asyncio.wait_for(q.get_job_detail(job), 5)).id == job
        assert _home(cluster, q) is dst
    finally:
        await q.close()


# ------------------------------------------------------------------ blocking waits
async def test_a_blocking_wait_keeps_its_wait_and_is_bounded_beyond_it(
    cluster: LocalCluster,
) -> None:
    q = JobQueue("cfz-block", redis=cluster.url)
    blocking = q.connection.client(blocking=True)
    try:
        key = _key(q, "nothing")
        # Longer than the deadline: not cut.
        assert await blocking.bzpopmin(key, timeout=DEADLINE_S * 2.5) is None
        with frozen(_home(cluster, q)), pytest.raises(ConnectionUnavailableError) as cut:
            await asyncio.wait_for(blocking.bzpopmin(key, timeout=DEADLINE_S), HUNG_S)
        _clear("BZPOPMIN", cut.value)
        assert await blocking.bzpopmin(key, timeout=0.1) is None
    finally:
        await blocking.aclose()
        await q.close()


async def test_an_idle_workers_wait_is_not_cut(
    cluster: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    q = JobQueue("cfz-idle", redis=cluster.url)
    done = asyncio.Event()

    @q.process("t")
    async def t(job: Any) -> None:
        done.set()

    try:
        with caplog.at_level(logging.WARNING, logger="kitium_queue"):
            await q.start(concurrency=2)
            await asyncio.sleep(6.5)  # its BZPOPMIN waits 5 s at a time, past the deadline
            await q.add_job("t")
            await asyncio.wait_for(done.wait(), 5)
        # The library's own warnings: a redis-py object of another test's cluster
        # collected meanwhile ("Unclosed ClusterNode object") is not this wait's.
        said = [
            r.getMessage()
            for r in caplog.records
            if r.levelno >= logging.WARNING and r.name.startswith("kitium_queue")
        ]
        assert not said, said
    finally:
        await q.close()


# ------------------------------------------------------------------ SyncJobQueue
def test_sync_calls_on_a_frozen_node_give_up(cluster: LocalCluster) -> None:
    q = SyncJobQueue("cfz-sync", redis=cluster.url)
    outcome: dict[str, BaseException | None] = {}

    def call(name: str, fn: Any) -> None:
        try:
            fn()
            outcome[name] = None
        except BaseException as exc:
            outcome[name] = exc

    try:
        job = q.add_job("t", {"a": 1})
        q._call(_warm(q.queue))
        calls = {
            "get_job_status": lambda: q.get_job_status(job),
            "get_job_detail": lambda: q.get_job_detail(job),
            "get_jobs_by_status": lambda: q.get_jobs_by_status("waiting"),
            "add_job": lambda: q.add_job("t", {"a": 2}),
        }
        with frozen(_home(cluster, q.queue)):
            threads = [
                threading.Thread(target=call, args=item, daemon=True) for item in calls.items()
            ]
            for th in threads:
                th.start()
            for th in threads:
                th.join(HUNG_S)
            assert not any(th.is_alive() for th in threads), "a call waited as long as Redis"
        for name in calls:  # add_job as well: no blocking connection on a Cluster
            _clear(name, outcome[name])
        assert q.get_job_status(job) is not None  # the same client, after the thaw
        assert q.add_job("t", {"a": 3})
    finally:
        q.close()


# ------------------------------------------------------------------ a client passed in
async def test_the_deadline_covers_a_cluster_client_passed_in(cluster: LocalCluster) -> None:
    # Without a socket_timeout (redis-py's own bound, 5 s by default for a Cluster).
    seed = cluster.nodes[0]
    client = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", seed.port)], socket_timeout=None)
    q = JobQueue("cfz-given", redis=client)
    blocking: Any = None
    try:
        job = await q.add_job("t", {})
        blocking = q.connection.client(blocking=True)  # as a worker's, of the nodes known
        assert await blocking.bzpopmin(_key(q, "x"), timeout=0.1) is None
        home = _home(cluster, q)
        with frozen(home), pytest.raises(ConnectionUnavailableError) as cut:
            await asyncio.wait_for(q.get_job_status(job), HUNG_S)
        _clear("get_job_status", cut.value)
        with frozen(home), pytest.raises(ConnectionUnavailableError) as held:
            await asyncio.wait_for(blocking.bzpopmin(_key(q, "x"), timeout=DEADLINE_S), HUNG_S)
        _clear("BZPOPMIN", held.value)
        assert await q.get_job_status(job) is not None
    finally:
        if blocking is not None:
            await blocking.aclose()
        await q.close()
        await client.aclose()


async def test_reply_timeout_error_is_what_a_frozen_node_raises(cluster: LocalCluster) -> None:
    q = JobQueue("cfz-type", redis=cluster.url)
    try:
        client = await q.client()
        await client.get(_key(q, "a"))
        with frozen(_home(cluster, q)), pytest.raises(ReplyTimeoutError):
            await asyncio.wait_for(client.get(_key(q, "a")), HUNG_S)
        assert await client.get(_key(q, "a")) is None
    finally:
        await q.close()


# ------------------------------------------------------------------ a failover
@pytest.mark.skipif(
    not hasattr(RedisCluster, "_request_refresh"),
    reason="redis-py 8.1 has no safe way to ask for a refresh (clusterreplies.py)",
)
async def test_a_frozen_primary_replaced_by_its_replica_is_left_after_one_deadline() -> None:
    """A cut asks the client for a topology refresh: once the replica has taken over
    (the cluster's node timeout, 1 s here), the next call reaches it although the old
    primary is still frozen. Without the refresh every call went on to the old one."""
    with LocalCluster(masters=3, replicas=1, node_timeout_ms=1000) as cluster:
        q = JobQueue("cfz-failover", redis=cluster.url)
        try:
            job = await q.add_job("t", {"a": 1})
            home = _home(cluster, q)
            admin = cluster.client(home)
            try:
                assert admin.wait(1, 5000) == 1  # the replica has the job
            finally:
                admin.close()
            outcomes: list[str] = []
            with frozen(home):
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    try:
                        found = await asyncio.wait_for(q.get_job_status(job), HUNG_S)
                    except ConnectionUnavailableError as exc:
                        _clear("get_job_status", exc)
                        outcomes.append(type(exc).__name__)
                        await asyncio.sleep(0.2)
                        continue
                    assert found is not None
                    assert await asyncio.wait_for(q.add_job("t", {"a": 2}), HUNG_S)
                    break
                else:
                    raise AssertionError(f"still on the frozen primary: {outcomes}")
        finally:
            await q.close()
