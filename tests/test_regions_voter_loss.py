"""A voter region whose Redis loses its latest writes must not hand out a second
primary.

Region b votes and grants region a the primary's lease; its Redis fails over to a
replica that was cut off from it a while ago (asynchronous replication), so b's
record forgets its latest grants to a. a is then cut off from the managers but still
takes work under its lease. An election for b used to win at once (b's own vote on the
promoted replica, and c's), and a and b both took jobs as the primary until a's lease
ran out. The record remembers which server wrote it (``vrun``: run id and replication
id); a vote asked of another server waits one lease (``held``), by which time every
grant the record may have lost has run out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_sync

from _redis import RedisServer
from helpers import wait_replica_online
from kitium_queue.features.regions.config import RegionConfig
from kitium_queue.features.regions.election import Elections
from kitium_queue.features.regions.record import RegionCopy

pytestmark = pytest.mark.redis_only

LEASE_MS = 1500


@pytest.fixture
def servers() -> Iterator[tuple[RedisServer, RedisServer, RedisServer, RedisServer]]:
    # b serves its replica's full sync at once (Redis waits 5 s by default).
    a, b, c = (
        RedisServer().start(),
        RedisServer("--repl-diskless-sync-delay", "0").start(),
        RedisServer().start(),
    )
    replica = RedisServer(
        "--replicaof", "127.0.0.1", str(b.port), "--repl-diskless-sync-delay", "0"
    ).start()
    try:
        wait_replica_online(b.port, replica.port)
        yield a, b, c, replica
    finally:
        for s in (replica, a, b, c):
            s.close()


def _copy(name: str, url: str) -> RegionCopy:
    return RegionCopy(RegionConfig(name, url), "orders", {"prefix": "kq"}, 2.0)


async def _close(*copies: RegionCopy) -> None:
    for c in copies:
        for q in (c.lane, c.home):
            await q.close()


async def test_a_voter_that_lost_its_grants_does_not_elect_a_second_primary(
    servers: tuple[RedisServer, RedisServer, RedisServer, RedisServer],
) -> None:
    sa, sb, sc, replica = servers
    a, b, c = _copy("a", sa.url), _copy("b", sb.url), _copy("c", sc.url)
    b2: Any = None
    try:
        el = Elections([a, b, c], majority=2, lease_ms=LEASE_MS)
        for copy in (a, b, c):
            await copy.op("read")
        a.reachable, b.reachable, c.reachable = True, True, False
        assert (await el.elect(a, 1)).won
        # b's replica is cut off from its primary (it receives no more writes); a's
        # lease is renewed on b's primary for longer than a lease, so the replica's
        # grant to a has run out.
        with redis_sync.Redis(port=replica.port) as r:
            r.execute_command("REPLICAOF", "NO", "ONE")
        end = time.monotonic() + 2 * LEASE_MS / 1000
        while time.monotonic() < end:
            t0 = (await a.op("read")).now
            assert await el.renew(a, 1, t0)
            await asyncio.sleep(0.2)
        t0 = (await a.op("read")).now
        assert await el.renew(a, 1, t0)  # a holds the primary's lease from here
        a_until = (await a.op("read")).lease
        # b's primary dies; its replica, behind, now serves region b.
        await asyncio.to_thread(sb.kill)
        await _close(b)
        b2 = _copy("b", replica.url)
        lost = await b2.op("read")
        assert lost.vfor == "a" and lost.vuntil < lost.now  # its latest grants are gone
        # a is cut off from the managers; it still takes work until its lease ends.
        el2 = Elections([a, b2, c], majority=2, lease_ms=LEASE_MS)
        a.reachable, b2.reachable, c.reachable = False, True, True
        won_at = None
        while won_at is None:
            e2 = await el2.elect(b2, 2)
            now = (await b2.op("read")).now
            if e2.won:
                won_at = now
            else:
                assert now < a_until + LEASE_MS, e2.describe()  # it does win, later
                await asyncio.sleep(0.05)
        # Never two primaries: b is elected only once a's lease has run out.
        assert won_at >= a_until, (won_at, a_until)
        assert (await a.op("read")).lease <= (await a.op("read")).now
    finally:
        await _close(a, c, *([b2] if b2 is not None else []))
        if b2 is None:
            await _close(b)
