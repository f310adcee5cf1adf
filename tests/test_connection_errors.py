"""Connection problems reach the caller as the library's errors, translated in one place
(``ConnectionFactory.error``), from ``add_job``, ``get_stats`` and ``start()`` alike
(issue 11, item 5): an HTTP server on the port, a database number the server does not
have, an unreachable cluster, a closed port, a server that never answers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from _loopback import HttpServer, SilentServer, closed_port
from _redis import RedisServer
from kitium_queue import (
    ConfigurationError,
    ConnectionUnavailableError,
    JobQueue,
    KitiumQueueError,
)
from kitium_queue.connection import ConnectionFactory

Call = Callable[[JobQueue], Awaitable[object]]
CALLS: dict[str, Call] = {
    "add_job": lambda q: q.add_job("n", {}),
    "get_stats": lambda q: q.get_stats(),
    "start": lambda q: q.start(),
}


async def _each_call_raises(url: str, kind: type[KitiumQueueError], *needles: str) -> list[str]:
    messages = []
    for name, call in CALLS.items():
        q = JobQueue("orders", redis=url)
        q.process("n", lambda job: None)
        try:
            with pytest.raises(kind) as info:
                await call(q)
            msg = str(info.value)
            assert info.value.__cause__ is None and info.value.__suppress_context__, name
            assert "'orders'" in msg, msg
            for needle in needles:
                assert needle in msg, f"{name}: {msg}"
            assert ".. " not in msg and ".;" not in msg, msg  # no doubled period
            messages.append(msg)
            assert q.worker is None
        finally:
            await asyncio.wait_for(q.close(), 10)
    return messages


async def test_http_server_on_the_port() -> None:
    with HttpServer() as http:
        await _each_call_raises(
            f"redis://127.0.0.1:{http.port}/0", ConnectionUnavailableError,
            "does not speak the Redis protocol", "check the host and port",
        )  # fmt: skip


@pytest.mark.redis_only
async def test_database_out_of_range(redis_server: RedisServer) -> None:
    url = f"redis://127.0.0.1:{redis_server.port}/99"
    for msg in await _each_call_raises(url, ConfigurationError, "has no such database"):
        assert "/99" in msg and "0..15" in msg


async def test_unreachable_cluster_url() -> None:
    url = f"redis+cluster://127.0.0.1:{closed_port()},127.0.0.1:{closed_port()}"
    await _each_call_raises(
        url, ConnectionUnavailableError, "cannot reach any node of the Redis cluster",
        "check the node addresses",
    )  # fmt: skip


@pytest.mark.redis_only
async def test_cluster_url_for_a_plain_server(redis_server: RedisServer) -> None:
    await _each_call_raises(
        f"redis+cluster://127.0.0.1:{redis_server.port}", ConfigurationError,
        "is not a Redis Cluster", "use a redis:// URL",
    )  # fmt: skip


async def test_closed_port_has_no_doubled_period() -> None:
    for msg in await _each_call_raises(
        f"redis://127.0.0.1:{closed_port()}/0", ConnectionUnavailableError,
        "cannot reach Redis at", "; check the redis= setting",
    ):  # fmt: skip
        assert "). Check" not in msg and ")). " not in msg


async def test_silent_server_fails_within_the_socket_timeout() -> None:
    with SilentServer() as srv:
        await _each_call_raises(
            f"redis://127.0.0.1:{srv.port}/0?socket_timeout=0.3", ConnectionUnavailableError,
            "accepted the connection but did not answer", "socket_timeout",
        )  # fmt: skip


def test_the_translation_leaves_other_errors_alone() -> None:
    f = ConnectionFactory("redis://:pw@127.0.0.1:1/0")
    assert f.error(ValueError("x"), "q") is None
    assert f.error(KeyError("x"), "q") is None
    err = f.error(ConnectionRefusedError("refused pw"), "q")
    assert isinstance(err, ConnectionUnavailableError) and "pw" not in str(err)
    timeout = f.error(asyncio.TimeoutError(), "q", timeout_s=10)
    assert isinstance(timeout, ConnectionUnavailableError) and "within 10 s" in str(timeout)


@pytest.mark.redis_only
async def test_a_tls_file_that_does_not_exist_is_named(
    redis_server: RedisServer, tmp_path: object
) -> None:
    """A TLS file named in redis= that does not exist is a ConfigurationError naming the
    option and the path, not 'cannot reach Redis ... check that the server is running'."""
    missing = f"{tmp_path}/no-such-ca.pem"
    for url in (
        f"rediss://127.0.0.1:{redis_server.port}/0?ssl_ca_certs={missing}",
        f"rediss://127.0.0.1:{redis_server.port}/0?ssl_certfile={missing}&ssl_keyfile={missing}",
    ):
        for msg in await _each_call_raises(url, ConfigurationError, "do not exist"):
            assert repr(missing) in msg and "ssl_" in msg and "server is running" not in msg
