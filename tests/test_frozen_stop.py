"""A worker's graceful stop on a Redis that stops answering ends within its bound.

The bound (docs/RELIABILITY.md, "A Redis that stops answering"): ``shutdown_timeout``
for the running jobs, then the flush (what is left of it, at least 5 s) for the
outcomes and hand-backs Redis has not taken, plus at most ``presence.LEAVE_WAIT_S`` for
the presence record. Before, the stop then waited up to 2 s for the heartbeat it had
sent itself, then for the reply to the record's delete (a handshake or reply deadline):
12.5 s for an idle worker, 20 s for a busy one with a grace of 3 s, with the default
deadlines.

Each test runs its own ``redis-server``, freezes it with SIGSTOP and always sends
SIGCONT before it ends. The reply deadline, the handshake bound and the time
``close()`` lets calls under way end (where it has one) are raised to ``LONG_S`` here:
a step of the stop that waits for a frozen Redis, or a call it leaves waiting there,
takes that long, so the liveness check (bound + 5 s) tells a bounded step from an
unbounded one whatever the defaults are. After the thaw no job is lost: each completes
once, and one whose outcome the stop could not write runs again once its lease
expired, never while its first run goes on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest
import redis

from _redis import RedisServer, frozen
from helpers import app_module, wait_until
from kitium_queue import JobQueue, JobStatus
from kitium_queue.keys import QueueKeys
from kitium_queue.presence import LEAVE_WAIT_S, PRESENCE_TTL_MS

pytestmark = pytest.mark.redis_only

#: The reply deadline and the handshake bound in these tests (s).
LONG_S = 60.0
GRACE_MS = 3000  # shutdown_timeout
FLUSH_S = 5.0  # the least a stop offers held outcomes for (README: "at least 5 s")
#: The documented bound of a stop whose jobs run to the end of its grace.
BOUND_S = GRACE_MS / 1000 + FLUSH_S + LEAVE_WAIT_S
#: Liveness, not speed: a stop that takes longer waited for a frozen Redis.
LIVENESS_S = BOUND_S + 5.0
LOCK_MS = 2000  # lock_duration: jobs the stop could not hand back run again soon after
LEFT = "presence record is left to expire"


@pytest.fixture(autouse=True)
def long_deadlines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("kitium_queue.connerrors.REPLY_DEADLINE_S", LONG_S)
    monkeypatch.setattr("kitium_queue.scripts.REPLY_TIMEOUT_S", LONG_S)
    monkeypatch.setattr("kitium_queue.pools.HANDSHAKE_TIMEOUT_S", LONG_S)
    # How long close() lets calls under way end: a call the stopped worker left waiting
    # on the frozen Redis (its last heartbeat) would hold it that long.
    monkeypatch.setattr("kitium_queue.context.CLOSE_GRACE_S", LONG_S, raising=False)


class Runs:
    """Every run of every job, in any worker of this process: a job's first run here
    sleeps ``data["s"]`` (``first``: as if it had run elsewhere already), a later one
    ends at once; two runs of one job at once are noted."""

    def __init__(self, *, first: bool = True) -> None:
        self.first = first
        self.count: dict[str, int] = {}
        self.running: set[str] = set()
        self.overlaps: list[str] = []

    async def __call__(self, job: Any) -> str:
        if job.id in self.running:
            self.overlaps.append(job.id)
        self.running.add(job.id)
        self.count[job.id] = self.count.get(job.id, 0) + 1
        try:
            first = self.first and self.count[job.id] == 1
            await asyncio.sleep(job.data["s"] if first else 0.01)
        finally:
            self.running.discard(job.id)
        return "done"


def _queue(srv: RedisServer, runs: Runs) -> JobQueue:
    q = JobQueue(
        "fstop",
        redis=srv.url,
        worker={"concurrency": 4, "shutdown_timeout": GRACE_MS},
        settings={"lock_duration": LOCK_MS},
    )
    q.process("t", runs)
    return q


async def _timed(aw: Awaitable[Any], what: str) -> float:
    started = time.monotonic()
    try:
        await asyncio.wait_for(aw, LIVENESS_S)
    except asyncio.TimeoutError:
        pytest.fail(f"{what} on a frozen Redis did not end within {LIVENESS_S:g} s")
    return time.monotonic() - started


async def _busy(srv: RedisServer, runs: Runs) -> tuple[JobQueue, list[str]]:
    """A worker running four jobs: two end within the grace, two outlast it."""
    q = _queue(srv, runs)
    ids = [await q.add_job("t", {"s": s}) for s in (1.0, 1.0, 60.0, 60.0)]
    await q.start()
    await wait_until(lambda: len(runs.running) == 4, 10)
    return q, ids


async def _none_lost(srv: RedisServer, runs: Runs, ids: list[str]) -> None:
    """After the thaw a new worker finishes what the stopped one left: every job ends
    completed, none ran twice at once, and each ran once or again after its lease."""
    q = _queue(srv, runs)
    try:
        await q.start()

        async def drained() -> bool:
            return (await q.get_stats()).completed == len(ids)

        await wait_until(drained, 30, interval=0.1)
        stats = await q.get_stats()
        assert (stats.waiting, stats.active, stats.failed, stats.dlq) == (0, 0, 0, 0)
        for jid in ids:
            info = await q.get_job_status(jid)
            assert info is not None and info.status == JobStatus.COMPLETED, (jid, info)
        assert not runs.overlaps
        before = 1 if runs.first else 0  # the runs of the stopped worker this counts
        # The two that ended in the grace: their outcome was written on the thaw, or
        # they ran again; the two cut off at the end of the grace ran again, once.
        assert all(runs.count.get(jid, 0) - before in (0, 1) for jid in ids), runs.count
        assert [runs.count[jid] - before for jid in ids[2:]] == [1, 1], runs.count
    finally:
        await q.close()


def _record_gone_or_expiring(srv: RedisServer, worker_id: str) -> None:
    client = redis.Redis(port=srv.port)
    try:
        ttl = client.pttl(QueueKeys("fstop").worker(worker_id))
        assert ttl == -2 or 0 < ttl <= PRESENCE_TTL_MS, ttl
    finally:
        client.close()


def _left(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if LEFT in r.getMessage()]


# ------------------------------------------------------------------ in-process stops
async def test_idle_worker_frozen_before_close(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    q = _queue(server, Runs())
    await q.start()
    worker_id = q.worker.id
    await asyncio.sleep(0.5)  # its first claims answered: it waits for a job
    try:
        with caplog.at_level(logging.WARNING, logger="kitium_queue"), frozen(server):
            took = await _timed(q.close(), "close() of an idle worker")
        assert took < LIVENESS_S
        said = _left(caplog)  # said once, with why (a claim in flight: the flush's error)
        assert len(said) == 1 and "Redis did not" in said[0], said
        _record_gone_or_expiring(server, worker_id)
    finally:
        await q.close()


async def test_busy_worker_frozen_before_close(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    runs = Runs()
    q, ids = await _busy(server, runs)
    worker_id = q.worker.id
    try:
        with caplog.at_level(logging.WARNING, logger="kitium_queue"), frozen(server):
            took = await _timed(q.close(), "close() of a worker running jobs")
        assert took < LIVENESS_S
        said = _left(caplog)
        assert len(said) == 1 and "flush" in said[0], said  # the flush's error says why
        _record_gone_or_expiring(server, worker_id)
    finally:
        await q.close()
    await _none_lost(server, runs, ids)


async def test_busy_worker_frozen_mid_stop(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    runs = Runs()
    q, ids = await _busy(server, runs)
    worker = q.worker
    try:
        with caplog.at_level(logging.WARNING, logger="kitium_queue"):
            started = time.monotonic()
            stop = asyncio.ensure_future(worker.stop())
            await asyncio.sleep(0.5)  # in the grace: two jobs end while Redis is frozen
            with frozen(server):
                await _timed(asyncio.shield(stop), "worker.stop() with Redis frozen mid-stop")
                await _timed(q.close(), "close() after that stop")
        assert time.monotonic() - started < LIVENESS_S
        assert len(_left(caplog)) == 1, _left(caplog)
    finally:
        await q.close()
    await _none_lost(server, runs, ids)


# ------------------------------------------------------------------ SIGTERM to the CLI
#: The CLI's ``worker`` command, with the deadlines of these tests.
_CLI = (
    "import sys\n"
    "import kitium_queue.connerrors, kitium_queue.context, kitium_queue.pools\n"
    "import kitium_queue.scripts\n"
    f"kitium_queue.connerrors.REPLY_DEADLINE_S = {LONG_S}\n"
    f"kitium_queue.context.CLOSE_GRACE_S = {LONG_S}\n"
    f"kitium_queue.scripts.REPLY_TIMEOUT_S = {LONG_S}\n"
    f"kitium_queue.pools.HANDSHAKE_TIMEOUT_S = {LONG_S}\n"
    "from kitium_queue.cli import main\n"
    "main(sys.argv[1:], prog_name='kitium-queue')\n"
)


async def test_sigterm_to_the_cli_worker_frozen_before(server: RedisServer, tmp_path: Path) -> None:
    source = (
        "import asyncio\n"
        "from kitium_queue import JobQueue\n"
        f"queue = JobQueue('fstop', redis={server.url!r},\n"
        f"    settings={{'lock_duration': {LOCK_MS}}},\n"
        f"    worker={{'concurrency': 4, 'shutdown_timeout': {GRACE_MS}}})\n"
        "@queue.process('t')\n"
        "async def t(job):\n"
        "    await asyncio.sleep(job.data['s'])\n"
    )
    runs = Runs(first=False)  # the child ran them first
    producer = JobQueue("fstop", redis=server.url)
    ids = [await producer.add_job("t", {"s": s}) for s in (1.0, 1.0, 60.0, 60.0)]
    await producer.close()
    with app_module(tmp_path, source, "kq_fstop") as module:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
        child = subprocess.Popen(
            [sys.executable, "-c", _CLI, "worker", f"{module}:queue"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
    try:
        admin = redis.Redis(port=server.port)
        try:
            await wait_until(lambda: admin.zcard(QueueKeys("fstop").active) == 4, 20)
        finally:
            admin.close()
        with frozen(server):
            child.send_signal(signal.SIGTERM)
            started = time.monotonic()
            try:
                await asyncio.to_thread(child.wait, LIVENESS_S)
            except subprocess.TimeoutExpired:
                pytest.fail(f"SIGTERM on a frozen Redis: the worker ran past {LIVENESS_S:g} s")
            took = time.monotonic() - started
        assert took < LIVENESS_S and child.returncode == 0
        stderr = child.stderr.read() if child.stderr is not None else ""
        assert stderr.count(LEFT) == 1, stderr
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(10)
        if child.stderr is not None:
            child.stderr.close()
    await _none_lost(server, runs, ids)
