"""A Redis user lacking a command a script calls is refused before the script runs.

Redis checks a user's right to each command of a script only when the script calls it,
and never rolls the script back. A claim refused its ``XADD`` after its ``ZPOPMIN`` had
taken jobs out of wait that were then in no set: a worker whose user lacked ``xadd`` left
all 100 waiting jobs in no set within 5 s, and ``health`` said ready. Now a worker checks
its scripts' commands when it starts and a producer at its first add
(``aclcheck.py``); a worker whose user loses a command while it runs stops claiming at
the first refusal and says which command, and resumes when it is granted again.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_sync

from _redis import RedisServer
from helpers import wait_until
from kitium_queue import JobQueue, PermissionDeniedError
from kitium_queue.aclcheck import WORKER_SCRIPTS, script_commands
from kitium_queue.features.access.redisacl import redis_acl_rules
from kitium_queue.orphans import find_orphans

PASSWORD = f"kq-rights-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    srv = RedisServer().start()
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture
def admin(server: RedisServer) -> Iterator[redis_sync.Redis]:
    r = redis_sync.Redis(host="127.0.0.1", port=server.port)
    r.flushall()
    yield r
    for user in r.acl_users():
        if user != "default":
            r.acl_deluser(user)
    r.close()


def _user(admin: redis_sync.Redis, name: str, queue: str, *extra: str) -> str:
    rules = redis_acl_rules(name, [queue])
    admin.execute_command("ACL", "SETUSER", *rules.setuser_args(PASSWORD), *extra)
    return name


def _url(server: RedisServer, user: str | None = None) -> str:
    auth = f"{user}:{PASSWORD}@" if user else ""
    return f"redis://{auth}127.0.0.1:{server.port}/0"


async def _draining(
    server: RedisServer, user: str, queue: str, **settings: Any
) -> tuple[JobQueue, JobQueue, set[str], list[str]]:
    """A worker of ``user`` (concurrency 4) draining 200 jobs, the first 10 of them run:
    (producer, worker, the ids run, the ids added)."""
    prod = JobQueue(queue, redis=_url(server))
    w = JobQueue(queue, redis=_url(server, user), worker={"concurrency": 4}, settings=settings)
    ran: set[str] = set()

    async def work(job: Any) -> None:
        await asyncio.sleep(0.02)
        ran.add(job.id)

    w.process("work", work)
    try:
        await w.start()
        ids = await prod.add_jobs([("work", {"i": i}) for i in range(200)])
        await wait_until(lambda: len(ran) >= 10, 10)
    except BaseException:
        await w.close()
        await prod.close()
        raise
    return prod, w, ran, ids


def _orphans(admin: redis_sync.Redis, queue: str, ids: list[str]) -> list[str]:
    """Jobs whose record exists but that are in neither wait, active nor completed."""
    base = f"kq:{{{queue}}}:"
    found = []
    for job_id in ids:
        if not admin.exists(base + f"job:{job_id}"):
            continue
        if any(admin.zscore(base + s, job_id) is not None for s in ("wait", "active")):
            continue
        if admin.hget(base + f"job:{job_id}", "st") in (b"completed", b"failed"):
            continue
        found.append(job_id)
    return found


async def test_a_worker_whose_user_lacks_a_claim_command_refuses_to_start(
    server: RedisServer, admin: redis_sync.Redis
) -> None:
    prod = JobQueue("rights", redis=_url(server))
    ids = await prod.add_jobs([("work", {"i": i}) for i in range(100)])
    user = _user(admin, "w-noxadd", "rights", "-xadd")
    w = JobQueue("rights", redis=_url(server, user))
    w.process("work", lambda job: None)
    try:
        with pytest.raises(PermissionDeniedError, match=r"refuse XADD.*\+xadd"):
            await w.start()
        await asyncio.sleep(0.3)
        stats = await prod.get_stats()
        assert stats.waiting == 100 and stats.active == 0
        assert _orphans(admin, "rights", ids) == []
    finally:
        await w.close()
        await prod.close()


async def test_a_producer_whose_user_lacks_an_enqueue_command_writes_nothing(
    server: RedisServer, admin: redis_sync.Redis
) -> None:
    user = _user(admin, "p-nozadd", "rights-p", "-zadd")
    p = JobQueue("rights-p", redis=_url(server, user))
    try:
        with pytest.raises(PermissionDeniedError, match="refuse ZADD"):
            await p.add_job("work", {"i": 1})
        assert admin.keys("kq:{rights-p}:job:*") == []
        assert admin.xlen("kq:{rights-p}:events") == 0
    finally:
        await p.close()


async def test_a_user_without_the_administrative_commands_runs_its_role(
    server: RedisServer, admin: redis_sync.Redis
) -> None:
    """Only the scripts a role runs are checked: the rules ``acl redis-rules`` makes
    (without the repairs' and the memory report's commands) are not refused."""
    user = _user(admin, "w-rules", "rights-ok")
    q = JobQueue("rights-ok", redis=_url(server, user))
    done: list[int] = []
    q.process("work", lambda job: done.append(job.data["i"]))
    try:
        await q.start()
        await q.add_jobs([("work", {"i": i}) for i in range(10)])
        await wait_until(lambda: len(done) == 10, 10)
    finally:
        await q.close()
    assert [e for e in admin.acl_log() if e.get("object") != "client|setinfo"] == []


def test_the_worker_scripts_commands_are_the_ones_they_call() -> None:
    q = JobQueue("rights-cmds", redis="redis://127.0.0.1:1/0")
    found = script_commands(q, WORKER_SCRIPTS)
    assert {"ZPOPMIN", "XADD", "HSET", "ZADD"} <= set(found)
    # A refusal inside redis.pcall is a reply the script handles: not checked.
    assert "XLEN" not in found


async def test_a_command_taken_away_while_the_worker_runs_stops_its_claims(
    server: RedisServer, admin: redis_sync.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    user = _user(admin, "w-drift", "rights-d")
    caplog.set_level(logging.WARNING, "kitium_queue")
    prod, w, ran, ids = await _draining(server, user, "rights-d")
    try:
        admin.execute_command("ACL", "SETUSER", user, "-xadd")
        await wait_until(lambda: "refuse XADD" in caplog.text, 15)
        await asyncio.sleep(0.5)
        waiting = (await prod.get_stats()).waiting
        await asyncio.sleep(2.0)
        # It claims nothing while refused (before, each retry popped another batch).
        assert (await prod.get_stats()).waiting == waiting
        admin.execute_command("ACL", "SETUSER", user, "+xadd")
        await wait_until(lambda: "again; resuming" in caplog.text, 15)
        await wait_until(lambda: len(ran) + len(_orphans(admin, "rights-d", ids)) >= 200, 60)
        # At most the jobs of the one call refused part-way are in no set, and the
        # walk of the records the error names puts them back: every job runs.
        lost = _orphans(admin, "rights-d", ids)
        assert len(lost) <= 4
        assert "jobs orphans APP --repair" in caplog.text
        # Its user (acl redis-rules) may not SCAN: its own walk says what to run.
        await wait_until(lambda: "allowed SCAN" in caplog.text, 15)
        # Taken by the refused claim, they read as running: a short lease lets
        # recovery hand them out again at once (by default after lock_duration).
        report = await find_orphans(prod, repair=True, lease_ms=100)
        assert sorted(report.job_ids) == sorted(lost)
        assert set(report.by_status) <= {"active", "waiting"}
        await wait_until(lambda: ran == set(ids), 30)
        assert caplog.text.count("refuse XADD") == 1
    finally:
        await w.close()
        await prod.close()


async def test_a_worker_whose_rights_were_taken_away_stops_at_once(
    server: RedisServer, admin: redis_sync.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Its recheck loop gives way to a stop (before, the stop took the whole
    shutdown_timeout, 30 s, with no job running)."""
    user = _user(admin, "w-stop", "rights-s")
    prod = JobQueue("rights-s", redis=_url(server))
    w = JobQueue("rights-s", redis=_url(server, user))
    w.process("work", lambda job: None)
    caplog.set_level(logging.WARNING, "kitium_queue")
    try:
        await w.start()
        admin.execute_command("ACL", "SETUSER", user, "-xadd")
        await prod.add_job("work", {})
        await wait_until(lambda: "refuse XADD" in caplog.text, 15)
        t0 = asyncio.get_running_loop().time()
        await w.close()
        assert asyncio.get_running_loop().time() - t0 < 10
    finally:
        await w.close()
        await prod.close()


async def test_a_worker_allowed_scan_puts_back_what_a_refused_claim_left(
    server: RedisServer, admin: redis_sync.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Once the commands are allowed again, the worker walks the job records itself
    (``orphans.walk``) and puts back the jobs the one refused claim left in no set:
    every job runs, with no operator."""
    user = _user(admin, "w-walk", "rights-w", "+scan")
    caplog.set_level(logging.WARNING, "kitium_queue")
    prod, w, ran, ids = await _draining(server, user, "rights-w", lock_duration=1000)
    try:
        admin.execute_command("ACL", "SETUSER", user, "-xadd")
        await wait_until(lambda: "refuse XADD" in caplog.text, 15)
        admin.execute_command("ACL", "SETUSER", user, "+xadd")
        await wait_until(lambda: ran == set(ids), 60)
        assert _orphans(admin, "rights-w", ids) == []
        assert "allowed SCAN" not in caplog.text
    finally:
        await w.close()
        await prod.close()
