"""Replication from the primary to the secondaries.

**Asynchronous (always, when enabled).** The primary's Lua fragments write an outbox
entry in the same atomic step as each new job, each job that ends, each retry, each
requeue and each erasure (``lua.py``). One process at a time (the leader of
``regions-replicator`` on the primary's queue) follows the outbox with one consumer
group per secondary (``rg:<region>``): it reads a batch, fetches the jobs the entries
name from the primary (``rg_export.lua``) and applies them to the secondary
(``rg_apply.lua``, idempotent), then acknowledges. A secondary that is unreachable
keeps its entries in its group (the outbox keeps them: nothing is trimmed until every
group acknowledged). Schedules are copied every ``schedule_sync_ms``.

**Joining.** Before following the stream, a secondary whose position is not in the
current primary's stream is brought level: a region that was the primary has what it
never replicated recorded as stranded (``stranded.py``), is emptied and copied afresh;
a region with no position (new, or its data lost) is copied afresh (``snapshot``);
a region that followed an earlier primary exchanges with the new one the copies either
received after the other's position (``merge_since``).

**Synchronous (opt-in)**: ``confirm.py``.

The lag of each secondary, in entries and in seconds (age of the oldest entry it has
not acknowledged), is in ``lag()``, ``get_global_stats()`` and the metrics adapter
(``regions.replication.lag_entries`` / ``regions.replication.lag_ms``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ...errors import FencedError
from ...leader import LeaderService, OutageLog
from ...limits import get_logger
from ...options import shown
from ...outbox import Outbox, OutboxEntry
from ...queue import JobQueue
from ..schedule_records import schedule_hash
from .copying import apply, as_entry, end_entry, export, merge_since, snapshot
from .record import RegionCopy
from .stranded import collect
from .topology import Topology

__all__ = ["Lag", "Replicator", "copy_schedules", "group_of"]

log = get_logger(__name__)
#: Most fields of a schedule hash rg_sched.lua copies (it has about 20).
_SCHEDULE_FIELDS = 100

SERVICE = "regions-replicator"
_BLOCK_MS = 500
_REPORT_EVERY_S = 1.0
_TRIM, _TRIM_EVERY_S = 10_000, 1.0
_TERMINAL = {"completed", "failed", "dlq"}


def group_of(region: str) -> str:
    """The consumer group of ``region`` on the primary's outbox."""
    return f"rg:{region}"


def _s(v: Any) -> str:
    return v.decode(errors="replace") if isinstance(v, (bytes, bytearray)) else str(v)


@dataclass(frozen=True, slots=True)
class Lag:
    """How far a secondary is behind: entries not yet applied, and the age (ms) of the
    oldest one; ``position``: the last entry it applied."""

    entries: int
    ms: int
    pending: int
    position: str


