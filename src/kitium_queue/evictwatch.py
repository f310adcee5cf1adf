"""Keys Redis evicts while the workers run: noticed, and the jobs they strand put back.

A ``maxmemory-policy`` that may evict keys is refused at connect unless the queue opted
out (``settings={"allow_eviction": True}``), but the policy can change while the workers
run (``CONFIG SET``, a managed service's parameter group), and an opted-out queue lives
with evictions by choice. Two kinds of loss follow:

* a **job record** evicted while a state set lists it: the scripts meet it, dead-letter
  the job ("job record missing") and count it (``missing.py``);
* a **state set** evicted (``wait``, ``delayed``, ``active``...): the records it listed
  stay, but nothing names them any more. No worker claims them, and nothing counts
  them: only a walk of the records finds them (``orphans.py``).

``eviction_service(queue)`` is a ``LeaderService`` each worker runs (one process of the
queue at a time does the work): every ``CHECK_S`` it reads the server's ``INFO``
(``evicted_keys``, and the policy). When Redis evicted keys since its last look (or had
evicted some when it began to look), it walks the queue's job records and puts the
orphans back (``orphans.walk``, repair; the count it covered is kept in the queue's
``evictions-walked`` key, so a new leader does not walk again for the same evictions),
at most once every ``WALK_GAP_S`` and never
more than ``1 / WALK_GAP_FACTOR`` of the time (a walk of a million records takes about a
minute, in short steps). A policy that turned evicting on a queue that did not opt out
is reported as an error, once per policy. A user without ``INFO`` is not watched (the
connect check said so); one without ``SCAN`` is told once which command walks the
records by hand. Never raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from typing import TYPE_CHECKING, Any

from redis.exceptions import NoPermissionError

from .leader import LeaderService
from .limits import get_logger, reply_int, reply_text, safe_text
from .serverinfo import SAFE_POLICY, node_info

if TYPE_CHECKING:
    from .orphans import OrphanReport
    from .queue import JobQueue

__all__ = [
    "CHECK_S",
    "NAME",
    "WALK_GAP_FACTOR",
    "WALK_GAP_S",
    "EvictionService",
    "EvictionWatch",
    "eviction_service",
]

log = get_logger(__name__)

#: The service's name (and leader role).
NAME = "eviction-watch"
#: How often the leading process reads the server's eviction count (s).
CHECK_S = 30.0
#: At least this long between two walks of the job records after evictions (s) ...
WALK_GAP_S = 300.0
#: ... and at least this many times as long as the last walk took.
WALK_GAP_FACTOR = 20
#: The leader's lease: a watch that died is taken over within this long (ms).
LEASE_MS = 60_000
#: The server's eviction count the queue's last walk covered (a string key of the
#: queue): a new leader (after a deploy) walks only for evictions since. Kept a week.
WALKED_KEY = "evictions-walked"
WALKED_TTL_MS = 7 * 86_400_000


class EvictionWatch:
    """The watch of one queue: ``look()`` once per ``CHECK_S`` while leading.

    Attributes:
        evicted: the server's ``evicted_keys`` at the last look (None: not read yet).
        walks: walks of the job records run after evictions.
        last_report: what the last walk found and put back.
    """

    def __init__(self, queue: JobQueue, *, clock: Any = time.monotonic) -> None:
        self.queue = queue
        self._clock = clock
        self.evicted: int | None = None
        self.walks = 0
        self.last_report: OrphanReport | None = None
        self._pending = False  # evictions seen, walk not run yet (within the gap)
        self._next_walk = 0.0
        self._policy_said: str | None = None
        self._scan_said = False

    async def serve(self, term: Any) -> None:
        """The leader's body: look, then wait ``CHECK_S`` (a little less at random, so
        many queues do not look at the same moment)."""
        while True:
            await self.look()
            await asyncio.sleep(CHECK_S * random.uniform(0.9, 1.0))

    async def look(self) -> None:
        """Read the eviction count and the policy; walk the records when Redis evicted
        keys since the last look and the gap since the last walk has passed."""
        q = self.queue
        try:
            client = await q.client()
            stats = await node_info(client, "stats", q.keys.wait)
            memory = await node_info(client, "memory", q.keys.wait)
            if self.evicted is None:  # the count the queue's last walk covered
                self.evicted = reply_int(await client.get(q.keys.extra(WALKED_KEY))) or None
        except Exception:  # no INFO for this user, Redis away or busy: look again later
            return
        policy = reply_text(memory.get("maxmemory_policy", SAFE_POLICY))
        self._check_policy(policy)
        if "evicted_keys" not in stats:
            return
        evicted = reply_int(stats.get("evicted_keys"))
        before, self.evicted = self.evicted, evicted
        # A count lower than the last one: the server restarted or its stats were reset.
        if evicted > (0 if before is None or evicted < before else before):
            self._pending = True
        if self._pending and self._clock() >= self._next_walk:
            await self._walk(before, evicted)

    def _check_policy(self, policy: str) -> None:
        if policy in (SAFE_POLICY, "") or self.queue.settings.allow_eviction:
            self._policy_said = None
            return
        if policy == self._policy_said:
            return
        self._policy_said = policy
        log.error(
            "queue %s: Redis maxmemory-policy is now %s (it was checked at connect): under "
            "memory pressure Redis deletes job records and state sets. The workers go on; "
            "after evictions this queue walks its job records and puts back the ones no "
            "set lists, and dead-letters jobs whose records are gone. Set "
            "'maxmemory-policy noeviction', or accept the risk with "
            "settings={'allow_eviction': True}",
            self.queue.name,
            policy,
        )

    async def _walk(self, before: int | None, evicted: int) -> None:
        from .orphans import walk

        q = self.queue
        began = self._clock()
        try:
            report = await walk(q, repair=True)
        except NoPermissionError:
            self._pending = False  # not again until Redis evicts more
            if not self._scan_said:
                self._scan_said = True
                log.warning(
                    "queue %s: Redis evicted keys (evicted_keys %d): a state set evicted "
                    "strands the jobs it listed, and this worker's Redis user may not "
                    "SCAN to find them. Run `kitium-queue jobs orphans APP --repair` as a "
                    "user allowed SCAN (acl redis-rules --feature repairs)",
                    q.name,
                    evicted,
                )
            return
        except Exception as exc:  # Redis away, refused...: try again after a gap
            self._next_walk = self._clock() + WALK_GAP_S
            log.warning(
                "queue %s: the walk of job records after evictions failed (%s); trying "
                "again in %.0f s",
                q.name,
                safe_text(exc)[:300],
                WALK_GAP_S,
            )
            return
        took = self._clock() - began
        with contextlib.suppress(Exception):  # a later leader walks for newer evictions only
            client = await q.client()
            await client.set(q.keys.extra(WALKED_KEY), evicted, px=WALKED_TTL_MS)
        self._pending = False
        self._next_walk = self._clock() + max(WALK_GAP_S, WALK_GAP_FACTOR * took)
        self.walks += 1
        self.last_report = report
        if not report.orphans:  # the walk warns itself of the orphans it put back
            log.info(
                "queue %s: Redis evicted keys (evicted_keys %s -> %d); %d job records "
                "walked in %.1f s, none left in no set",
                q.name,
                "?" if before is None else before,
                evicted,
                report.examined,
                took,
            )


class EvictionService(LeaderService):
    """The watch of a queue as a service its workers run, in one process at a time
    (a ``LeaderService`` with a lease of ``LEASE_MS``); ``watch`` is its ``EvictionWatch``."""

    def __init__(self, queue: JobQueue) -> None:
        self.watch = EvictionWatch(queue)
        super().__init__(NAME, self.watch.serve, lease_ms=LEASE_MS)
        self._later: asyncio.Task[None] | None = None

    async def start(self, queue: JobQueue) -> None:
        """Campaign a moment later (a fifth of ``CHECK_S`` to all of it, at random): not
        in the burst of the worker's start, so the watch needs no connection of its own
        in the queue's pool, and many queues started together do not look at once."""

        async def later() -> None:
            await asyncio.sleep(CHECK_S * random.uniform(0.2, 1.0))
            await LeaderService.start(self, queue)

        if self._later is None or self._later.done():
            self._later = asyncio.get_running_loop().create_task(later())

    async def stop(self) -> None:
        if self._later is not None:
            self._later.cancel()
            await asyncio.wait({self._later}, timeout=1.0)
            self._later = None
        await super().stop()


def eviction_service(queue: JobQueue) -> EvictionService:
    """The eviction watch of ``queue`` (``lifecycle`` adds it to a Redis queue's
    services when its first worker starts)."""
    return EvictionService(queue)
