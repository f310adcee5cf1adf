"""Shared fixtures.

* ``redis_server`` (session): one private redis-server for the whole run, started on a free
  loopback port -- or, when ``KQ_TEST_REDIS_URL`` is set, that external server instead.
* ``redis_url``: URL of that server.
* ``redis_client``: a ``redis.asyncio.Redis`` for ``redis_url``, closed after the test.
* ``prefix``: a unique key prefix per test, so tests sharing one server never collide.
* ``cli_app``: ``module:attribute`` of a queue named ``cli`` on ``redis_url`` (CLI tests).
* ``backend_url``: parametrized over ``redis`` and ``memory``; gives the real Redis URL or a
  fresh ``memory://<id>`` store. Tests marked ``redis_only`` are skipped for ``memory``.
* ``receiver``: a webhook receiver on loopback (``chaos.receiver.Receiver``), stopped after
  the test.

Tests that need to crash or restart Redis start their own ``RedisServer``
(``from _redis import RedisServer``; ``tests/`` is on ``sys.path``).
"""

from __future__ import annotations

import gc
import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _redis import RedisServer, thaw
from helpers import QueueFactory

# Bytecode caches on for the run, whatever PYTHONDONTWRITEBYTECODE says: without them
# every test process rewrote and compiled the ~330 test modules again (~12 s of its
# ~15 s collection) and every worker, CLI and example subprocess compiled the
# kitium_queue modules it imports again (~0.1 CPU s each, hundreds per run). The
# caches (``__pycache__/``, ignored by git) are checked against each source file's
# modification time, so an edited file is never run from a stale one.
sys.dont_write_bytecode = False
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

if TYPE_CHECKING:
    import redis.asyncio

REDIS_URL_ENV = "KQ_TEST_REDIS_URL"


@dataclass(frozen=True)
class ExternalRedis:
    """An externally managed server given by ``KQ_TEST_REDIS_URL`` (never stopped by tests)."""

    url: str

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 6379


def pytest_collection_finish(session: pytest.Session) -> None:
    """Move what collection built (every test module, its imports and the ~6,000 test
    items: some 265,000 objects that live for the whole run) out of the garbage
    collector's sight. Left in it, every full collection walked them all again: the
    automatic ones, dozens per few hundred tests, and the ``gc.collect()`` of the tests
    that check an object was freed (seconds each late in a run). Objects the tests make
    are collected as before; only these, alive until the run ends anyway, are skipped."""
    gc.collect()
    gc.freeze()


# The session server's URL once a test started it (``prefix`` cleans up after each test).
_SESSION_URL: list[str] = []


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer | ExternalRedis]:
    external = os.environ.get(REDIS_URL_ENV)
    if external:
        _SESSION_URL[:] = [external]
        yield ExternalRedis(external)
        return
    server = RedisServer()
    server.start()
    _SESSION_URL[:] = [server.url]
    try:
        yield server
    finally:
        _SESSION_URL.clear()
        server.close()


def _drop_prefix(prefix: str) -> None:
    """Delete a finished test's keys (every database) from the session server. Left in
    place, the keys of thousands of tests made every later SCAN-based check (the fuzz
    tests' state views poll one every 10 ms) walk a keyspace of 100,000+ keys."""
    if not _SESSION_URL:
        return
    import redis

    client = redis.Redis.from_url(_SESSION_URL[0], socket_timeout=10, single_connection_client=True)
    try:
        keyspace = client.info("keyspace")
        for name in keyspace:
            if not (isinstance(name, str) and name.startswith("db") and name[2:].isdigit()):
                continue
            client.execute_command("SELECT", int(name[2:]))
            batch: list[bytes] = []
            for key in client.scan_iter(match=prefix + "*", count=5000):
                batch.append(key)
                if len(batch) >= 1000:
                    client.unlink(*batch)
                    batch = []
            if batch:
                client.unlink(*batch)
    except redis.RedisError:
        pass  # the next test's own checks see the server's state; cleanup is best effort
    finally:
        client.close()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer | ExternalRedis) -> str:
    return redis_server.url


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def prefix() -> Iterator[str]:
    name = f"kqt{uuid.uuid4().hex[:10]}"
    yield name
    _drop_prefix(name)


@pytest.fixture
async def make_queue(backend_url: str, prefix: str) -> AsyncIterator[QueueFactory]:
    """Builds queues on the test's backend under its unique prefix; closes them after."""
    factory = QueueFactory(backend_url, prefix)
    yield factory
    await factory.aclose()


@pytest.fixture
def debug_server() -> Iterator[RedisServer]:
    """A private redis-server with DEBUG enabled (DEBUG SLEEP makes it busy on cue); the
    test may restart, stop or kill it."""
    srv = RedisServer("--enable-debug-command", "yes").start()
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture(params=["redis", "memory"])
def backend_url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        if request.node.get_closest_marker("redis_only") is not None:
            pytest.skip("redis_only: needs a real redis-server, not the memory:// backend")
        return f"memory://{uuid.uuid4().hex}"
    # Start (or reuse) the session server only when a test actually needs it.
    url: str = request.getfixturevalue("redis_url")
    return url


@pytest.fixture
def cli_app(tmp_path: Path, redis_url: str, prefix: str) -> Iterator[str]:
    """``module:attribute`` of a JobQueue named ``cli`` on the test server (for the CLI's
    ``APP`` argument): a module written to ``tmp_path`` and put on ``sys.path``."""
    module = f"kq_cli_app_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(
        "from kitium_queue import JobQueue\n"
        f"queue = JobQueue('cli', redis={redis_url!r}, prefix={prefix!r})\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        yield f"{module}:queue"
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(module, None)


@pytest.fixture
async def receiver() -> AsyncIterator[Any]:
    """A webhook receiver on loopback that answers 200 and records every request."""
    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    from chaos.receiver import Receiver

    rec = await Receiver().start()
    yield rec
    await rec.stop()


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A redis-server of the test's own, which it may stop (``_redis.frozen``): let run
    again and shut down at the end. A module may define its own ``server`` instead."""
    srv = RedisServer().start()
    try:
        yield srv
    finally:
        thaw(srv)
        srv.close()


@pytest.fixture(scope="session")
def mypy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A mypy cache of this run's own (per test process): each later check reads what
    the first one found of the package instead of checking all of it again (a fresh
    directory, never stale)."""
    return tmp_path_factory.mktemp("mypy-cache")
