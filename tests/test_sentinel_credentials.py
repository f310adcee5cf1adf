"""Credentials refused through Redis Sentinel (a primary, a replica and sentinels on
loopback).

* A queue connected through Sentinel with an ACL user whose password an administrator
  changes on the data nodes (``ACL SETUSER ... resetpass``, then ``CLIENT KILL``), or
  whose user is disabled, while a producer and a worker run: every call raises
  ``CredentialsRefusedError`` (a ``ConnectionUnavailableError``, still redis-py's
  ``AuthenticationError``) worded as the first connection words it, never redis-py's
  bare error; the worker says the refusal once and keeps running, holding the outcomes
  of the jobs it had leased; once the password is back everything resumes and no
  acknowledged job is lost.
* Sentinels that ask for a password (their own ``requirepass``: the default user's
  password) given none, or the wrong one, through ``sentinel_password``: the queue says
  that the sentinels refused the credentials and which setting gives theirs. Before, it
  said that no sentinel named a primary and to check the sentinel addresses and the
  service name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import redis

import test_review_stop58_auth
from _sentinel import LocalSentinel
from helpers import wait_until
from kitium_queue import ConnectionUnavailableError, JobQueue
from kitium_queue.authrefused import CredentialsRefusedError
from kitium_queue.enums import JobStatus

USER, OLD, NEW = "kq-sc", "kq-sc-old-secret", "kq-sc-new-secret"
SENTINEL_PW = "kq-sc-sentinel-secret"


@pytest.fixture(scope="module")
def sentinel() -> Iterator[LocalSentinel]:
    with LocalSentinel() as s:
        yield s


def _on_data_nodes(s: LocalSentinel, *args: str) -> None:
    """``args`` run by an administrator (the default user) on every data node."""
    for node in s.data:
        with redis.Redis(port=node.port, socket_timeout=5) as admin:
            admin.execute_command(*args)


def _kill_clients(s: LocalSentinel) -> None:
    for node in s.data:
        with redis.Redis(port=node.port, socket_timeout=5) as admin:
            admin.client_kill_filter(_type="normal", skipme=True)


@pytest.fixture
def acl_user(sentinel: LocalSentinel) -> Iterator[str]:
    """A data-node ACL user with password ``OLD``; the URL of its queue through Sentinel."""
    _on_data_nodes(sentinel, "ACL", "SETUSER", USER, "reset", "on", f">{OLD}", "~*", "&*", "+@all")
    hosts = ",".join(f"127.0.0.1:{x.port}" for x in sentinel.sentinels)
    yield f"redis+sentinel://{USER}:{OLD}@{hosts}/{sentinel.service}"
    _on_data_nodes(sentinel, "ACL", "DELUSER", USER)


_first_connection_words = test_review_stop58_auth._first_connection_words


def _said_as_first(exc: BaseException, first: str, queue: str) -> None:
    """``exc`` is the library's error, worded as the first connection words it (as on
    one server), and quotes neither of this module's passwords."""
    test_review_stop58_auth._said_as_first(exc, first, queue)
    assert OLD not in str(exc) and NEW not in str(exc), str(exc)


