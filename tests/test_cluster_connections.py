"""The connections of the Redis Cluster clients the queue builds (``clusterconn.py``).

* ``aclose()`` leaves no node connected, even when the client's first topology refresh
  was cut short by a cancellation that came twice (a worker's stop cancels its blocking
  wait, and cancels it again while redis-py cleans up): the seed that had answered
  ``CLUSTER SLOTS`` kept its connection, redis-py's ``aclose()`` did nothing (no
  topology yet), and asyncio reported ``Unclosed ClusterNode object`` at collection.
* Closing without the event loop (``pools.drop_connections``) and ``known_nodes`` read
  redis-py's tables defensively: a renamed or retyped one is skipped, never raised.
* A node that accepts the connection and never answers gives up within the reply
  deadline, with an error naming that node.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import time
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from _cluster import LocalCluster
from kitium_queue import ConnectionUnavailableError, JobQueue
from kitium_queue.clusterconn import ClusterClient, known_nodes
from kitium_queue.connection import ConnectionFactory
from kitium_queue.connerrors import ReplyTimeoutError
from kitium_queue.pools import drop_connections

pytestmark = pytest.mark.redis_only


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(masters=3, replicas=1) as c:
        yield c


def _named_connections(cluster: LocalCluster, name: str) -> int:
    """Connections named ``name`` open on the cluster's nodes, as the servers see them."""
    total = 0
    for node in cluster.alive():
        admin = cluster.client(node)
        try:
            total += sum(1 for c in admin.client_list() if c.get("name") == name)
        finally:
            admin.close()
    return total


def _no_named_connections(cluster: LocalCluster, name: str) -> int:
    """``_named_connections`` once the servers have taken the closes (a moment)."""
    deadline = time.monotonic() + 5
    while True:
        left = _named_connections(cluster, name)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def _unclosed_nodes() -> list[str]:
    """asyncio's warnings for redis-py ClusterNode objects collected while connected."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    return [str(w.message) for w in caught if "Unclosed ClusterNode" in str(w.message)]


# ------------------------------------------------------------------ close
async def test_a_first_refresh_cancelled_twice_leaves_no_seed_connected(
    cluster: LocalCluster,
) -> None:
    """The second cancellation lands at a varying point of redis-py's cleanup; at
    some, that cleanup left the seed's connection open, and ``aclose()`` skipped it."""
    _unclosed_nodes()  # what earlier tests left is theirs
    left: dict[int, int] = {}
    unclosed: list[str] = []
    for turns in range(12):
        name = f"kqcc-{uuid.uuid4().hex[:10]}"
        factory = ConnectionFactory(
            {
                "cluster": True,
                "startup_nodes": [f"127.0.0.1:{cluster.ports[0]}"],
                "client_name": name,
            }
        )
        client = factory.client(blocking=True)
        assert isinstance(client, ClusterClient)
        task = asyncio.ensure_future(client.bzpopmin("kqcc:{x}", timeout=1))
        # Until the seed has answered CLUSTER SLOTS (a default node is chosen): the
        # task then opens a connection to that node for redis-py's COMMAND.
        while client.get_default_node() is None and not task.done():
            await asyncio.sleep(0)
        task.cancel()
        for _ in range(turns):
            await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.aclose()
        del client, task, factory
        unclosed += _unclosed_nodes()
        left[turns] = _no_named_connections(cluster, name)
    assert not unclosed, unclosed
    assert not any(left.values()), left


async def test_a_worker_stopped_at_once_leaves_no_node_connected(cluster: LocalCluster) -> None:
    """A worker stopped as its first wait refreshes the topology (the way the leak was
    seen in the suite): no connection of the queue's name stays open."""
    name = f"kqcc-{uuid.uuid4().hex[:10]}"
    seeds = [f"127.0.0.1:{p}" for p in cluster.ports]
    for i in range(8):
        q = JobQueue("kqcc-stop", redis={"startup_nodes": seeds, "client_name": name})
        q.process("t", lambda job: 1)
        try:
            await q.start(concurrency=1)
            await asyncio.sleep(0.003 * i)
        finally:
            await q.close()
    assert not _unclosed_nodes()
    assert not _no_named_connections(cluster, name)


# ------------------------------------------------------------------ renamed internals
def test_known_nodes_skips_what_it_cannot_read() -> None:
    class Renamed:
        startup_nodes = "not a list"
        nodes_manager = object()
        commands_parser = None

        def get_nodes(self) -> Any:
            raise AttributeError("nodes_cache")  # redis-py's table renamed under it

    assert known_nodes(Renamed()) == []
    assert known_nodes(object()) == []


def test_dropping_a_cluster_clients_sockets_survives_a_retyped_table(
    cluster: LocalCluster,
) -> None:
    """``drop_connections`` (close() once the client's loop has ended) with a redis-py
    whose node table is no longer a dict: the seeds' sockets are closed all the same
    (before, ``.values()`` of the table raised AttributeError)."""
    name = f"kqcc-{uuid.uuid4().hex[:10]}"
    factory = ConnectionFactory(
        {"startup_nodes": [f"127.0.0.1:{cluster.ports[0]}"], "client_name": name}
    )
    client = factory.client()

    async def use(c: Any) -> None:
        await c.get("kqcc:{y}")

    asyncio.run(use(client))  # the loop ends, the client's sockets stay open
    assert _named_connections(cluster, name) >= 1
    manager = client.nodes_manager
    cache, seeds = manager.nodes_cache, manager.startup_nodes
    manager.nodes_cache = list(cache.values())  # as a later redis-py might keep them
    manager.startup_nodes = tuple(seeds.values())
    drop_connections(client)  # raises nothing; closes what it still finds
    manager.nodes_cache, manager.startup_nodes = cache, seeds
    drop_connections(client)  # the rest (the topology's nodes), for this test's sake
    del client, factory, manager, cache, seeds
    _unclosed_nodes()
    assert not _no_named_connections(cluster, name)


# ------------------------------------------------------------------ a silent node
@pytest.fixture
def silent_node() -> Iterator[int]:
    """A loopback port that accepts connections (the kernel's backlog) and never answers,
    as a frozen Redis does."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        yield int(listener.getsockname()[1])
    finally:
        listener.close()


async def test_a_node_that_never_answers_gives_up_naming_it(
    silent_node: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("kitium_queue.connerrors.REPLY_DEADLINE_S", 1.0)
    monkeypatch.setattr("kitium_queue.context.CONNECT_TIMEOUT_S", 1.0)
    url = f"redis+cluster://127.0.0.1:{silent_node}"
    client = ConnectionFactory(url).client()
    try:
        with pytest.raises(Exception) as raised:  # redis-py's "cannot be connected"
            await asyncio.wait_for(client.get("k"), 20)
        assert isinstance(raised.value.__cause__, ReplyTimeoutError), repr(raised.value)
        assert f"127.0.0.1:{silent_node}" in str(raised.value)
    finally:
        await client.aclose()
    q = JobQueue("kqcc-silent", redis=url)
    try:
        with pytest.raises(ConnectionUnavailableError, match="accepted the connection"):
            await asyncio.wait_for(q.start(), 20)
    finally:
        await q.close()
