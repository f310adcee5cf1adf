"""Parsing of the scale-out forms of ``redis=`` (no server needed): cluster and sentinel
URLs and dicts, their options, and the errors for malformed ones."""

from __future__ import annotations

import pytest
from redis.asyncio.cluster import RedisCluster

from kitium_queue import ConfigurationError
from kitium_queue.connection import TRANSIENT_ERRORS, ConnectionFactory


async def test_cluster_url_with_seeds_credentials_and_options() -> None:
    f = ConnectionFactory(
        "redis+cluster://app:s%40cret@10.0.0.1:7000,10.0.0.2:7001?socket_timeout=2.5"
        "&max_connections=20"
    )
    assert f.is_cluster and f.mode == "cluster"
    assert f.describe() == "cluster 10.0.0.1:7000,10.0.0.2:7001"
    client = f.client()
    try:
        assert isinstance(client, RedisCluster)
        kw = client.get_connection_kwargs()
        assert (kw["username"], kw["password"], kw["socket_timeout"]) == ("app", "s@cret", 2.5)
        assert {(n.host, n.port) for n in client.startup_nodes} == {
            ("10.0.0.1", 7000),
            ("10.0.0.2", 7001),
        }
        blocking = f.client(blocking=True)
        assert blocking.get_connection_kwargs()["socket_timeout"] is None
        await blocking.aclose()
    finally:
        await client.aclose()


async def test_cluster_dict_and_tls_scheme() -> None:
    f = ConnectionFactory({"cluster": True, "host": "h", "port": 7000, "password": "p"})
    assert f.is_cluster and f.describe() == "cluster h:7000"
    g = ConnectionFactory({"startup_nodes": ["a:1", ("b", 2)]})
    assert g.describe() == "cluster a:1,b:2"
    t = ConnectionFactory("rediss+cluster://h:7000")
    c = t.client()
    try:
        assert "SSL" in c.get_connection_kwargs()["connection_class"].__name__
    finally:
        await c.aclose()


async def test_sentinel_url_and_dict() -> None:
    f = ConnectionFactory("redis+sentinel://:pw@s1:26379,s2/mymaster/2?sentinel_password=sp")
    assert f.mode == "sentinel"
    assert f.describe() == "sentinel s1:26379,s2:26379/mymaster"
    client = f.client()
    try:
        pool = client.connection_pool
        assert pool.service_name == "mymaster"
        assert pool.connection_kwargs["db"] == 2 and pool.connection_kwargs["password"] == "pw"
        sentinel = pool.sentinel_manager
        assert sentinel.sentinel_kwargs["password"] == "sp"
        assert [c.connection_pool.connection_kwargs["port"] for c in sentinel.sentinels] == [
            26379,
            26379,
        ]
    finally:
        await client.aclose()
    d = ConnectionFactory({"sentinels": [("s1", 1), "s2:2"], "service_name": "svc", "db": 1})
    assert d.describe() == "sentinel s1:1,s2:2/svc"


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ("redis+sentinel://s1:26379", "needs the service name"),
        ("redis+sentinel://s1/a/b/c", "needs the service name"),
        ("redis+sentinel://s1/svc/x", "invalid database"),
        ("redis+cluster://h:7000/3", "only database 0"),
        ("redis+cluster://", "at least one host"),
        ("redis+cluster://h:7000?bogus=1", "unknown option 'bogus'"),
        ("redis+cluster://h:7000?max_connections=many", "must be int"),
        ("redis+cluster://h:7000?sentinel_password=x", r"only apply to redis\+sentinel"),
        ("redis+cluster://h:notaport", "invalid node address"),
        ("valkey://h", "unsupported redis URL"),
        ({"cluster": True, "sentinels": ["s:1"]}, "either cluster or sentinels"),
        ({"cluster": True, "db": 2}, "only database 0"),
        ({"sentinels": ["s:1"]}, "needs service_name"),
        ({"sentinels": "s:1", "service_name": "x"}, "must be a list"),
        ({"service_name": "x"}, "need sentinels"),
    ],
)
def test_malformed_forms_are_refused(form: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        ConnectionFactory(form)


def test_failover_replies_are_transient() -> None:
    from redis.exceptions import (
        ClusterDownError,
        MasterDownError,
        ReadOnlyError,
        ResponseError,
        TryAgainError,
    )

    for exc in (ClusterDownError, MasterDownError, TryAgainError, ReadOnlyError):
        assert issubclass(exc, TRANSIENT_ERRORS)
    assert not issubclass(ResponseError, TRANSIENT_ERRORS)  # a script error is not
