"""Synchronous replication: ``add_job`` returns only once ``min_acks`` other regions
stored the job.

The jobs the primary just stored are read back from it (``rg_export.lua``) and applied
to every reachable secondary at once (``rg_apply.lua``); the call returns as soon as
``min_acks`` of them confirmed, within ``ack_timeout_ms``, else raises
``ReplicationTimeoutError`` (the late copies still land: they are idempotent).
Concurrent ``add_job`` calls share rounds, as the producer shares its script calls: a
call that comes while a round is in flight rides in the next one, so 100 coroutines
adding jobs cost a few rounds, not 100.

Why this gives RPO 0 for acknowledged jobs: a failover needs the votes of a majority, and
``min_acks`` (default ``regions - majority``) other regions plus the primary hold each
acknowledged job, so every majority contains a holder; the new primary fetches from its
reachable peers whatever they hold and it lacks before it serves (``Replicator.catch_up``).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from typing import Any

from ...limits import get_logger
from .copying import APPLIED, apply, as_entry, export, now_ms
from .errors import ReplicationTimeoutError
from .record import RegionCopy
from .topology import Topology

__all__ = ["Confirmer"]

log = get_logger(__name__)

_ROUND_MAX = 1000


def _s(v: Any) -> str:
    return v.decode(errors="replace") if isinstance(v, (bytes, bytearray)) else str(v)


class Confirmer:
    """See the module docstring."""

    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        self.cfg = topo.cfg.replication
        self.rounds = 0
        self._pending: dict[str, list[tuple[list[str], asyncio.Future[list[str]]]]] = {}
        self._busy: set[str] = set()
        self._bg: set[asyncio.Task[Any]] = set()

    async def confirm(self, primary: RegionCopy, ids: Sequence[str]) -> dict[str, list[str]]:
        """Return once ``min_acks`` other regions stored ``ids`` (stored by ``primary``):
        per job, the regions that confirmed it; or raise ``ReplicationTimeoutError``."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[str]] = loop.create_future()
        self._pending.setdefault(primary.name, []).append((list(ids), fut))
        if primary.name not in self._busy:
            self._busy.add(primary.name)
            task = loop.create_task(self._flush(primary))
            self._bg.add(task)
            task.add_done_callback(self._bg.discard)
        ok = await fut
        return {i: list(ok) for i in ids}

    async def _flush(self, primary: RegionCopy) -> None:
        queue = self._pending[primary.name]
        try:
            while queue:
                batch: list[tuple[list[str], asyncio.Future[list[str]]]] = []
                n = 0
                while queue and (not batch or n + len(queue[0][0]) <= _ROUND_MAX):
                    item = queue.pop(0)
                    batch.append(item)
                    n += len(item[0])
                ids = [i for part, _ in batch for i in part]
                try:
                    ok, why = await self._round(primary, ids)
                except Exception as exc:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                for part, fut in batch:
                    if fut.done():
                        continue
                    if why:
                        fut.set_exception(self._error(primary, part, ok, why))
                    else:
                        fut.set_result(ok)
        finally:
            self._busy.discard(primary.name)

    def _error(
        self, primary: RegionCopy, ids: list[str], ok: list[str], why: str
    ) -> ReplicationTimeoutError:
        return ReplicationTimeoutError(
            f"{len(ids)} job(s) stored by the primary {primary.name}, but {why}: not "
            "acknowledged as replicated (they reach the other regions asynchronously); "
            "adding them again with the same job_id or idempotency key adds nothing twice",
            ids,
            {i: list(ok) for i in ids},
        )

    def _late(self, region: RegionCopy, task: asyncio.Task[str]) -> None:
        """The end of one region's copy (its exception retrieved: asyncio would log it as
        never retrieved otherwise); a failure in one line, at DEBUG (the round reports
        what it waited for, the health checks a region that went away)."""
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.debug(
                "queue %s: synchronous copy to region %s failed: %s",
                self.topo.cfg.name,
                region.name,
                f"{type(exc).__name__}: {region.connection.redact(exc)}"[:200],
            )

    async def _round(self, primary: RegionCopy, ids: list[str]) -> tuple[list[str], str]:
        """One round: the regions that confirmed every job, and why that is too few
        (``""`` when it is enough)."""
        self.rounds += 1
        need = self.topo.cfg.min_acks
        targets = [s for s in self.topo.secondaries() if s.reachable]
        if len(targets) < need:
            return [], (
                f"only {len(targets)} other region(s) are reachable and replication.min_acks "
                f"is {need} (lower it, or add the jobs again once the regions are back)"
            )
        rows = await export(primary.lane, ids)
        entries = [as_entry(r, "put") for r in rows if _s(r["op"]) != "gone"]
        floor = now_ms()

        async def one(sec: RegionCopy) -> str:
            statuses = await apply(sec.lane, entries, floor=floor, region=sec.name)
            if all(s in APPLIED for s in statuses):
                return sec.name
            raise RuntimeError(f"region {sec.name} refused: {sorted(set(statuses) - APPLIED)}")

        tasks = [asyncio.ensure_future(one(s)) for s in targets]
        for s, t in zip(targets, tasks, strict=True):
            # Read whenever it ends: a copy left to finish after min_acks was met (or the
            # timeout) may fail later (its region went away) with nobody awaiting it.
            t.add_done_callback(functools.partial(self._late, s))
        ok: list[str] = []
        errors: list[str] = []
        try:
            for fut in asyncio.as_completed(tasks, timeout=self.cfg.ack_timeout_ms / 1000):
                try:
                    ok.append(await fut)
                except asyncio.TimeoutError:
                    raise
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])
                if len(ok) >= need:
                    break
        except asyncio.TimeoutError:
            pass
        finally:
            for t in tasks:
                if not t.done():
                    # Left to finish: a late copy is still a copy (and idempotent).
                    self._bg.add(t)
                    t.add_done_callback(self._bg.discard)
        if len(ok) >= need:
            return ok, ""
        detail = f"; errors: {'; '.join(errors)}" if errors else ""
        return ok, (
            f"{len(ok)} of the {need} other region(s) replication.min_acks requires "
            f"confirmed them within {self.cfg.ack_timeout_ms} ms{detail}"
        )
