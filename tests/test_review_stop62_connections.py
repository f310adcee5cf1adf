"""Redis Cluster and Sentinel troubles in the library's own terms.

* A Sentinel whose primary is down (the sentinels answer, and name none) raises
  ``ConnectionUnavailableError`` saying so and that a failover may be under way, not
  redis-py's bare ``MasterNotFoundError``; sentinels that do not answer are said apart.
* A Cluster that refuses service (``CLUSTERDOWN``: a master down, with no replica to
  take over) raises ``ConnectionUnavailableError``, saying it is retryable and what to
  check, not redis-py's bare ``ClusterDownError``.
* ``ssl_*`` options without TLS are refused by every form, as ``redis://`` refuses
  them; Sentinel-only keys are refused in a Cluster dict; each scheme lists its own
  options; a TLS file that does not exist says no connection was opened.
* ``rediss+cluster://`` and ``rediss+sentinel://`` to a port without TLS say so.
* ``health_check`` reports a Cluster slot migration of the queue's slot (its
  multi-key transitions refused with ``TRYAGAIN``), and ``kitium-queue health`` prints
  the writes check.

Its redis-servers listen on free ports (``_cluster.cluster_port``: the cluster bus's
+10000 free too).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync
from redis.asyncio.sentinel import MasterNotFoundError
from redis.exceptions import ClusterDownError
from redis.exceptions import ConnectionError as RedisConnectionError

import _cluster
from _cluster import LocalCluster, key_slot
from _redis import RedisServer
from _sentinel import LocalSentinel, _pairs
from helpers import health_cli
from kitium_queue import ConfigurationError, ConnectionUnavailableError, JobQueue
from kitium_queue.connection import ConnectionFactory

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(masters=3, replicas=0) as c:
        yield c


@pytest.fixture
def name() -> str:
    return f"s62c{uuid.uuid4().hex[:8]}"


def _flags(s: LocalSentinel) -> list[str]:
    out = []
    for sentinel in s.sentinels:
        fields = _pairs(s._sentinel_cmd(sentinel, "SENTINEL", "MASTER", s.service))
        out.append(fields.get("flags", ""))
    return out


# ------------------------------------------------------------------ 1. Sentinel
async def test_a_sentinel_primary_down_is_connection_unavailable(name: str) -> None:
    """No replica to promote: once the sentinels flag the primary down they name none.
    add_job raised redis-py's MasterNotFoundError (a queue connected before) and the
    first connection said 'none answered, or none monitors that service name'."""
    with LocalSentinel(replicas=0, down_after_ms=500) as s:
        q = JobQueue(name, redis=s.url)
        fresh = JobQueue(name, redis=s.url)
        try:
            await q.add_job("n", {})
            s.kill_primary()
            deadline = time.monotonic() + 20
            while not all("s_down" in f for f in _flags(s)):
                assert time.monotonic() < deadline, _flags(s)
                time.sleep(0.1)
            # The connection the queue held went down with the primary: that call
            # fails on it; the next one opens a connection, asking the sentinels.
            with contextlib.suppress(ConnectionUnavailableError, RedisConnectionError):
                await q.add_job("n", {})
            for queue in (q, fresh):
                with pytest.raises(ConnectionUnavailableError) as info:
                    await queue.add_job("n", {})
                msg = str(info.value)
                assert "answered" in msg and "failover" in msg and "retry" in msg, msg
                assert "none answered" not in msg, msg
                assert f"{name!r}" in msg, msg
            assert isinstance(info.value, ConnectionUnavailableError)
        finally:
            await q.close()
            await fresh.close()


async def test_sentinels_that_do_not_answer_are_said_apart(name: str) -> None:
    dead = [_cluster.cluster_port(), _cluster.cluster_port()]
    url = f"redis+sentinel://127.0.0.1:{dead[0]},127.0.0.1:{dead[1]}/mymaster"
    msg = await _add_refused(name, url)
    assert "no Sentinel" in msg and "answered" in msg, msg
    assert "or none monitors" not in msg and "failover" not in msg, msg


# ------------------------------------------------------------------ 2. CLUSTERDOWN
async def test_clusterdown_is_connection_unavailable(name: str) -> None:
    """A master down that does not hold the queue's slot, with no replica: every node
    answers CLUSTERDOWN (cluster-require-full-coverage yes). add_job raised redis-py's
    bare ClusterDownError."""
    with LocalCluster(masters=3, replicas=0, node_timeout_ms=500) as c:
        q = JobQueue(name, redis=c.url)
        try:
            await q.add_job("n", {})
            ours = c.master_for_slot(key_slot(name))
            other = next(m for m in c.masters() if m is not ours)
            c.kill(other)
            deadline = time.monotonic() + 20
            while "cluster_state:fail" not in c._cmd(ours, "CLUSTER", "INFO").decode():  # type: ignore[attr-defined]
                assert time.monotonic() < deadline
                time.sleep(0.1)
            with pytest.raises(ConnectionUnavailableError) as info:
                await q.add_job("n", {})
            msg = str(info.value)
            assert isinstance(info.value, ClusterDownError)  # handlers written for it
            assert "CLUSTERDOWN" in msg and "CLUSTER INFO" in msg and "retr" in msg, msg
            assert f"{name!r}" in msg or "Redis cluster" in msg, msg
        finally:
            await q.close()


# ------------------------------------------------------------------ 3. ssl_* options
async def test_ssl_options_without_tls_are_refused_by_every_form(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not read")
    node = f"127.0.0.1:{cluster.nodes[0].port}"
    host, port = "127.0.0.1", cluster.nodes[0].port
    refused: list[Any] = [
        f"redis+cluster://{node}?ssl_ca_certs={ca}",
        f"redis+sentinel://{node}/mymaster?ssl_ca_certs={ca}",
        {"cluster": True, "startup_nodes": [node], "ssl_ca_certs": str(ca)},
        {"host": host, "port": port, "ssl_ca_certs": str(ca)},
        {"host": host, "port": port, "ssl_cert_reqs": "none"},
        {"host": host, "port": port, "ssl": False, "ssl_ca_certs": str(ca)},
        {"url": f"redis://{node}/0", "ssl_ca_certs": str(ca)},
        {"sentinels": [node], "service_name": "mymaster", "ssl_ca_certs": str(ca)},
    ]
    for form in refused:
        with pytest.raises(ConfigurationError) as info:
            ConnectionFactory(form)
        msg = str(info.value)
        assert "TLS" in msg and "ssl" in msg, (form, msg)
    # With TLS asked for, the same options are taken.
    for form in (
        f"rediss+cluster://{node}?ssl_ca_certs={ca}",
        f"rediss+sentinel://{node}/mymaster?ssl_ca_certs={ca}",
        {"cluster": True, "startup_nodes": [node], "ssl": True, "ssl_ca_certs": str(ca)},
        {"host": host, "port": port, "tls": True, "ssl_ca_certs": str(ca)},
        {"url": f"rediss://{node}/0", "ssl_ca_certs": str(ca)},
        {"sentinels": [node], "service_name": "m", "ssl": True, "ssl_ca_certs": str(ca)},
    ):
        ConnectionFactory(form)
    # A plain cluster still connects and works.
    q = JobQueue(f"s62c{uuid.uuid4().hex[:8]}", redis=cluster.url)
    try:
        await q.add_job("n", {})
    finally:
        await q.close()


def test_sentinel_keys_are_refused_in_a_cluster_dict(cluster: LocalCluster) -> None:
    node = f"127.0.0.1:{cluster.nodes[0].port}"
    for key in ("sentinel_password", "sentinel_username", "service_name"):
        with pytest.raises(ConfigurationError) as info:
            ConnectionFactory({"cluster": True, "startup_nodes": [node], key: "x"})
        assert key in str(info.value) and "sentinel" in str(info.value), info.value


def test_each_scheme_lists_its_own_options(cluster: LocalCluster) -> None:
    node = f"127.0.0.1:{cluster.nodes[0].port}"
    with pytest.raises(ConfigurationError) as info:
        ConnectionFactory(f"redis+cluster://{node}?bogus=1")
    msg = str(info.value)
    assert "sentinel_" not in msg and "ssl_ca_certs" not in msg and "socket_timeout" in msg, msg
    with pytest.raises(ConfigurationError) as info:
        ConnectionFactory(f"rediss+cluster://{node}?bogus=1")
    msg = str(info.value)
    assert "sentinel_" not in msg and "ssl_ca_certs" in msg, msg
    with pytest.raises(ConfigurationError) as info:
        ConnectionFactory(f"redis+sentinel://{node}/m?bogus=1")
    msg = str(info.value)
    assert "sentinel_password" in msg and "ssl_ca_certs" not in msg, msg


async def test_a_missing_tls_file_says_no_connection_was_opened(
    cluster: LocalCluster, tmp_path: Path, name: str
) -> None:
    """The file check comes first because the file is read before any byte is sent:
    the message says the server (and its password check) was never reached."""
    missing = tmp_path / "no-such-ca.pem"
    node = f"127.0.0.1:{cluster.nodes[0].port}"
    q = JobQueue(name, redis=f"rediss+cluster://:pw@{node}?ssl_ca_certs={missing}")
    try:
        with pytest.raises(ConfigurationError) as info:
            await q.add_job("n", {})
    finally:
        await q.close()
    msg = str(info.value)
    assert "do not exist" in msg and str(missing) in msg, msg
    assert "no connection was opened" in msg and "password" in msg, msg
    assert "pw" not in msg.replace("password", ""), msg


# ------------------------------------------------------------------ 4. rediss+ to plain
@pytest.fixture
def plain_server() -> Iterator[RedisServer]:
    with RedisServer() as srv:
        yield srv


async def test_tls_to_a_plain_port_says_so_for_cluster_and_sentinel(
    plain_server: RedisServer, name: str
) -> None:
    where = f"127.0.0.1:{plain_server.port}"
    for url in (
        f"rediss+cluster://{where}?socket_connect_timeout=1",
        f"rediss+sentinel://{where}/mymaster?socket_connect_timeout=1",
    ):
        msg = await _add_refused(name, url)
        assert "never answers the TLS handshake" in msg and "redis+" in msg, (url, msg)


# ------------------------------------------------------------------ 5. slot migration
@contextlib.contextmanager
def _migrating(cluster: LocalCluster, slot: int) -> Iterator[None]:
    src = cluster.master_for_slot(slot)
    dst = next(m for m in cluster.masters() if m is not src)

    def node_id(node: RedisServer) -> str:
        got = cluster._cmd(node, "CLUSTER", "MYID")
        return got.decode() if isinstance(got, bytes) else str(got)

    cluster._cmd(dst, "CLUSTER", "SETSLOT", slot, "IMPORTING", node_id(src))
    cluster._cmd(src, "CLUSTER", "SETSLOT", slot, "MIGRATING", node_id(dst))
    try:
        yield
    finally:
        for node in (src, dst):
            cluster._cmd(node, "CLUSTER", "SETSLOT", slot, "STABLE")


async def test_health_check_reports_a_slot_migration(
    cluster: LocalCluster, name: str, tmp_path: Path
) -> None:
    q = JobQueue(name, redis=cluster.url)
    try:
        await q.add_job("n", {})
        assert (await q.health_check()).healthy
        keys_before = sorted(_keys(cluster, name))
        with _migrating(cluster, key_slot(name)):
            h = await q.health_check()
            assert not h.healthy, h
            assert h.error is not None and h.error.startswith("WriteRefusedError: "), h.error
            assert "TRYAGAIN" in h.error, h.error
            code, report = await health_cli(tmp_path, cluster.url, name)
            assert code == 4, report
            checks = {c["name"]: c for c in report["checks"]}
            assert "writes" in checks and not checks["writes"]["ok"], report
            assert "TRYAGAIN" in checks["writes"]["detail"], report
        assert sorted(_keys(cluster, name)) == keys_before  # the probe wrote nothing
        assert (await q.health_check()).healthy
    finally:
        await q.close()


def _keys(cluster: LocalCluster, name: str) -> list[bytes]:
    c = redis_sync.Redis(host="127.0.0.1", port=cluster.master_for_slot(key_slot(name)).port)
    try:
        return list(c.scan_iter(match=f"*{{{name}}}*"))
    finally:
        c.close()


def test_master_not_found_is_still_redis_pys() -> None:
    """The wrapped errors stay redis-py's too: handlers written for them catch them."""
    from kitium_queue import authrefused, clusterconn

    assert issubclass(authrefused.NoPrimaryError, MasterNotFoundError)
    assert issubclass(authrefused.NoPrimaryError, ConnectionUnavailableError)
    assert issubclass(clusterconn.ClusterRefusedError, ClusterDownError)
    assert issubclass(clusterconn.ClusterRefusedError, ConnectionUnavailableError)


async def _add_refused(name: str, url: str) -> str:
    """The text of the ``ConnectionUnavailableError`` an ``add_job`` on ``url`` raises."""
    q = JobQueue(name, redis=url)
    try:
        with pytest.raises(ConnectionUnavailableError) as info:
            await q.add_job("n", {})
    finally:
        await q.close()
    return str(info.value)
