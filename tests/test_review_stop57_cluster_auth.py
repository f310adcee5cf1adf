"""A queue on a Redis Cluster whose nodes start asking for a password (or another one)
is told so as a queue on one server is: the same ``ConnectionUnavailableError`` and
wording ("requires a password and none was given ... use <the URL form that gives
one>", or "refused the credentials ... check the username and password").

Before, a Cluster setting without a password was told that its credentials were
refused (it gave none), the worker's outage warning said the same, and a Cluster
client that had reached the cluster, closed and then refused by every node was told
that the nodes were "stopped, restarting or unreachable". One cluster serves the
module; each test puts the nodes back without a password.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from _cluster import LocalCluster
from kitium_queue import ConnectionUnavailableError, JobQueue
from kitium_queue.clusterconn import ClusterUnreachableError
from kitium_queue.connection import ConnectionFactory

NEW = "kq-s57-cluster-newpw"
WAIT_S = 30.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(masters=3, replicas=0) as c:
        yield c


def _lock(cluster: LocalCluster, *, cut: bool = True) -> None:
    """Every node asks for password ``NEW`` from now on; ``cut``: its clients closed."""
    for node in cluster.nodes:
        with redis.Redis(port=node.port, socket_timeout=5) as admin:
            admin.config_set("requirepass", NEW)
    if cut:
        for node in cluster.nodes:
            with redis.Redis(port=node.port, password=NEW, socket_timeout=5) as admin:
                admin.client_kill_filter(_type="normal", skipme=True)


def _unlock(cluster: LocalCluster) -> None:
    for node in cluster.nodes:
        admin = redis.Redis(port=node.port, password=NEW, socket_timeout=5)
        with contextlib.suppress(redis.AuthenticationError), admin:
            admin.config_set("requirepass", "")


@contextlib.contextmanager
def _locked(cluster: LocalCluster, *, cut: bool = True) -> Iterator[None]:
    _lock(cluster, cut=cut)
    try:
        yield
    finally:
        _unlock(cluster)


def _said_missing(text: str) -> None:
    assert "requires a password and none was given" in text, text
    assert "redis+cluster://:PASSWORD@host:port,host:port" in text, text
    assert "refused the credentials" not in text, text


async def test_a_cluster_setting_without_password_is_told_one_is_needed(
    cluster: LocalCluster, prefix: str
) -> None:
    with _locked(cluster, cut=False):
        q = JobQueue("nopw", redis=cluster.url, prefix=prefix)
        try:
            with pytest.raises(ConnectionUnavailableError) as info:
                await q.add_job("x", {})
        finally:
            await q.close()
        msg = str(info.value)
        _said_missing(msg)
        assert "queue 'nopw'" in msg, msg
        # A password given, and the wrong one: its credentials are refused (never shown).
        seeds = ",".join(f"127.0.0.1:{n.port}" for n in cluster.nodes)
        wrong = JobQueue("badpw", redis=f"redis+cluster://:not-it@{seeds}", prefix=prefix)
        try:
            with pytest.raises(ConnectionUnavailableError) as info:
                await wrong.get_stats()
        finally:
            await wrong.close()
        msg = str(info.value)
        assert "refused the credentials of queue 'badpw'" in msg, msg
        assert "check the username and password" in msg and "not-it" not in msg, msg


async def test_a_worker_whose_cluster_wants_a_password_says_so_once(
    cluster: LocalCluster, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="kitium_queue")
    q = JobQueue("wauth", redis=cluster.url, prefix=prefix)
    done: list[str] = []

    @q.process("n")
    async def n(job: Any) -> None:
        done.append(job.id)

    try:
        await q.start()
        first = await q.add_job("n", 1)
        deadline = time.monotonic() + WAIT_S
        while done != [first]:
            assert time.monotonic() < deadline, "the job never ran"
            await asyncio.sleep(0.1)
        with _locked(cluster):

            def said() -> list[str]:
                return [
                    r.getMessage()
                    for r in caplog.records
                    if "requires a password and none was given" in r.getMessage()
                ]

            deadline = time.monotonic() + WAIT_S
            while not said():
                assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
                await asyncio.sleep(0.1)
            await asyncio.sleep(2.5)  # the worker retries many times meanwhile
            records = [r for r in caplog.records if r.name.startswith("kitium_queue")]
            texts = [r.getMessage() for r in records]
            assert len(said()) == 1, texts
            _said_missing(said()[0])
            assert "queue 'wauth'" in said()[0], texts
            assert len([t for t in texts if "Redis unreachable" in t]) == 1, texts
            # Said once, not once per retry (a loaded machine may add unrelated lines).
            assert len(texts) == len(set(texts)), texts
            assert not [r for r in records if r.levelno >= logging.ERROR], texts
    finally:
        await q.close()


async def test_a_reached_client_refused_by_every_node_is_not_said_unreachable(
    cluster: LocalCluster,
) -> None:
    """A chain can carry the refusal: a Cluster client that reached the cluster, was
    closed and is used again maps the cluster anew, and every node refuses it: redis-py
    raises "Please provide at least one reachable node" from the AuthenticationError."""
    factory = ConnectionFactory(cluster.url)
    client = factory.client()
    try:
        assert await client.execute_command("PING")
        with _locked(cluster):
            await client.aclose()
            with pytest.raises(redis.RedisClusterException) as info:
                await client.execute_command("GET", "kq-s57-auth-k")
            exc = info.value
            assert not isinstance(exc, ClusterUnreachableError), str(exc)
            said = factory.error(exc, "reached")
            assert isinstance(said, ConnectionUnavailableError), repr(said)
            _said_missing(str(said))
            assert "stopped, restarting or unreachable" not in str(said), str(said)
    finally:
        await client.aclose()