class _Producer:
    """Adds a job every 20 ms, noting each acknowledged id and each error with the
    phase it came in (``phase`` is set by the test)."""

    def __init__(self, q: JobQueue) -> None:
        self.q = q
        self.phase = "before"
        self.acked: list[str] = []
        self.errors: list[tuple[str, BaseException]] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        i = 0
        while True:
            i += 1
            try:
                self.acked.append(await self.q.add_job("quick", {"i": i}))
            except Exception as exc:
                self.errors.append((self.phase, exc))
            await asyncio.sleep(0.02)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def test_a_password_change_through_sentinel_is_said_and_loses_no_job(
    sentinel: LocalSentinel, acl_user: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kitium_queue")
    name = "sc-change"
    q = JobQueue(name, redis=acl_user, prefix=prefix)
    release = asyncio.Event()
    runs: list[str] = []

    @q.process("held")
    async def held(job: Any) -> None:
        runs.append(job.id)
        await release.wait()

    @q.process("quick")
    async def quick(job: Any) -> None:
        runs.append(job.id)

    producer = _Producer(q)
    try:
        await q.start(concurrency=4)
        worker = q.worker
        leased = [await q.add_job("held", {"n": n}) for n in range(3)]
        await wait_until(lambda: len(runs) >= 3, 10, message="the held jobs to start")
        producer.start()
        await wait_until(lambda: len(producer.acked) >= 5, 10, message="jobs added")

        producer.phase = "cut"  # a call in flight when its connection is cut may break
        mark = len(caplog.records)
        await asyncio.to_thread(
            _on_data_nodes, sentinel, "ACL", "SETUSER", USER, "resetpass", f">{NEW}"
        )
        await asyncio.to_thread(_kill_clients, sentinel)
        await asyncio.sleep(0.3)
        producer.phase = "locked"
        first = await _first_connection_words(acl_user, name, prefix)
        assert f"refused the credentials of queue {name!r}" in first, first
        assert "check the username and password given in redis=" in first, first
        with pytest.raises(ConnectionUnavailableError) as info:
            await q.add_job("quick", {"direct": True})
        _said_as_first(info.value, first, name)

        release.set()  # the leased jobs end while their outcomes cannot be recorded

        def refusals() -> list[str]:
            return [
                r.getMessage()
                for r in caplog.records[mark:]
                if r.name.startswith("kitium_queue.worker")
                and f"refused the credentials of queue {name!r}" in r.getMessage()
            ]

        await wait_until(lambda: bool(refusals()), 15, message="the worker's warning")
        await asyncio.sleep(2.5)  # the worker tries again many times meanwhile
        locked_errors = [e for phase, e in producer.errors if phase == "locked"]
        assert len(locked_errors) >= 5, producer.errors
        for exc in locked_errors:
            _said_as_first(exc, first, name)
        records = [r for r in caplog.records[mark:] if r.name.startswith("kitium_queue")]
        texts = [r.getMessage() for r in records]
        assert len(refusals()) == 1, texts  # said once, not once per try
        assert OLD not in refusals()[0] and NEW not in refusals()[0], refusals()
        assert len(texts) <= 10 and len(texts) == len(set(texts)), texts
        assert not [r for r in records if r.levelno >= logging.ERROR], texts
        assert q.worker is worker and worker.running

        # The old password back: the producer's next call and the worker connect again.
        await asyncio.to_thread(
            _on_data_nodes, sentinel, "ACL", "SETUSER", USER, "resetpass", f">{OLD}"
        )
        producer.phase = "restored"
        count = len(producer.acked)
        await wait_until(lambda: len(producer.acked) >= count + 5, 15, message="jobs again")
        await producer.stop()

        for phase, exc in producer.errors:  # never redis-py's bare AuthenticationError
            assert phase in ("cut", "locked"), producer.errors
            assert isinstance(exc, ConnectionUnavailableError) or (
                phase == "cut" and isinstance(exc, redis.ConnectionError)
            ), (phase, repr(exc))
            if isinstance(exc, redis.AuthenticationError):
                assert isinstance(exc, CredentialsRefusedError), repr(exc)

        every = [*leased, *producer.acked]

        async def all_completed() -> bool:
            return (await q.get_stats()).completed == len(every)

        await wait_until(all_completed, 30, message="every acknowledged job to complete")
        for job_id in every:
            info_ = await q.get_job_status(job_id)
            assert info_ is not None and info_.status == JobStatus.COMPLETED, (job_id, info_)
            assert job_id in runs, job_id
        stats = await q.get_stats()
        assert (stats.waiting, stats.active, stats.failed, stats.dlq) == (0, 0, 0, 0), stats
        assert worker.running
        assert any("reachable again" in r.getMessage() for r in caplog.records[mark:])
    finally:
        release.set()
        await producer.stop()
        await q.close()


async def test_a_disabled_user_through_sentinel_is_said_then_resumes(
    sentinel: LocalSentinel, acl_user: str, prefix: str
) -> None:
    name = "sc-off"
    q = JobQueue(name, redis=acl_user, prefix=prefix)
    try:
        job_id = await q.add_job("x", {"n": 1})
        await asyncio.to_thread(_on_data_nodes, sentinel, "ACL", "SETUSER", USER, "off")
        await asyncio.to_thread(_kill_clients, sentinel)
        await asyncio.sleep(0.3)
        first = await _first_connection_words(acl_user, name, prefix)
        assert f"refused the credentials of queue {name!r}" in first, first
        calls = [
            lambda: q.add_job("x", {"n": 2}),
            lambda: q.add_jobs([("x", {"n": 3})]),
            lambda: q.get_job_status(job_id),
            q.get_stats,
        ]
        for call in calls:
            with pytest.raises(ConnectionUnavailableError) as info:
                await call()
            _said_as_first(info.value, first, name)
        await asyncio.to_thread(_on_data_nodes, sentinel, "ACL", "SETUSER", USER, "on")
        assert (await q.add_job("x", {"n": 4})) is not None
        assert (await q.get_stats()).waiting == 2
    finally:
        await q.close()


# ------------------------------------------------------- the sentinels' own password
@contextlib.contextmanager
def _sentinels_locked(s: LocalSentinel) -> Iterator[None]:
    """Every sentinel asks for ``SENTINEL_PW`` (its default user's password), and drops
    its clients."""
    for x in s.sentinels:
        with redis.Redis(port=x.port, socket_timeout=5) as admin:
            admin.execute_command("ACL", "SETUSER", "default", "resetpass", f">{SENTINEL_PW}")
            admin.client_kill_filter(_type="normal", skipme=True)
    try:
        yield
    finally:
        for x in s.sentinels:
            admin = redis.Redis(port=x.port, password=SENTINEL_PW, socket_timeout=5)
            with contextlib.suppress(redis.RedisError), admin:
                admin.execute_command("ACL", "SETUSER", "default", "resetpass", "nopass")


def _said_sentinels_refused(text: str, queue: str, *, none_given: bool) -> None:
    assert "the sentinels at 127.0.0.1:" in text, text
    if none_given:
        assert "require a password and none was given to them" in text, text
    else:
        assert f"refused the credentials of queue {queue!r}" in text, text
    assert f"queue {queue!r}" in text, text
    assert "sentinel_password=PASSWORD in the redis+sentinel:// URL" in text, text
    assert "the service name" not in text, text  # not "no Sentinel named a primary"
    assert SENTINEL_PW not in text and "not-the-sentinels" not in text, text


async def test_sentinels_that_refuse_the_credentials_say_so_at_connect(prefix: str) -> None:
    with LocalSentinel(replicas=0, sentinels=2) as s:
        hosts = ",".join(f"127.0.0.1:{x.port}" for x in s.sentinels)
        base = f"redis+sentinel://{hosts}/{s.service}"
        forms: list[tuple[Any, bool]] = [
            (base, True),
            (f"{base}?sentinel_password=not-the-sentinels", False),
            (
                {
                    "sentinels": hosts.split(","),
                    "service_name": s.service,
                    "sentinel_password": "not-the-sentinels",
                },
                False,
            ),
        ]
        with _sentinels_locked(s):
            for i, (form, none_given) in enumerate(forms):
                q = JobQueue(f"sp{i}", redis=form, prefix=prefix)
                try:
                    with pytest.raises(ConnectionUnavailableError) as info:
                        await asyncio.wait_for(q.add_job("x", {}), 30)
                finally:
                    await q.close()
                _said_sentinels_refused(str(info.value), f"sp{i}", none_given=none_given)
            right = JobQueue(
                "sp-right", redis=f"{base}?sentinel_password={SENTINEL_PW}", prefix=prefix
            )
            try:
                assert await right.add_job("x", {}) is not None
            finally:
                await right.close()


async def test_sentinels_that_start_asking_for_a_password_are_said_on_a_new_connection(
    prefix: str,
) -> None:
    """A queue connected through Sentinel whose sentinels start asking for a password:
    its next new connection asks them for the primary and says why it got none."""
    with LocalSentinel(replicas=0, sentinels=2) as s:
        q = JobQueue("sp-later", redis=s.url, prefix=prefix)
        try:
            assert await q.add_job("x", {}) is not None
            with _sentinels_locked(s):
                await asyncio.to_thread(_kill_clients, s)  # the data node's: reconnect
                await asyncio.sleep(0.3)
                with pytest.raises(ConnectionUnavailableError) as info:  # not a hang
                    await asyncio.wait_for(q.add_job("x", {}), 30)
                assert isinstance(info.value, CredentialsRefusedError), repr(info.value)
                _said_sentinels_refused(str(info.value), "sp-later", none_given=True)
            assert await q.add_job("x", {}) is not None  # the sentinels open again
        finally:
            await q.close()


async def test_data_nodes_that_start_asking_for_a_password_none_was_given_say_so(
    prefix: str,
) -> None:
    """Sentinel's data nodes start asking for a password a queue connected through
    Sentinel was never given: said as a password needed and none given, with the URL
    form that gives the data nodes one (not "check the username and password")."""
    with LocalSentinel(replicas=0, sentinels=1) as s:
        q = JobQueue("dn-none", redis=s.url, prefix=prefix)
        try:
            assert await q.add_job("x", {}) is not None
            _on_data_nodes(s, "ACL", "SETUSER", "default", "resetpass", f">{NEW}")
            try:
                await asyncio.to_thread(_kill_clients_as, s, NEW)
                with pytest.raises(ConnectionUnavailableError) as info:
                    await asyncio.wait_for(q.add_job("x", {}), 30)
                text = str(info.value)
                assert isinstance(info.value, CredentialsRefusedError), repr(info.value)
                assert "requires a password and none was given" in text, text
                assert "use redis+sentinel://:PASSWORD@host:port,host:port/service" in text
                assert "check the username and password" not in text and NEW not in text
            finally:
                _on_data_nodes_as(s, NEW, "ACL", "SETUSER", "default", "resetpass", "nopass")
            assert await q.add_job("x", {}) is not None
        finally:
            await q.close()


def _on_data_nodes_as(s: LocalSentinel, password: str, *args: str) -> None:
    for node in s.data:
        with redis.Redis(port=node.port, password=password, socket_timeout=5) as admin:
            admin.execute_command(*args)


def _kill_clients_as(s: LocalSentinel, password: str) -> None:
    for node in s.data:
        with redis.Redis(port=node.port, password=password, socket_timeout=5) as admin:
            admin.client_kill_filter(_type="normal", skipme=True)
