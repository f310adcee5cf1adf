"""A call the Redis ACL refuses inside a background loop is a refusal, not an outage.

``PermissionDeniedError`` (a script's ``NOPERM``) is a ``PermissionError``, an
``OSError``, so every tuple of "Redis unreachable" errors held it: a leader service
whose lease keys the user lost said "Redis unreachable (PermissionDeniedError: ...)" and,
once granted again, "Redis is reachable again"; the scheduler said the same; the
breaker-events leader said "Redis unreachable" once per retry (every second); a periodic
leader step (``leader.every``) refused by a plain command logged a traceback at every
interval, and one refused by a script said nothing at all. Now each loop says the
refusal once (``Refusals``: what refused it and ``kitium-queue acl redis-rules``), tries
again at a slow pace (``REFUSED_RETRY_S``), and says "permitted again" once the user may
run it. Jobs run meanwhile.

Each test gives a Redis ACL user every key of its queue but a few (``_deny``: glob
patterns that match every key except those starting with a given part), or takes a
command away, while the worker runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_sync

import kitium_queue.features.breakers.events as breaker_events
import kitium_queue.features.scheduler as scheduler
import kitium_queue.leader as leader
from _redis import RedisServer
from helpers import wait_until
from kitium_queue import CircuitBreakerManager, JobQueue, LeaderService
from kitium_queue.features.access.redisacl import redis_acl_rules
from kitium_queue.leader import every

USER, PASSWORD = "loops", "pw-loops"
REFUSED = "refused for lack of permission, not an outage"
PERMITTED = "permitted again"


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer() as srv:
        yield srv


@pytest.fixture
def admin(server: RedisServer) -> Iterator[redis_sync.Redis]:
    client = redis_sync.Redis(host="127.0.0.1", port=server.port)
    client.flushall()
    yield client
    client.close()


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused calls are tried again every 5 s; here every 0.1 s (many tries, quickly)."""
    for module in (leader, scheduler, breaker_events):
        monkeypatch.setattr(module, "REFUSED_RETRY_S", 0.1, raising=False)


def _queue(admin: redis_sync.Redis, server: RedisServer, name: str, **kw: Any) -> JobQueue:
    rules = redis_acl_rules(USER, [name], features=["breakers"])
    admin.execute_command("ACL", "SETUSER", *rules.setuser_args(PASSWORD))
    url = f"redis://{USER}:{PASSWORD}@127.0.0.1:{server.port}/0"
    return JobQueue(name, redis=url, **kw)


def _deny(admin: redis_sync.Redis, queue: str, part: str) -> None:
    """The user keeps every key of ``queue`` but those starting with ``part``."""
    base = f"kq:{{{queue}}}:"
    patterns = [f"~{base}{part[:i]}[^{c}]*" for i, c in enumerate(part)]
    admin.execute_command("ACL", "SETUSER", USER, "resetkeys", *patterns)


def _grant(admin: redis_sync.Redis, queue: str) -> None:
    admin.execute_command("ACL", "SETUSER", USER, "resetkeys", f"~kq:{{{queue}}}:*")


def _said(caplog: pytest.LogCaptureFixture, who: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(who)]


def _lines(caplog: pytest.LogCaptureFixture, who: str, text: str) -> list[str]:
    return [m for m in _said(caplog, who) if text in m]