class Replicator:
    """Replication to the secondaries (see the module docstring).

    Args:
        topo: the regions.
        on_stranded: called with the records ``collect`` wrote when a former primary
            rejoins (the manager turns them into events).
    """

    def __init__(
        self,
        topo: Topology,
        on_stranded: Callable[[list[Any]], Awaitable[None]] | None = None,
    ) -> None:
        self.topo = topo
        self.cfg = topo.cfg.replication
        self.on_stranded = on_stranded
        self.consumer = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"[:100]
        self.service: LeaderService | None = None
        self._on: str | None = None  # the primary the service campaigns on
        self.applied = 0
        self.refused = 0
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------------ leadership
    async def follow_primary(self) -> None:
        """(Re)start the leader service on the current primary's queue. Serialised: two
        calls at once (a handover and a health check seeing it) must not leave a service
        behind, still campaigning for a former primary."""
        async with self._lock:
            primary = self.topo.primary_copy()
            label = None if primary is None else self.topo.source
            if label == self._on:
                return
            await self._stop()
            if primary is None or not self.cfg.enabled:
                return
            self._on = label
            lease = max(1000, self.topo.cfg.lease_ms)
            self.service = LeaderService(SERVICE, self._body, lease_ms=lease)
            await self.service.start(primary.lane)

    async def stop(self) -> None:
        async with self._lock:
            await self._stop()

    async def _stop(self) -> None:
        svc, self.service, self._on = self.service, None, None
        if svc is not None:
            await svc.stop()

    @property
    def leading(self) -> bool:
        return self.service is not None and self.service.is_leader

    async def _body(self, term: int) -> None:
        primary = self.topo.primary_copy()
        if primary is None:
            return
        source = self.topo.source
        loop = asyncio.get_running_loop()
        tasks = [
            loop.create_task(self._follow(primary, s, source)) for s in self.topo.secondaries()
        ]
        tasks.append(loop.create_task(self._schedules(primary)))
        tasks.append(loop.create_task(self._housekeeping()))
        try:
            # The loops only end by failing: one failure ends the term (the service logs
            # it and campaigns again); every loop stops with the body, whatever ends it.
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                t.result()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------ following
    async def _follow(self, primary: RegionCopy, sec: RegionCopy, source: str) -> None:
        outbox = Outbox(primary.lane)
        # The in-process memory:// store serves blocking reads from tasks of its own that
        # outlive a cancelled caller: poll it instead.
        polled = primary.connection.is_memory
        consumer = outbox.consumer(
            group_of(sec.name),
            self.consumer,
            start="0",
            count=self.cfg.batch,
            block_ms=0 if polled else _BLOCK_MS,
            claim_idle_ms=max(1000, self.topo.cfg.lease_ms),
            max_deliveries=1_000_000_000,
        )
        joined = False
        held: list[OutboxEntry] = []
        outage = OutageLog(f"queue {primary.queue_name}: replication to region {sec.name}")
        next_report = 0.0
        while True:
            if not sec.reachable:
                await asyncio.sleep(self.topo.cfg.check_interval_ms / 1000)
                continue
            try:
                if not joined:
                    await self.join(primary, sec, source)
                    joined = True
                if not held:
                    held = await consumer.read()
                    if not held and polled:
                        await asyncio.sleep(0.02)
                    elif held and len(held) < self.cfg.batch and self.cfg.linger_ms:
                        # A trickle: wait a moment for more, to apply them in one call.
                        await asyncio.sleep(self.cfg.linger_ms / 1000)
                        held += await consumer.read(self.cfg.batch - len(held), block_ms=0)
                if held:
                    # Held until applied: a failed apply is retried with the same batch, so
                    # the entries of one job stay in order.
                    await self.apply_batch(primary, sec, held, source)
                    await consumer.ack([e.id for e in held])
                    held = []
                outage.ok()
                if primary.lane.metrics is not None and time.monotonic() >= next_report:
                    next_report = time.monotonic() + _REPORT_EVERY_S
                    await self._report_lag(primary, sec)
            except asyncio.CancelledError:
                raise
            except FencedError as exc:
                # The secondary knows a later epoch: this term's source is no longer the
                # primary, and this process stops following it as soon as it sees the
                # change. Nothing was applied; the entries stay in the group.
                log.debug("queue %s: replication to %s: %s", primary.queue_name, sec.name, exc)
                await asyncio.sleep(self.topo.cfg.check_interval_ms / 1000)
            except Exception as exc:
                # Logged once per outage (the primary or the secondary), retried with
                # backoff; held entries stay unacknowledged in the group meanwhile.
                await outage.pause(exc)

    async def _report_lag(self, primary: RegionCopy, sec: RegionCopy) -> None:
        """The lag of ``sec`` to the metrics adapter (entries, ms), about once a second."""
        lag = await self.lag(primary, sec)
        metrics = primary.lane.metrics
        if lag is None or metrics is None:
            return
        tags = {"queue": primary.queue_name, "region": sec.name}
        try:
            metrics.observe("regions.replication.lag_entries", lag.entries, tags)
            metrics.observe("regions.replication.lag_ms", lag.ms, tags)
        except Exception:
            log.exception("metrics adapter failed on regions.replication.lag_*")

    async def apply_batch(
        self, primary: RegionCopy, sec: RegionCopy, batch: Sequence[OutboxEntry], source: str
    ) -> None:
        mine = [e for e in batch if e.topic == "rg"]
        wanted = [
            _s(e.fields.get("id", b"")) for e in mine if e.fields.get("op") in (b"add", b"req")
        ]
        rows = {_s(r["id"]): r for r in await export(primary.lane, list(dict.fromkeys(wanted)))}
        entries: list[list[Any]] = []
        for e in mine:
            op, jid = _s(e.fields.get("op", b"")), _s(e.fields.get("id", b""))
            # The entry's place in the outbox: its time (the source's clock) and its
            # sequence number within that ms.
            at_s, _, seq = e.id.partition("-")
            at = int(at_s)
            if op in ("add", "req"):
                row = rows.get(jid)
                if row is not None and _s(row["op"]) != "gone":
                    entries.append(
                        as_entry({**row, "at": at, "seq": seq}, "req" if op == "req" else "put")
                    )
            elif op == "end":
                entries.append(end_entry(sec.lane, e.fields, at, seq))
            elif op == "att":
                entries.append(
                    as_entry({"op": "att", "id": jid, "attempts": e.fields.get("a", b"0")})
                )
            elif op == "erase":
                entries.append(
                    as_entry(
                        {
                            "op": "erase",
                            "id": jid,
                            "state": "removed",
                            "ikey": e.fields.get("ik", b""),
                            "payload": e.fields.get("sj", b""),
                            "at": at,
                            "seq": seq,
                        }
                    )
                )
        last_ms = int(batch[-1].id.split("-", 1)[0])
        statuses = await apply(
            sec.lane,
            entries,
            pos=batch[-1].id,
            src=source,
            cutoff=max(0, last_ms - self.cfg.index_retention_ms),
            region=sec.name,
        )
        self.applied += len(statuses)
        refused = statuses.count("refused")
        if refused:
            self.refused += refused
            log.warning(
                "queue %s: region %s refused %d copied job(s) (a feature's accept slot, "
                "e.g. a full message group there)",
                primary.queue_name,
                sec.name,
                refused,
            )

    # ------------------------------------------------------------------ joining
    async def join(self, primary: RegionCopy, sec: RegionCopy, source: str) -> None:
        """Bring ``sec`` level with ``primary`` before following the stream."""
        rec = await sec.op("read")
        epoch, leader = self.topo.epoch, self.topo.primary
        if epoch is not None and leader is not None and (rec.epoch is None or rec.epoch < epoch):
            # Not told of the current epoch yet (the health checks may not have reached it):
            # tell it first, so that a former primary shows what it was ('former').
            rec = await sec.op("adopt", epoch, leader)
        if rec.src == source:
            return
        outbox = Outbox(primary.lane)
        await outbox.create_group(group_of(sec.name), "$")
        client = await primary.lane.client()
        last = await client.xrevrange(outbox.key, count=1)
        mark = _s(last[0][0]) if last else "0-0"
        if rec.former is not None:
            found = await collect(primary, sec, rec.former)
            if found and self.on_stranded is not None:
                await self.on_stranded(found)
            await sec.lane.clear(force=True)
            await self._destroy_groups(sec.lane)
            await sec.op("rejoin")
            counts = await snapshot(primary.lane, sec.lane, sec.name)
            how = "former primary: stranded work recorded, copied afresh"
        elif not rec.pos:
            counts = await snapshot(primary.lane, sec.lane, sec.name)
            how = "no position: copied afresh"
        else:
            up = await merge_since(
                sec.lane, primary.lane, (primary.record or rec).position_ms, primary.name
            )
            counts = await merge_since(primary.lane, sec.lane, rec.position_ms, sec.name)
            counts = {k: counts.get(k, 0) + up.get(k, 0) for k in {*counts, *up}}
            how = f"followed {rec.src}: exchanged the copies received since"
        await apply(sec.lane, [], pos=mark, src=source)
        log.info(
            "queue %s: region %s joined the replication from %s (%s; %s)",
            primary.queue_name,
            sec.name,
            source,
            how,
            ", ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "nothing to copy",
        )

    @staticmethod
    async def _destroy_groups(q: JobQueue) -> None:
        client = await q.client()
        key = q.keys.extra("outbox")
        try:
            groups = await client.xinfo_groups(key)
        except Exception:
            return
        left = 0
        for g in groups:
            name = _s(g["name"])
            if name.startswith("rg:"):
                await client.xgroup_destroy(key, name)
            else:
                left += 1
        if not left:
            # No group reads this outbox any more: its entries would never be trimmed.
            await client.delete(key)

    async def catch_up(self, target: RegionCopy) -> dict[str, int]:
        """A new primary ``target`` fetches from every reachable peer the copies they
        received after its own position (jobs acknowledged by the old primary that
        reached a peer but not ``target``)."""
        since = (target.record.position_ms if target.record else 0) or 0
        counts: dict[str, int] = {}
        for peer in self.topo.reachable():
            if peer is target:
                continue
            try:
                got = await merge_since(peer.lane, target.lane, since, target.name)
            except Exception as exc:
                log.warning(
                    "queue %s: catching up from region %s failed (%s); its copies newer "
                    "than the new primary's may be missing there",
                    target.queue_name,
                    peer.name,
                    type(exc).__name__,
                )
                continue
            for k, v in got.items():
                counts[k] = counts.get(k, 0) + v
        return counts

    async def _housekeeping(self) -> None:
        """Trim every reachable copy's outbox of what every group acknowledged (the
        primary's, and a former primary's left over from its term)."""
        while True:
            for c in self.topo.reachable():
                with contextlib.suppress(Exception):  # the next round tries again
                    box = Outbox(c.lane)
                    while await box.trim(_TRIM) >= _TRIM:
                        pass
            await asyncio.sleep(_TRIM_EVERY_S)

    # ------------------------------------------------------------------ schedules
    async def _schedules(self, primary: RegionCopy) -> None:
        while True:
            for sec in self.topo.secondaries():
                if sec.reachable:
                    try:
                        await copy_schedules(primary.lane, sec.lane)
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        log.debug("schedules not copied to %s: %s", sec.name, exc)
            await asyncio.sleep(self.cfg.schedule_sync_ms / 1000)

    # ------------------------------------------------------------------ lag
    async def lag(self, primary: RegionCopy, sec: RegionCopy) -> Lag | None:
        """How far ``sec`` is behind ``primary`` (None: no group yet)."""
        client = await primary.lane.client()
        key = primary.lane.keys.extra("outbox")
        try:
            groups = await client.xinfo_groups(key)
        except Exception:
            return None
        g = next((x for x in groups if _s(x["name"]) == group_of(sec.name)), None)
        if g is None:
            return None
        last = _s(g["last-delivered-id"])
        pending = int(g["pending"])
        oldest: str | None = None
        if pending:
            summary = await client.xpending(key, group_of(sec.name))
            oldest = _s(summary["min"]) if summary and summary.get("min") else None
        nxt = await client.xrange(key, "(" + last, "+", count=1)
        behind = g.get("lag")
        if behind is None:  # Redis < 7: count what follows the group's position
            behind = len(await client.xrange(key, "(" + last, "+", count=100_000))
        if oldest is None and nxt:
            oldest = _s(nxt[0][0])
        age = 0
        if oldest:
            sec_s, usec = await client.time()  # the primary's clock, as the entry ids
            age = max(0, int(sec_s) * 1000 + int(usec) // 1000 - int(oldest.split("-", 1)[0]))
        return Lag(int(behind) + pending, age, pending, last)


# When each damaged schedule was last reported (monotonic s): the copy runs every few
# seconds, the warning at most every _REPORT_EVERY_S per schedule.
_reported: dict[tuple[str, bytes], float] = {}
_REPORT_EVERY_S = 600.0


def _first_report(what: tuple[str, bytes]) -> bool:
    """Whether to report ``what`` now (not reported in the last ``_REPORT_EVERY_S``)."""
    now = time.monotonic()
    if now - _reported.get(what, -_REPORT_EVERY_S) < _REPORT_EVERY_S:
        return False
    if len(_reported) >= 10_000:
        _reported.clear()
    _reported[what] = now
    return True


async def copy_schedules(source: JobQueue, target: JobQueue) -> int:
    """Copy every schedule of ``source`` to ``target`` (and delete the others there).

    A schedule whose record on ``source`` is damaged (its key of another type, more
    fields than a schedule has) is not copied, and logged; it never stops the others.
    Ids are kept as stored (bytes), so one that is not UTF-8 is copied as it is."""
    client = await source.client()
    ids: list[bytes] = list(await client.zrange(source.keys.schedules, 0, 9_999))
    base = source.keys.schedule("").encode()
    pipe = client.pipeline(transaction=False)
    for sid in ids:
        pipe.hgetall(base + sid)
    hashes = await pipe.execute(raise_on_error=False)
    args: list[Any] = []
    count = 0
    written = 0
    for sid, reply in zip(ids, hashes, strict=True):
        problems: list[str] = []
        h = schedule_hash(reply, problems)  # raises any error but WRONGTYPE
        if len(h) > _SCHEDULE_FIELDS:
            problems.append(f"its hash holds {len(h)} fields, more than a schedule has")
        if problems:
            if _first_report((source.name, sid)):
                log.warning(
                    "queue %s: schedule %s not copied to the other regions: %s; remove "
                    "it and declare it again (said again in 10 minutes while it stays)",
                    source.name,
                    shown(sid.decode("utf-8", "backslashreplace")),
                    "; ".join(problems),
                )
            continue
        if not h:
            continue
        args += [sid, len(h)]
        for k, v in h.items():
            args += [k, v]
        count += 1
        if count >= 500:
            written += int(await target.run("rg_sched", ["put", *args]))
            args, count = [], 0
    if count:
        written += int(await target.run("rg_sched", ["put", *args]))
    written += int(await target.run("rg_sched", ["prune", *ids]))
    return written
