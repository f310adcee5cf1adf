"""A primary region whose Redis hangs (SIGSTOP: it keeps its connections and answers
nothing) on private ``redis-server`` processes (ports 25000-25099): the add in flight
there is given up after the failover timeout and says honestly that it may or may not
have been stored; the monitor's rounds go on (the hung region's check has its
deadline); after the failover every add goes to the new primary at once, and none is
refused by a fence while a majority of the regions is healthy."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid

import pytest

from _redis import RedisServer, RedisServerError
from kitium_queue import FencedError
from kitium_queue.features.regions import GlobalQueueManager
from kitium_queue.features.regions.errors import RegionUnavailableError

pytestmark = pytest.mark.redis_only

NAMES = ("us-east-1", "eu-west-1", "ap-southeast-1")
TIMEOUT_MS = 3000
#: How long the primary's server stays stopped.
HANG_S = 12.0
#: Slack on every bound (a busy test host).
SLACK_S = 3.0


def _servers() -> list[RedisServer]:
    """Three servers on ports of 25000-25099 (the first three that are free)."""
    out: list[RedisServer] = []
    port = 25000 + (os.getpid() % 10) * 10
    while len(out) < 3 and port < 25100:
        srv = RedisServer(port=port)
        try:
            out.append(srv.start())
        except RedisServerError:  # taken: the next one
            srv.close()
        port += 1
    if len(out) < 3:
        for s in out:
            s.close()
        pytest.skip("no three free ports in 25000-25099")
    return out


async def test_a_hung_primary_holds_up_no_producer_beyond_the_failover_timeout() -> None:
    servers = _servers()
    hung = servers[0]
    stopped = False
    manager = GlobalQueueManager()
    try:
        await manager.initialize(
            {
                "name": f"hang-{uuid.uuid4().hex[:8]}",
                "regions": [
                    {"region": n, "redis": s.url, "is_primary": i == 0, "priority": i + 1}
                    for i, (n, s) in enumerate(zip(NAMES, servers, strict=True))
                ],
                "replication": {"enabled": True},
                "failover": {"enabled": True, "timeout_ms": TIMEOUT_MS},
            }
        )
        assert manager.primary == NAMES[0]
        assert manager.monitor is not None
        done: list[tuple[float, float, str | None, BaseException | None]] = []
        rounds: list[tuple[float, float]] = []
        moved_at: list[float] = []  # when this process first saw another primary

        async def add(k: int) -> None:
            started = time.monotonic()
            error: BaseException | None = None
            try:
                await manager.add_job("hang", {"k": k})
            except Exception as exc:
                error = exc
            done.append((started, time.monotonic(), manager.primary, error))

        async def watch_rounds() -> None:
            # Each round of the monitor, timed by hand from outside.
            assert manager.monitor is not None
            while True:
                s = time.monotonic()
                await manager.monitor.tick()
                rounds.append((s, time.monotonic()))
                if manager.primary != NAMES[0] and not moved_at:
                    moved_at.append(time.monotonic())
                await asyncio.sleep(0.1)

        tasks: list[asyncio.Task[None]] = []
        os.kill(hung.pid or 0, signal.SIGSTOP)
        stopped = True
        t_stop = time.monotonic()
        watcher = asyncio.create_task(watch_rounds())
        try:
            while time.monotonic() - t_stop < HANG_S:
                tasks.append(asyncio.create_task(add(len(tasks))))
                await asyncio.sleep(0.25)
            # Everything ended while the server was still stopped (none waits for it).
            await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT_MS / 1000 + SLACK_S)
            t_all_done = time.monotonic()
            assert t_all_done - t_stop < HANG_S + TIMEOUT_MS / 1000 + SLACK_S
        finally:
            watcher.cancel()
            os.kill(hung.pid or 0, signal.SIGCONT)
            stopped = False
        t_cont = time.monotonic()

        # Another region took over while the primary hung.
        moved = [f for f in manager.failovers if f.previous == NAMES[0]]
        assert moved and moved[0].primary != NAMES[0], manager.failovers
        # Every add ended before the hung server was let go, each within the failover
        # timeout and some slack.
        assert len(done) == len(tasks)
        for started, ended, _, _ in done:
            assert ended < t_cont
            took = ended - started
            assert took < TIMEOUT_MS / 1000 + SLACK_S, (started - t_stop, took)
        errors = [e for *_, e in done if e is not None]
        # No fence refusal reaches a producer: two of the three regions answer.
        assert not [e for e in errors if isinstance(e, FencedError)], errors
        # An add given up on the hung primary says so honestly, and what holds now.
        for e in errors:
            assert isinstance(e, RegionUnavailableError), repr(e)
            text = str(e)
            assert "may or may not have been stored" in text
            assert NAMES[0] in text
        # Once the new primary was known, every add went there and was stored at once.
        assert moved_at, "the failover was not seen while the primary hung"
        after = [d for d in done if d[0] > moved_at[0]]
        assert len(after) >= 10
        assert all(d[3] is None for d in after), [(d[0] - t_stop, d[3]) for d in after]
        assert all(d[1] - d[0] < SLACK_S for d in after), [d[1] - d[0] for d in after]
        # The monitor's rounds went on: each bounded by the per-region deadline.
        per_region_s = manager.region(NAMES[0]).timeout_s
        assert len(rounds) >= 5
        for s, e in rounds:
            assert e - s < 3 * per_region_s + SLACK_S, e - s
        # An error raised once another region had taken over names it.
        for _, _, primary, e in done:
            if e is not None and primary != NAMES[0]:
                assert f"region {primary} has taken over" in str(e), str(e)
    finally:
        if stopped:
            os.kill(hung.pid or 0, signal.SIGCONT)
        try:
            await asyncio.wait_for(manager.close(), 60)
        finally:
            for s in servers:
                s.close()
