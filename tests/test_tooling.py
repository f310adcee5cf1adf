"""Tests for the test tooling itself: the private redis-server helper and the fixtures."""

from __future__ import annotations

import os
import re
import signal
import socket

import pytest
import redis
import redis.asyncio

from _redis import RedisServer, RedisServerError, free_port


def _connect_refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except OSError:
        return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_free_port_is_bindable() -> None:
    port = free_port()
    assert 1024 <= port <= 65535
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))


def test_server_starts_and_answers_ping() -> None:
    with RedisServer() as srv:
        assert srv.is_running()
        assert srv.ping()
        assert srv.port != 6379
        assert srv.url == f"redis://127.0.0.1:{srv.port}/0"
        client = redis.Redis.from_url(srv.url)
        try:
            assert client.ping() is True
            assert int(client.info("server")["process_id"]) == srv.pid
            assert client.config_get("appendonly") == {"appendonly": "no"}
            assert client.config_get("save") == {"save": ""}
            assert client.config_get("bind")["bind"] == "127.0.0.1"
            assert client.config_get("dir")["dir"] == str(srv.dir.resolve())
            client.set("k", "v")
            assert client.get("k") == b"v"
        finally:
            client.close()
        directory = srv.dir
    assert not srv.is_running()
    assert not directory.exists(), "the helper's own temp dir is removed on exit"


def test_two_servers_get_different_ports() -> None:
    with RedisServer() as a, RedisServer() as b:
        assert a.port != b.port
        assert a.ping() and b.ping()


def test_extra_args_are_applied() -> None:
    with RedisServer("--maxmemory", "12345678", args=["--databases", "4"]) as srv:
        client = redis.Redis.from_url(srv.url)
        try:
            assert client.config_get("maxmemory") == {"maxmemory": "12345678"}
            assert client.config_get("databases") == {"databases": "4"}
        finally:
            client.close()


def test_stop_terminates_gracefully() -> None:
    srv = RedisServer().start()
    try:
        pid = srv.pid
        assert pid is not None
        port = srv.port
        rc = srv.stop()
        assert rc == 0, f"SIGTERM shutdown should exit cleanly, got {rc}"
        assert not srv.is_running()
        assert not _pid_alive(pid)
        assert _connect_refused(port)
        assert not srv.ping()
    finally:
        srv.close()


def test_kill_sends_sigkill() -> None:
    srv = RedisServer().start()
    try:
        pid = srv.pid
        assert pid is not None
        port = srv.port
        rc = srv.kill()
        assert rc == -signal.SIGKILL
        assert not srv.is_running()
        assert not _pid_alive(pid)
        assert _connect_refused(port)
    finally:
        srv.close()


def test_restart_uses_same_port_and_dir() -> None:
    with RedisServer() as srv:
        port, directory, first_pid = srv.port, srv.dir, srv.pid
        srv.restart()
        assert srv.port == port
        assert srv.dir == directory
        assert srv.pid != first_pid
        assert srv.ping()
        # Without persistence the data is gone after a restart.
        client = redis.Redis.from_url(srv.url)
        try:
            assert client.dbsize() == 0
        finally:
            client.close()


def test_restart_after_kill_replays_aof() -> None:
    with RedisServer("--appendonly", "yes", "--appendfsync", "always") as srv:
        client = redis.Redis.from_url(srv.url)
        try:
            assert client.config_get("appendonly") == {"appendonly": "yes"}
            assert client.config_get("appendfsync") == {"appendfsync": "always"}
            for i in range(50):
                client.rpush("durable", i)
        finally:
            client.close()
        port = srv.port
        assert srv.kill() == -signal.SIGKILL
        assert _connect_refused(port)

        srv.restart()
        assert srv.port == port
        client = redis.Redis.from_url(srv.url)
        try:
            assert client.lrange("durable", 0, -1) == [str(i).encode() for i in range(50)]
        finally:
            client.close()


def test_restart_on_stopped_server() -> None:
    with RedisServer() as srv:
        port = srv.port
        srv.stop()
        assert not srv.ping()
        srv.restart()
        assert srv.port == port and srv.ping()


def test_startup_failure_reports_log_tail() -> None:
    srv = RedisServer("--no-such-directive", "1", startup_timeout=5)
    try:
        with pytest.raises(RedisServerError, match=re.compile("log tail", re.I)) as info:
            srv.start()
        assert "no-such-directive" in str(info.value)
        assert not srv.is_running()
    finally:
        srv.close()


def test_start_on_taken_port_fails_clearly() -> None:
    with RedisServer() as first:
        second = RedisServer(port=first.port, startup_timeout=5)
        try:
            with pytest.raises(RedisServerError):
                second.start()
            assert not second.is_running()
        finally:
            second.close()
        assert first.ping(), "the first server must be unaffected"


# ---------------------------------------------------------------- fixtures


def test_redis_url_fixture(redis_url: str) -> None:
    assert redis_url.startswith(("redis://", "rediss://", "unix://"))
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.ping() is True
    finally:
        client.close()


def test_session_server_is_private(redis_server: object) -> None:
    if os.environ.get("KQ_TEST_REDIS_URL"):
        pytest.skip("KQ_TEST_REDIS_URL is set: using an external server")
    assert isinstance(redis_server, RedisServer)
    assert redis_server.port != 6379
    assert redis_server.is_running()


async def test_redis_client_fixture(redis_client: redis.asyncio.Redis, prefix: str) -> None:
    assert await redis_client.ping() is True
    key = f"{prefix}:hello"
    await redis_client.set(key, "world", ex=60)
    assert await redis_client.get(key) == b"world"
    await redis_client.delete(key)


def test_prefix_is_unique_per_test(prefix: str) -> None:
    assert re.fullmatch(r"kqt[0-9a-f]{10}", prefix)
    _seen_prefixes.append(prefix)
    assert len(set(_seen_prefixes)) == len(_seen_prefixes)


_seen_prefixes: list[str] = []


@pytest.mark.parametrize("n", range(3))
def test_prefix_is_unique_across_tests(prefix: str, n: int) -> None:
    _seen_prefixes.append(prefix)
    assert len(set(_seen_prefixes)) == len(_seen_prefixes)


def test_backend_url_fixture(backend_url: str, redis_url: str) -> None:
    if backend_url.startswith("memory://"):
        assert re.fullmatch(r"memory://[0-9a-f]{32}", backend_url)
    else:
        assert backend_url == redis_url


@pytest.mark.redis_only
def test_backend_url_redis_only(backend_url: str) -> None:
    assert backend_url.startswith("redis://"), "redis_only tests never see memory://"