async def test_a_leader_whose_lease_is_refused_says_so_once_and_when_permitted_again(
    server: RedisServer, admin: redis_sync.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="kitium_queue")
    q = _queue(admin, server, "rl-lead")
    done: list[str] = []
    q.process("n", lambda job: done.append(job.id))
    svc = LeaderService("probe", lambda term: asyncio.Event().wait(), lease_ms=600, renew_ms=150)
    q.add_service(svc)
    who = "leader service probe:"
    await q.start()
    try:
        await wait_until(lambda: svc.is_leader, 10, message="never led")
        _deny(admin, "rl-lead", "leader:probe")
        await wait_until(lambda: _lines(caplog, who, REFUSED), 10, message="refusal not said")
        await wait_until(lambda: not svc.is_leader, 5, message="kept leading unrenewed")
        job_id = await q.add_job("n", {})  # the worker's own calls are allowed: jobs run
        await wait_until(lambda: job_id in done, 10, message="no job ran meanwhile")
        await asyncio.sleep(1.0)  # about ten more refused tries to take the lease
        refusals = _lines(caplog, who, REFUSED)
        assert len(refusals) == 1, _said(caplog, who)
        assert "PermissionDeniedError" in refusals[0] and "redis-rules" in refusals[0]
        assert not _lines(caplog, who, "unreachable"), _said(caplog, who)
        _grant(admin, "rl-lead")
        await wait_until(lambda: _lines(caplog, who, PERMITTED), 10, message="no recovery said")
        await wait_until(lambda: svc.is_leader, 10, message="never led again")
        assert len(_lines(caplog, who, PERMITTED)) == 1, _said(caplog, who)
        assert not _lines(caplog, who, "reachable again"), _said(caplog, who)
    finally:
        await q.close()


