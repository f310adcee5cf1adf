"""A queue already connected whose server starts refusing its credentials (a password
change: ``CONFIG SET requirepass`` or ``ACL SETUSER``, then ``CLIENT KILL TYPE normal``)
says so as its first connection does: every call raises ``ConnectionUnavailableError``
(``authrefused.CredentialsRefusedError``, still redis-py's ``AuthenticationError``)
with the first connection's words and the queue's name, never a password.

Before, ``add_job``, ``add_jobs``, ``get_job_status``, ``get_stats``, admin calls and
``SyncJobQueue``'s calls (its direct ``add_job`` over a blocking connection too) raised
redis-py's bare ``AuthenticationError``, on one server and on a Cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis

from _cluster import LocalCluster
from _redis import RedisServer
from kitium_queue import ConnectionUnavailableError, JobQueue, SyncJobQueue
from kitium_queue.authrefused import CredentialsRefusedError

NEW = "kq-s58-new-secret"
OLD = "kq-s58-old-secret"


def _kill_clients(port: int, password: str | None = None) -> None:
    with redis.Redis(port=port, password=password, socket_timeout=5) as admin:
        admin.client_kill_filter(_type="normal", skipme=True)


def _require(port: int, password: str) -> None:
    """The server asks for ``password`` from now on, and drops its clients."""
    with redis.Redis(port=port, socket_timeout=5) as admin:
        admin.config_set("requirepass", password)
    _kill_clients(port, password)


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as srv:
        yield srv


def _said_as_first(exc: BaseException, first: str, queue: str) -> None:
    """``exc`` is the library's error, worded as the first connection words it (the
    server's own reason in brackets may differ: a new connection says ``HELLO`` where
    the first said ``PING``)."""
    assert isinstance(exc, ConnectionUnavailableError), repr(exc)
    assert isinstance(exc, CredentialsRefusedError), repr(exc)
    assert isinstance(exc, redis.AuthenticationError), repr(exc)  # handlers of it still catch
    text = str(exc)
    before, after = first.split(" (", 1)[0], first.rsplit(")", 1)[1]
    assert text.startswith(f"{before} (") and text.endswith(f"){after}"), (text, first)
    assert f"queue {queue!r}" in text, text
    assert NEW not in text and OLD not in text, text


async def _first_connection_words(url: str, name: str, prefix: str) -> str:
    fresh = JobQueue(name, redis=url, prefix=prefix)
    try:
        with pytest.raises(ConnectionUnavailableError) as info:
            await fresh.get_stats()
    finally:
        await fresh.close()
    return str(info.value)


async def _calls(q: JobQueue, job_id: str) -> list[tuple[str, Callable[[], Awaitable[Any]]]]:
    return [
        ("add_job", lambda: q.add_job("x", {"n": 2})),
        ("add_jobs", lambda: q.add_jobs([("x", {"n": 3}), ("x", {"n": 4})])),
        ("get_job_status", lambda: q.get_job_status(job_id)),
        ("get_stats", q.get_stats),
        ("get_jobs_by_status", lambda: q.get_jobs_by_status("waiting")),
        ("pause", q.pause),
    ]


async def _lock_in_a_thread(fn: Callable[[], None]) -> None:
    """Run ``fn`` (the password change and the clients cut) off the event loop, then let
    the loop see the connections it cut end (a call on one it had not seen ended yet
    breaks during the call: redis-py's own ConnectionError, as documented)."""
    await asyncio.to_thread(fn)
    await asyncio.sleep(0.3)


async def test_calls_after_requirepass_is_set_say_a_password_is_needed(
    server: RedisServer, prefix: str
) -> None:
    url = f"redis://127.0.0.1:{server.port}/0"
    q = JobQueue("s58-nopw", redis=url, prefix=prefix)
    try:
        job_id = await q.add_job("x", {"n": 1})
        await _lock_in_a_thread(lambda: _require(server.port, NEW))
        first = await _first_connection_words(url, "s58-nopw", prefix)
        assert "requires a password and none was given" in first, first
        assert "redis://:PASSWORD@host:port/db" in first, first
        for _name, call in await _calls(q, job_id):
            with pytest.raises(ConnectionUnavailableError) as info:
                await call()
            _said_as_first(info.value, first, "s58-nopw")
    finally:
        with redis.Redis(port=server.port, password=NEW, socket_timeout=5) as admin:
            admin.config_set("requirepass", "")
        await q.close()


async def test_calls_after_an_acl_password_change_say_the_credentials_are_refused(
    server: RedisServer, prefix: str
) -> None:
    with redis.Redis(port=server.port, socket_timeout=5) as admin:
        admin.execute_command("ACL", "SETUSER", "kq", "on", f">{OLD}", "~*", "&*", "+@all")
    url = f"redis://kq:{OLD}@127.0.0.1:{server.port}/0"
    q = JobQueue("s58-acl", redis=url, prefix=prefix)

    def change() -> None:
        with redis.Redis(port=server.port, socket_timeout=5) as admin:
            admin.execute_command("ACL", "SETUSER", "kq", "resetpass", f">{NEW}")
        _kill_clients(server.port)

    try:
        job_id = await q.add_job("x", {"n": 1})
        await _lock_in_a_thread(change)
        first = await _first_connection_words(url, "s58-acl", prefix)
        assert "refused the credentials of queue 's58-acl'" in first, first
        assert "check the username and password given in redis=" in first, first
        for _name, call in await _calls(q, job_id):
            with pytest.raises(ConnectionUnavailableError) as info:
                await call()
            _said_as_first(info.value, first, "s58-acl")
        # The old password back: the next call connects again by itself.
        with redis.Redis(port=server.port, socket_timeout=5) as admin:
            admin.execute_command("ACL", "SETUSER", "kq", "resetpass", f">{OLD}")
        assert (await q.get_job_status(job_id)) is not None
    finally:
        await q.close()


def test_a_sync_queue_after_a_password_change_says_so_on_every_call(
    server: RedisServer, prefix: str
) -> None:
    url = f"redis://127.0.0.1:{server.port}/0"
    sq = SyncJobQueue("s58-sync", redis=url, prefix=prefix)
    try:
        job_id = sq.add_job("x", {"n": 1})  # the direct path (the caller's thread)
        assert sq.get_stats().waiting == 1
        _require(server.port, NEW)
        first = asyncio.run(_first_connection_words(url, "s58-sync", prefix))
        calls: list[Callable[[], Any]] = [
            lambda: sq.add_job("x", {"n": 2}),  # over the blocking connections
            sq.get_stats,  # through the client's event loop
            lambda: sq.get_job_status(job_id),
        ]
        for call in calls:
            with pytest.raises(ConnectionUnavailableError) as info:
                call()
            _said_as_first(info.value, first, "s58-sync")
    finally:
        with redis.Redis(port=server.port, password=NEW, socket_timeout=5) as admin:
            admin.config_set("requirepass", "")
        sq.close()


async def test_a_client_passed_in_names_the_server_never_the_password(
    server: RedisServer, prefix: str
) -> None:
    """A client passed in may serve several queues: its refusals name the server."""
    client = redis.asyncio.Redis(host="127.0.0.1", port=server.port, password=OLD)
    with redis.Redis(port=server.port, socket_timeout=5) as admin:
        admin.config_set("requirepass", OLD)
    q = JobQueue("s58-given", redis=client, prefix=prefix)
    try:
        await q.add_job("x", {"n": 1})
        await _lock_in_a_thread(lambda: _require_again(server.port))
        with pytest.raises(ConnectionUnavailableError) as info:
            await q.get_stats()
        text = str(info.value)
        assert isinstance(info.value, CredentialsRefusedError), repr(info.value)
        assert f"Redis at 127.0.0.1:{server.port} refused the credentials (" in text, text
        assert "check the username and password given in redis=" in text, text
        assert OLD not in text and NEW not in text, text
    finally:
        await q.close()
        await client.aclose()
        with redis.Redis(port=server.port, password=NEW, socket_timeout=5) as admin:
            admin.config_set("requirepass", "")


def _require_again(port: int) -> None:
    with redis.Redis(port=port, password=OLD, socket_timeout=5) as admin:
        admin.config_set("requirepass", NEW)
    _kill_clients(port, NEW)


# ------------------------------------------------------------------ Redis Cluster
@contextlib.contextmanager
def _cluster_locked(cluster: LocalCluster) -> Iterator[None]:
    for node in cluster.nodes:
        with redis.Redis(port=node.port, socket_timeout=5) as admin:
            admin.config_set("requirepass", NEW)
    for node in cluster.nodes:
        _kill_clients(node.port, NEW)
    try:
        yield
    finally:
        for node in cluster.nodes:
            admin = redis.Redis(port=node.port, password=NEW, socket_timeout=5)
            with contextlib.suppress(redis.AuthenticationError), admin:
                admin.config_set("requirepass", "")


async def test_a_cluster_queue_after_a_password_change_says_so(prefix: str) -> None:
    with LocalCluster(masters=3, replicas=0) as cluster:
        q = JobQueue("s58-cluster", redis=cluster.url, prefix=prefix)
        try:
            job_id = await q.add_job("x", {"n": 1})
            with _cluster_locked(cluster):
                await asyncio.sleep(0.3)
                first = await _first_connection_words(cluster.url, "s58-cluster", prefix)
                assert "requires a password and none was given" in first, first
                assert "redis+cluster://:PASSWORD@host:port,host:port" in first, first
                for _name, call in await _calls(q, job_id):
                    with pytest.raises(ConnectionUnavailableError) as info:
                        await call()
                    _said_as_first(info.value, first, "s58-cluster")
            assert (await q.get_job_status(job_id)) is not None  # connects again
        finally:
            await q.close()
