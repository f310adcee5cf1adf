"""Regions on real ``redis-server`` processes, and load across a failover: shared by the
multi-region tests (tests/test_regions_failover.py) and the chaos scenario
(chaos/scenarios/s15_regions.py).

    async with Regions(3, aof=True) as rg:                 # three private servers
        producer = rg.manager(background=True)               # a GlobalQueueManager
        run = RegionLoad(rg, workers=2, rate=50)             # producer + 2 worker managers
        await run.start()
        await run.produce_for(2.0)
        rg.servers[0].kill()                                 # SIGKILL the primary
        ...

Every manager of a run is its own ``GlobalQueueManager`` with its own connections, as
separate processes would be. ``via`` lets a manager reach a region through a loopback
proxy (``chaos/proxy.py``) that a test can cut to make a partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from _redis import RedisServer
from kitium_queue import EventData, FencedError
from kitium_queue.features.regions import GlobalQueueManager
from kitium_queue.features.regions.errors import RegionUnavailableError, ReplicationTimeoutError

__all__ = [
    "NAMES",
    "RegionLoad",
    "Regions",
    "accepted",
    "overlapping_epochs",
    "partition_managers",
    "primary_states",
]

NAMES = ("us-east-1", "eu-west-1", "ap-southeast-1", "sa-east-1", "af-south-1")


class Regions:
    """``n`` private redis-servers, one per region (``NAMES``), and managers over them."""

    def __init__(
        self,
        n: int = 3,
        *,
        aof: bool = False,
        timeout_ms: int = 1500,
        mode: str = "async",
        min_acks: int | None = None,
        name: str | None = None,
    ) -> None:
        args = ("--appendonly", "yes", "--appendfsync", "always") if aof else ()
        self.servers = [RedisServer(*args) for _ in range(n)]
        self.names = list(NAMES[:n])
        self.timeout_ms = timeout_ms
        self.mode = mode
        self.min_acks = min_acks
        self.name = name or f"rg-{uuid.uuid4().hex[:8]}"
        self.managers: list[GlobalQueueManager] = []

    async def __aenter__(self) -> Regions:
        for s in self.servers:
            s.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        managers, self.managers = self.managers, []
        await asyncio.gather(*(m.close() for m in managers), return_exceptions=True)
        for s in self.servers:
            s.close()

    def url(self, i: int) -> str:
        return self.servers[i].url

    def config(self, via: Mapping[int, str] | None = None, **extra: Any) -> dict[str, Any]:
        """The configuration: region ``i`` at its server, or at ``via[i]`` (a proxy)."""
        via = via or {}
        regions = [
            {
                "region": n,
                "redis": via.get(i, self.url(i)),
                "is_primary": i == 0,
                "priority": i if i else 100,
            }
            for i, n in enumerate(self.names)
        ]
        rep: dict[str, Any] = {"enabled": True, "mode": self.mode}
        if self.min_acks is not None:
            rep["min_acks"] = self.min_acks
        cfg: dict[str, Any] = {
            "name": self.name,
            "regions": regions,
            "replication": rep,
            "failover": {"enabled": True, "timeout_ms": self.timeout_ms},
        }
        cfg.update(extra)
        return cfg

    async def manager(
        self, via: Mapping[int, str] | None = None, **extra: Any
    ) -> GlobalQueueManager:
        m = GlobalQueueManager()
        await m.initialize(self.config(via, **extra))
        self.managers.append(m)
        return m


async def partition_managers(
    rg: Regions,
) -> tuple[list[Any], GlobalQueueManager, list[GlobalQueueManager], GlobalQueueManager]:
    """The managers of a partition: a loopback proxy in front of each region
    (``chaos/proxy.py``); a producer and two worker managers reach region 0 (the first
    primary) through its proxy, and one more producer reaches regions 1 and 2 through
    theirs. Downing every proxy cuts region 0 off from the majority's managers and the
    other regions off from the last producer. Returns (proxies, producer, workers, the
    cut-off producer); the caller stops the proxies."""
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
    from chaos.proxy import Proxy

    proxies = [Proxy(s.port).start() for s in rg.servers]
    majority = {0: proxies[0].url}
    producer = await rg.manager(majority)
    workers = [await rg.manager(majority), await rg.manager(majority)]
    cut_off = await rg.manager({1: proxies[1].url, 2: proxies[2].url})
    return proxies, producer, workers, cut_off


class RegionLoad:
    """A producer adding numbered jobs at ``rate`` per second and ``workers`` worker
    managers completing them, with the bookkeeping of a failover:

    * ``acked``: job id -> (number, time) for every ``add_job`` that returned;
    * ``errors``: add_job failures (not acknowledged: the caller knows);
    * ``completions``: job id -> [(time, region of the primary then)] from the
      workers' ``job-completed`` events (recorded completions, one per event);
    * ``starts``: job id -> [(time, region of the primary then)], one per run of the
      processor (a run's outcome may be recorded late, or never).
    """

    def __init__(
        self,
        rg: Regions,
        producer: GlobalQueueManager,
        workers: Iterable[GlobalQueueManager],
        *,
        rate: float = 50.0,
        work_s: float = 0.01,
    ) -> None:
        self.rg = rg
        self.producer = producer
        self.workers = list(workers)
        self.rate = rate
        self.work_s = work_s
        self.acked: dict[str, tuple[int, float]] = {}
        self.errors: Counter[str] = Counter()
        self.completions: dict[str, list[tuple[float, str | None]]] = defaultdict(list)
        self.starts: dict[str, list[tuple[float, str | None]]] = defaultdict(list)
        self._n = 0
        self._task: asyncio.Task[None] | None = None
        self._stop = False

    async def start(self, concurrency: int = 4) -> None:
        for w in self.workers:
            self._register(w)
            await w.start(concurrency=concurrency)
        self._task = asyncio.get_running_loop().create_task(self._produce())

    def _register(self, w: GlobalQueueManager) -> None:
        async def work(job: Any) -> int:
            self.starts[job.id].append((time.time(), w.primary))
            await asyncio.sleep(self.work_s)
            return int(job.data["n"])

        def completed(data: EventData) -> None:
            if data.job_id is not None:
                self.completions[data.job_id].append((time.time(), w.primary))

        w.process("load", work)
        w.on("job-completed", completed)

    async def _produce(self) -> None:
        period = 1.0 / self.rate
        nxt = time.monotonic()
        while not self._stop:
            n = self._n
            self._n += 1
            try:
                # Kept once completed (no retention), so that a job missing at the new
                # primary is one that never reached it.
                jid = await self.producer.add_job("load", {"n": n}, remove_on_complete=False)
                self.acked[jid] = (n, time.time())
            except (RegionUnavailableError, FencedError, ReplicationTimeoutError) as exc:
                self.errors[type(exc).__name__] += 1
            except Exception as exc:  # any other failure: counted, never acknowledged
                self.errors[type(exc).__name__] += 1
            nxt += period
            await asyncio.sleep(max(0.0, nxt - time.monotonic()))

    async def stop(self) -> None:
        self._stop = True
        task, self._task = self._task, None
        if task is not None:
            with contextlib.suppress(Exception):
                await task

    def acked_after(self, t: float) -> list[str]:
        return [j for j, (_, at) in self.acked.items() if at > t]

    def first_completion_after(self, t: float, acked_after: float | None = None) -> float | None:
        """The time of the first recorded completion after ``t`` (of a job acknowledged
        after ``acked_after``, when given)."""
        best: float | None = None
        fresh = None if acked_after is None else set(self.acked_after(acked_after))
        for jid, times in self.completions.items():
            if fresh is not None and jid not in fresh:
                continue
            for at, _ in times:
                if at > t and (best is None or at < best):
                    best = at
        return best

    def twice(self) -> dict[str, list[tuple[float, str | None]]]:
        return {j: c for j, c in self.completions.items() if len(c) > 1}


async def primary_states(m: GlobalQueueManager, ids: list[str]) -> dict[str, str | None]:
    """The state field of each job of ``ids`` at the current primary (None: no record),
    read in one pipeline."""
    lane = m.region(m.primary).lane
    client = await lane.client()
    pipe = client.pipeline(transaction=False)
    for j in ids:
        pipe.hget(lane.keys.job(j), "st")
    states = await pipe.execute()
    return {j: (s.decode() if s else None) for j, s in zip(ids, states, strict=True)}


async def accepted(m: GlobalQueueManager) -> dict[str, tuple[int, int]]:
    """Every job any reachable region holds or reports as stranded: id -> (the epoch it
    was accepted in, when it was created: the accepting primary's clock, ms)."""
    out: dict[str, tuple[int, int]] = {}
    for name in m.regions:
        c = m.region(name)
        if not c.reachable:
            continue
        q = c.lane
        client = await q.client()
        keys = [k async for k in client.scan_iter(match=q.keys.base + "job:*", count=1000)]
        for key in keys:
            ep, ts = await client.hmget(key, "ep", "ts")
            if ts is None:
                continue  # deleted since the scan saw it (retention, a region emptied)
            jid = key.decode().rsplit(":", 1)[1]
            out.setdefault(jid, (int(ep or -1), int(ts)))
    for s in await m.stranded():
        out.setdefault(s.id, (s.epoch if s.epoch is not None else -1, s.created_ms))
    return out


def overlapping_epochs(jobs: Mapping[str, tuple[int, int]]) -> list[tuple[int, int]]:
    """Pairs of epochs whose acceptance times interleave (a job of the earlier epoch
    created after one of the later): two primaries accepting at once."""
    spans: dict[int, tuple[int, int]] = {}
    for ep, ts in jobs.values():
        lo, hi = spans.get(ep, (ts, ts))
        spans[ep] = (min(lo, ts), max(hi, ts))
    eps = sorted(e for e in spans if e >= 0)
    return [(a, b) for a, b in itertools.pairwise(eps) if spans[a][1] >= spans[b][0]]