async def test_a_periodic_leader_step_refused_is_said_once_not_at_every_interval(
    server: RedisServer, admin: redis_sync.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """``leader.every``: a step refused by a plain command (redis-py's
    ``NoPermissionError``) logged a traceback at every interval."""
    caplog.set_level(logging.WARNING, logger="kitium_queue")
    q = _queue(admin, server, "rl-every")
    q.process("n", lambda job: None)
    steps: list[int] = []

    async def step() -> None:
        await (await q.client()).get(q.keys.extra("probe-data"))
        steps.append(1)

    q.add_service(LeaderService("ticks", lambda term: every(20, step, "queue rl-every: probe")))
    who = "queue rl-every: probe"
    await q.start()
    try:
        await wait_until(lambda: steps, 10, message="the step never ran")
        _deny(admin, "rl-every", "probe-data")
        await wait_until(lambda: _lines(caplog, who, REFUSED), 10, message="refusal not said")
        await asyncio.sleep(0.5)  # some 25 more refused steps
        assert len(_said(caplog, who)) == 1, _said(caplog, who)
        ran = len(steps)
        _grant(admin, "rl-every")
        await wait_until(lambda: _lines(caplog, who, PERMITTED), 10, message="no recovery said")
        assert len(steps) > ran
        assert not any(r.exc_info for r in caplog.records if r.getMessage().startswith(who))
    finally:
        await q.close()


async def test_the_scheduler_says_a_refused_script_once_and_fires_again_once_permitted(
    server: RedisServer, admin: redis_sync.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="kitium_queue")
    q = _queue(admin, server, "rl-sched")
    ticks: list[str] = []
    q.process("beat", lambda job: ticks.append(job.id))
    await q.schedule_every("beat", {}, 100)
    who = "scheduler of queue rl-sched:"
    await q.start()
    try:
        await wait_until(lambda: ticks, 10, message="no tick ran")
        admin.execute_command("ACL", "SETUSER", USER, "-incr")  # schedule_fire's INCR
        await wait_until(lambda: _lines(caplog, who, REFUSED), 10, message="refusal not said")
        await asyncio.sleep(1.0)  # about ten more refused rounds
        assert len(_said(caplog, who)) == 1, _said(caplog, who)
        assert "unreachable" not in _said(caplog, who)[0]
        before = len(ticks)
        admin.execute_command("ACL", "SETUSER", USER, "+incr")
        await wait_until(lambda: _lines(caplog, who, PERMITTED), 10, message="no recovery said")
        await wait_until(lambda: len(ticks) > before, 10, message="no tick after the grant")
        assert not _lines(caplog, who, "reachable again"), _said(caplog, who)
    finally:
        await q.close()


async def test_breaker_events_say_a_refusal_once_not_once_per_retry(
    server: RedisServer, admin: redis_sync.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """The breaker-events leader said "Redis unreachable" at every retry (each second)
    when its sweep script was refused, and a refused read of its log ended its body
    (a traceback, stepping down, leading again) every few seconds."""
    caplog.set_level(logging.WARNING, logger="kitium_queue")
    q = _queue(admin, server, "rl-cb")
    q.process("n", lambda job: None)
    breakers = CircuitBreakerManager(q)
    assert breakers.events is not None
    breakers.events.sweep_s = 0.1
    await breakers.create_breaker({"id": "api"})
    who = "breaker events"
    await q.start()
    try:
        await wait_until(lambda: breakers.events.is_leader, 10, message="never led")  # type: ignore[union-attr]
        _deny(admin, "rl-cb", "cb:")
        await wait_until(lambda: _lines(caplog, who, REFUSED), 10, message="refusal not said")
        await asyncio.sleep(1.5)
        assert len(_said(caplog, who)) == 1, _said(caplog, who)
        assert not [r for r in caplog.records if "body failed" in r.getMessage()]
        _grant(admin, "rl-cb")
        await wait_until(lambda: _lines(caplog, who, PERMITTED), 10, message="no recovery said")
        assert not _lines(caplog, who, "unreachable"), _said(caplog, who)
    finally:
        await q.close()


async def test_a_worker_whose_scripts_are_refused_says_refused_not_unreachable(
    server: RedisServer, admin: redis_sync.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Without EVALSHA and EVAL the worker cannot even check which commands it lacks:
    its rounds' refusal went to the outage report ("Redis unreachable", then "Redis is
    reachable again")."""
    caplog.set_level(logging.WARNING, logger="kitium_queue")
    q = _queue(admin, server, "rl-worker")
    done: list[str] = []
    q.process("n", lambda job: done.append(job.id))
    await q.start()
    assert q.worker is not None
    who = f"worker {q.worker.id}:"
    try:
        admin.execute_command("ACL", "SETUSER", USER, "-evalsha", "-eval")
        await wait_until(lambda: _lines(caplog, who, REFUSED), 10, message="refusal not said")
        await asyncio.sleep(1.0)
        assert len(_lines(caplog, who, REFUSED)) == 1, _said(caplog, who)
        assert not _lines(caplog, who, "unreachable"), _said(caplog, who)
        admin.execute_command("ACL", "SETUSER", USER, "+evalsha", "+eval")
        producer = JobQueue("rl-worker", redis=f"redis://127.0.0.1:{server.port}/0")
        try:
            job_id = await producer.add_job("n", {})
        finally:
            await producer.close()
        await wait_until(lambda: job_id in done, 10, message="no job ran after the grant")
        await wait_until(lambda: _lines(caplog, who, PERMITTED), 10, message="no recovery said")
        assert not _lines(caplog, who, "reachable again"), _said(caplog, who)
    finally:
        await q.close()


async def test_a_heartbeat_whose_multi_is_refused_says_so_once_a_minute(
    server: RedisServer, admin: redis_sync.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """redis-py drops the refusal of a transaction's MULTI and raises EXEC's answer, "EXEC
    without MULTI", in which no NOPERM is left to find: each heartbeat (every 5 s) logged
    "heartbeat failed" with a traceback. Now it says the refusal of MULTI once a minute."""
    caplog.set_level(logging.WARNING, logger="kitium_queue")
    q = _queue(admin, server, "rl-beat")
    done: list[str] = []
    q.process("n", lambda job: done.append(job.id))
    await q.start()
    assert q.worker is not None
    presence = q.worker.presence(q)
    who = f"worker {q.worker.id}: heartbeat"
    try:
        admin.execute_command("ACL", "SETUSER", USER, "-multi")
        for _ in range(3):
            await presence._try_beat()
        said = " | ".join(_said(caplog, who))
        assert len(_lines(caplog, who, "refused")) == 1, said
        assert "MULTI refused" in said and "+multi" in said, said
        assert not _lines(caplog, who, "heartbeat failed"), said
        producer = JobQueue("rl-beat", redis=f"redis://127.0.0.1:{server.port}/0")
        try:
            job_id = await producer.add_job("n", {})
        finally:
            await producer.close()
        await wait_until(lambda: job_id in done, 10, message="no job ran without MULTI")
    finally:
        admin.execute_command("ACL", "SETUSER", USER, "+multi")
        await q.close()
