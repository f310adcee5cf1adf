"""The outbox: a durable per-queue stream of follow-up work, read by consumer groups.

Entries are appended to ``<prefix>:{<queue>}:outbox`` by transition scripts in the same
atomic step as their state change (``--@include outbox``; ``lua/outbox.lua``) or with
``Outbox.add``. Each consumer group gets every entry at least once: ``read`` hands out
new entries and, with ``XAUTOCLAIM``, those left unacknowledged for ``claim_idle_ms`` by a
consumer that died; past ``max_deliveries`` an entry goes to ``outbox:dead`` instead.
``trim`` removes only entries every group acknowledged; the cap (``set_cap``) is reported
(``stats``, a warning), never enforced by dropping. Semantics: docs/outbox.md. Needs
Redis >= 6.2 (``XAUTOCLAIM``, ``XTRIM MINID``); ``stats`` reports group lag from 7.0.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from .errors import ConfigurationError, KitiumQueueError, PayloadTooLargeError
from .events import stream_entries
from .leader import NET_ERRORS, LeaderService, OutageLog, Refusals, check_name
from .limits import get_logger
from .serverinfo import refuses_writes

if TYPE_CHECKING:
    from .queue import JobQueue

__all__ = [
    "DEFAULT_CAP",
    "MAX_ENTRY_BYTES",
    "MAX_FIELDS",
    "DeadEntry",
    "GroupStats",
    "Outbox",
    "OutboxConsumer",
    "OutboxEntry",
    "OutboxStats",
]

log = get_logger(__name__)

#: Entries the outbox may hold before writes are counted as overflow (``set_cap``).
DEFAULT_CAP = 1_000_000
#: Largest entry ``add`` accepts (topic, field names and values), and most fields in it.
MAX_ENTRY_BYTES, MAX_FIELDS = 65_536, 64
_WARN_EVERY_S = 60.0
#: A consumer holding nothing and idle this long is a process gone (a live one reads every
#: few seconds): the housekeeping forgets it, looking every ``CONSUMERS_EVERY_S``.
CONSUMER_IDLE_MS = 3_600_000
CONSUMERS_EVERY_S = 60.0


def _s(v: Any) -> str:
    # Not strict: what a stream holds may have been written by any client, and one
    # entry that is not UTF-8 must not stop a consumer from reading the others.
    return v.decode(errors="backslashreplace") if isinstance(v, (bytes, bytearray)) else str(v)


def _count(v: Any, default: int) -> int:
    """A count read back from Redis (untrusted: a hand-written field may hold anything);
    ``default`` when it is not a whole number >= 0. Fractions round up, as the cap
    compares in ``lua/outbox.lua``."""
    try:
        n = math.ceil(float(_s(v)))
    except (ValueError, OverflowError):  # not a number, nan, inf
        return default
    return n if n >= 0 else default


def _b(v: Any) -> bytes:
    return bytes(v) if isinstance(v, (bytes, bytearray)) else str(v).encode()


def _fields(raw: Any) -> dict[str, bytes]:
    """A stream entry's fields: redis-py's dict, or the flat array scripts return."""
    if isinstance(raw, Mapping):
        return {_s(k): _b(v) for k, v in raw.items()}
    items = list(raw or ())
    return {_s(items[i]): _b(items[i + 1]) for i in range(0, len(items) - 1, 2)}


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One delivered entry: ``fields`` without the topic; ``deliveries`` counts this one."""

    id: str
    topic: str
    fields: dict[str, bytes]
    deliveries: int = 1

    @property
    def payload(self) -> bytes:
        """The ``p`` field (what ``Outbox.add`` stores a bytes or str payload in)."""
        return self.fields.get("p", b"")

    @classmethod
    def parse(cls, entry_id: Any, raw: Any, deliveries: int = 1) -> OutboxEntry:
        f = _fields(raw)
        topic = f.pop("t", b"")
        return cls(_s(entry_id), topic.decode(errors="replace"), f, deliveries)


@dataclass(frozen=True, slots=True)
class DeadEntry:
    """An entry moved to the dead stream: where from, why, and its original content."""

    id: str
    entry: OutboxEntry
    group: str
    reason: str


def _lag(group: Any, newest: str | None) -> int | None:
    """A group's lag: 0 when it was handed the newest entry, or nothing is left in the
    stream; else what Redis reports (None: Redis < 7, or it cannot tell)."""
    at = [tuple(int(p) if p.isdigit() else 0 for p in i.split("-", 1)) for i in (
        _s(group["last-delivered-id"]), newest or "")]  # fmt: skip
    lag = group.get("lag")
    return 0 if newest is None or at[0] >= at[1] else None if lag is None else int(lag)


@dataclass(slots=True)
class GroupStats:
    """One consumer group: ``pending`` delivered but unacknowledged entries."""

    name: str
    consumers: int
    pending: int
    lag: int | None  # entries not yet handed to the group; None: Redis < 7 or unknown
    last_delivered_id: str


@dataclass(slots=True)
class OutboxStats:
    """``length`` entries (``cap``), ``overflow`` written over the cap so far, ``dead``;
    ``unwritten``: entries that could not be written because the outbox key held
    another type of key (``damaged`` says which, while it does)."""

    length: int
    cap: int
    overflow: int
    dead: int
    groups: list[GroupStats] = field(default_factory=list)
    unwritten: int = 0
    damaged: str | None = None

    @property
    def over_cap(self) -> bool:
        return self.length >= self.cap


class Outbox:
    """The outbox of ``queue`` (see the module docstring and docs/outbox.md).

    Example::

        outbox = Outbox(queue)
        await outbox.create_group("webhooks")        # before the first write it must see
        await outbox.add("webhook", b'{"job": "42"}')
        consumer = outbox.consumer("webhooks", "host-1")
        async for entry in consumer:
            await deliver(entry.payload)
            await consumer.ack(entry.id)
    """

    def __init__(self, queue: JobQueue) -> None:
        self.queue = queue
        self.key = queue.keys.extra("outbox")
        self.dead_key = queue.keys.extra("outbox:dead")
        self.overflow_key = queue.keys.extra("outbox:overflow")
        self.unwritten_key = queue.keys.extra("outbox:unwritten")
        self._warned_at = 0.0

    async def script(self, name: str, args: Iterable[Any]) -> Any:
        """Run ``lua/<name>.lua`` (KEYS: outbox, dead stream; ARGV[1]: the queue prefix).

        The registry runs any script of the package by name; these need no preloading
        (a first call answered NOSCRIPT is run once with EVAL, which caches it).
        """
        client = await self.queue.client()
        return await self.queue.scripts.call(
            client, name, (self.key, self.dead_key), (self.queue.keys.base, *args)
        )

    # ------------------------------------------------------------------ writing
    async def add(self, topic: str, payload: bytes | str | Mapping[str, bytes | str] = b"") -> str:
        """Append an entry; returns its id. A bytes/str payload is stored in field ``p``.
        Raises ConfigurationError (bad topic or field), PayloadTooLargeError (too big)."""
        flat = self.encode(topic, payload)
        entry_id, over = await self.script("outbox_put", (topic, *flat))
        if not entry_id:
            raise self.damaged_error("nothing was added")
        if int(over):
            await self._warn_cap()
        return _s(entry_id)

    def damaged_error(self, what: str) -> KitiumQueueError:
        """The error for the outbox key holding another type of key (``what``: what
        could not be done)."""
        return KitiumQueueError(
            f"queue {self.queue.name!r}: the outbox key ('{self.key}') holds another type "
            f"of key, written outside the library: {what}. Rename it aside (to keep what "
            "it holds) or delete it; the outbox starts again empty"
        )

    @staticmethod
    def encode(topic: str, payload: bytes | str | Mapping[str, bytes | str]) -> list[bytes]:
        """Validate an entry; returns its fields as a flat name/value list (no topic)."""
        check_name(topic, "outbox topic", 64)
        items = payload.items() if isinstance(payload, Mapping) else [("p", payload)]
        if len(items) > MAX_FIELDS:
            raise ConfigurationError(f"outbox entry has {len(items)} fields, above {MAX_FIELDS}")
        flat: list[bytes] = []
        size = len(topic.encode())
        for name, value in items:
            if (
                not isinstance(name, str)
                or not 0 < len(name) <= 64
                or name == "t"
                or name.startswith("_")
                or not isinstance(value, (bytes, str))
            ):
                raise ConfigurationError(
                    f"outbox field {name!r}: names are str of 1-64 characters, not 't' nor "
                    f"starting with '_' (reserved); values bytes or str, got {type(value)}"
                )
            data = value.encode() if isinstance(value, str) else value
            size += len(name) + len(data)
            flat += [name.encode(), data]
        if size > MAX_ENTRY_BYTES:
            raise PayloadTooLargeError(
                f"outbox entry of topic {topic!r} is {size} bytes, above {MAX_ENTRY_BYTES}; "
                "store large data elsewhere and put a reference in the entry"
            )
        return flat

    async def set_cap(self, cap: int) -> None:
        """Set the cap (entries) above which writes are counted as overflow."""
        if not isinstance(cap, int) or cap < 1:
            raise ConfigurationError(f"outbox cap must be an int >= 1, got {cap!r}")
        client = await self.queue.client()
        await client.hset(self.queue.keys.meta, "outbox_cap", cap)

    # ------------------------------------------------------------------ reading
    async def create_group(self, group: str, start: str = "0") -> bool:
        """Create ``group`` (and the stream) if missing, reading from ``start`` (``"0"``:
        every entry still in the stream, ``"$"``: only new ones); True if created."""
        check_name(group, "outbox group")
        client = await self.queue.client()
        try:
            await client.xgroup_create(self.key, group, id=start, mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" in str(exc):
                return False
            if "WRONGTYPE" in str(exc):
                raise self.damaged_error(f"group {group!r} cannot be created") from None
            raise
        return True

    def consumer(
        self,
        group: str,
        name: str,
        *,
        start: str = "0",
        count: int = 100,
        block_ms: int = 1000,
        claim_idle_ms: int = 30_000,
        max_deliveries: int = 10,
        reclaim_every_ms: int | None = None,
    ) -> OutboxConsumer:
        """A consumer named ``name`` in ``group`` (created at ``start`` on first use).

        ``claim_idle_ms``: entries pending that long on any consumer of the group are
        taken over; ``max_deliveries``: deliveries before an entry is dead-lettered.
        """
        return OutboxConsumer(
            self,
            group,
            name,
            start=start,
            count=count,
            block_ms=block_ms,
            claim_idle_ms=claim_idle_ms,
            max_deliveries=max_deliveries,
            reclaim_every_ms=reclaim_every_ms,
        )

    # ------------------------------------------------------------------ housekeeping
    async def trim(self, limit: int = 10_000) -> int:
        """Delete entries every group acknowledged, ``limit`` at most; the count."""
        if not isinstance(limit, int) or limit < 1:
            raise ConfigurationError(f"trim limit must be an int >= 1, got {limit!r}")
        removed, _floor = await self.script("outbox_trim", (limit, min(limit, 100)))
        return int(removed)

    async def stats(self) -> OutboxStats:
        """Length, cap, overflow count, dead entries, and per group pending and lag."""
        client = await self.queue.client()
        pipe = client.pipeline(transaction=False)
        pipe.xlen(self.key).hget(self.queue.keys.meta, "outbox_cap").get(self.overflow_key)
        pipe.xlen(self.dead_key).xinfo_groups(self.key).get(self.unwritten_key)
        pipe.xrevrange(self.key, count=1)
        replies = await pipe.execute(raise_on_error=False)
        length, cap, overflow, dead, groups, unwritten, newest = replies
        # A group handed the newest entry has nothing to read, whatever lag Redis reports
        last = _s(newest[0][0]) if isinstance(newest, list) and newest else None
        if isinstance(groups, ResponseError):  # no stream yet
            groups = []
        damaged = None
        if isinstance(length, ResponseError) and "WRONGTYPE" in str(length):
            length = 0
            damaged = str(self.damaged_error("entries cannot be written (counted in unwritten)"))
        # A counter or the cap damaged the same way reads as its default (as the Lua
        # fragment reads it).
        cap, overflow, unwritten = (
            None if isinstance(v, ResponseError) and "WRONGTYPE" in str(v) else v
            for v in (cap, overflow, unwritten)
        )
        for value in (length, cap, overflow, dead, unwritten):
            if isinstance(value, Exception):
                raise value
        cap_n = _count(cap, DEFAULT_CAP) if cap is not None else DEFAULT_CAP
        return OutboxStats(
            int(length),
            cap_n if cap_n >= 1 else DEFAULT_CAP,  # as lua/outbox.lua reads it
            _count(overflow, 0) if overflow is not None else 0,
            int(dead),
            [
                GroupStats(
                    _s(g["name"]),
                    int(g["consumers"]),
                    int(g["pending"]),
                    _lag(g, last),
                    _s(g["last-delivered-id"]),
                )
                for g in groups
            ],
            unwritten=_count(unwritten, 0) if unwritten is not None else 0,
            damaged=damaged,
        )

    async def dead(self, count: int = 100, start: str = "-") -> list[DeadEntry]:
        """Dead-lettered entries, oldest first, from id ``start``."""
        client = await self.queue.client()
        out = []
        for dead_id, raw in await client.xrange(self.dead_key, start, "+", count=count):
            f = _fields(raw)
            meta = {
                k: f.pop(k, b"").decode(errors="replace")
                for k in ("_id", "_group", "_deliveries", "_reason")
            }
            entry = OutboxEntry.parse(meta["_id"], f, _count(meta["_deliveries"], 0))
            out.append(DeadEntry(_s(dead_id), entry, meta["_group"], meta["_reason"]))
        return out

    async def delete_dead(self, ids: Iterable[str]) -> int:
        """Remove entries from the dead stream (after handling them); the count."""
        ids = list(ids)
        client = await self.queue.client()
        return int(await client.xdel(self.dead_key, *ids)) if ids else 0

    async def forget_idle_consumers(self, idle_ms: int = CONSUMER_IDLE_MS) -> int:
        """Delete the consumers of every group holding no pending entry and idle for
        ``idle_ms`` (processes gone); returns how many. ``lua/outbox_forget.lua`` checks
        again that none holds an entry, in the step that deletes it."""
        client = await self.queue.client()
        try:
            groups = await client.xinfo_groups(self.key)
        except ResponseError:
            return 0  # no stream yet, or a damaged key (stats() names it)
        gone = 0
        for g in groups:
            group = g.get("name")  # as Redis holds them: passed back unchanged
            idle = [
                c.get("name")
                for c in await client.xinfo_consumers(self.key, group)
                if int(c.get("pending") or 0) == 0 and int(c.get("idle") or 0) >= idle_ms
            ]
            for i in range(0, len(idle), 100):
                gone += int(await self.script("outbox_forget", (group, *idle[i : i + 100])))
        return gone

    def housekeeping(
        self, *, interval_ms: int = 5000, trim_limit: int = 10_000, lease_ms: int = 10_000
    ) -> LeaderService:
        """A leader-only service trimming the outbox, warning when it is at its cap and,
        every ``CONSUMERS_EVERY_S``, forgetting the consumers of processes gone
        (``forget_idle_consumers``): ``queue.add_service(outbox.housekeeping())``; one
        process does it at a time."""

        async def body(term: int) -> None:
            name, forgot_at = self.queue.name, 0.0
            said = Refusals(f"outbox housekeeping of queue {name}", log)
            forget = Refusals(f"outbox of queue {name}: deleting the consumers of processes gone "
                              "(they stay, ~280 B each; the Redis user needs +xgroup|delconsumer "
                              "+xinfo|consumers)", log)  # fmt: skip
            while True:
                if time.monotonic() - forgot_at >= CONSUMERS_EVERY_S:
                    forgot_at = time.monotonic()
                    await self._step(self.forget_idle_consumers(CONSUMER_IDLE_MS), forget)
                removed = await self._step(self._trim(trim_limit), said) or 0
                if removed < trim_limit:
                    await asyncio.sleep(interval_ms / 1000)

        return LeaderService("outbox-housekeeping", body, lease_ms=lease_ms)

    async def _trim(self, limit: int) -> int:
        removed = await self.trim(limit)
        st = await self.stats()
        if st.over_cap or st.damaged or st.unwritten:
            await self._warn_cap(st)
        return removed

    async def _step(self, work: Awaitable[int], said: Refusals) -> int | None:
        """A step of the housekeeping: refused by the Redis ACL, said once (and when it
        is permitted again); unreachable: the leader service notices it by its lease."""
        try:
            done = await work
        except Exception as exc:
            if not (said.failed(exc) or isinstance(exc, NET_ERRORS)):
                raise
            return None
        said.ok()
        return done

    async def _warn_cap(self, st: OutboxStats | None = None) -> None:
        now = time.monotonic()
        if self._warned_at and now - self._warned_at < _WARN_EVERY_S:
            return
        self._warned_at = now
        st = st or await self.stats()
        if st.damaged or st.unwritten:
            log.warning(
                "outbox of queue %s: %d entries could not be written%s",
                self.queue.name,
                st.unwritten,
                f": {st.damaged}" if st.damaged else " (the outbox key held another type)",
            )
        if not st.over_cap:
            return
        behind = ", ".join(f"{g.name}: {g.pending} pending, lag {g.lag}" for g in st.groups)
        log.warning(
            "outbox of queue %s holds %d entries, at or above its cap of %d (%d written "
            "over the cap so far). Nothing is dropped; a consumer group is behind or "
            "stuck and holds back the trim (%s)",
            self.queue.name,
            st.length,
            st.cap,
            st.overflow,
            behind or "no consumer group",
        )


class OutboxConsumer:
    """One consumer of a group; see ``Outbox.consumer``. Not shared between tasks."""

    def __init__(
        self,
        outbox: Outbox,
        group: str,
        name: str,
        *,
        start: str,
        count: int,
        block_ms: int,
        claim_idle_ms: int,
        max_deliveries: int,
        reclaim_every_ms: int | None,
    ) -> None:
        check_name(group, "outbox group")
        check_name(name, "outbox consumer name")
        for what, v, low in (
            ("count", count, 1),
            ("block_ms", block_ms, 0),
            ("claim_idle_ms", claim_idle_ms, 1),
            ("max_deliveries", max_deliveries, 1),
        ):
            if not isinstance(v, int) or v < low:
                raise ConfigurationError(f"outbox consumer {what} must be an int >= {low}")
        if start != "$" and not all(p.isdigit() for p in start.split("-", 1)):
            raise ConfigurationError(f"outbox start must be '0', '$' or an entry id: {start!r}")
        self.outbox, self.group, self.name, self.start = outbox, group, name, start
        self.count, self.block_ms = count, block_ms
        self.claim_idle_ms, self.max_deliveries = claim_idle_ms, max_deliveries
        self.reclaim_every_s = (reclaim_every_ms or max(claim_idle_ms // 4, 50)) / 1000
        self.buried = 0  # entries this consumer moved to the dead stream
        self._ready = False
        self._cursor = "0-0"  # XAUTOCLAIM position within the current pass
        self._next_reclaim = 0.0
        self._outage = OutageLog(f"outbox consumer {group}/{name}")

    async def read(
        self, count: int | None = None, block_ms: int | None = None
    ) -> list[OutboxEntry]:
        """Entries taken over from idle consumers first, then new ones (``XREADGROUP``).

        Blocks up to ``block_ms`` (0: not at all) when there is nothing; [] then.
        """
        n = count or self.count
        block = self.block_ms if block_ms is None else block_ms
        if not self._ready:
            await self.outbox.create_group(self.group, self.start)
            self._ready = True
        now = time.monotonic()
        if now >= self._next_reclaim:
            got = await self.reclaim(n)
            if got:
                return got
        # Never block past the next reclaim pass: a dead consumer's entries wait at most
        # claim_idle_ms + reclaim_every_ms however quiet the stream is.
        wait_ms = min(block, max(int((self._next_reclaim - time.monotonic()) * 1000), 0))
        client = await self.outbox.queue.client()
        try:
            reply = await client.xreadgroup(
                self.group,
                self.name,
                {self.outbox.key: ">"},
                count=n,
                block=wait_ms if wait_ms > 0 else None,
            )
        except ResponseError as exc:
            if "WRONGTYPE" in str(exc):
                raise self.outbox.damaged_error("nothing can be read") from None
            if "NOGROUP" not in str(exc):
                raise
            self._ready = False  # the stream or group was deleted: recreate it next time
            return []
        return [OutboxEntry.parse(i, raw) for i, raw in stream_entries(reply) if raw is not None]

    async def reclaim(self, count: int | None = None) -> list[OutboxEntry]:
        """One ``XAUTOCLAIM`` step: take over entries idle >= ``claim_idle_ms``.

        Entries past ``max_deliveries`` go to the dead stream instead (``buried``).
        """
        cursor, got, buried = await self.outbox.script(
            "outbox_reclaim",
            (
                self.group,
                self.name,
                self.claim_idle_ms,
                self._cursor,
                count or self.count,
                self.max_deliveries,
            ),
        )
        self._cursor = _s(cursor)
        self.buried += int(buried)
        if self._cursor == "0-0" and not got:
            self._next_reclaim = time.monotonic() + self.reclaim_every_s
        return [OutboxEntry.parse(e[0], e[1], int(e[2])) for e in got]

    async def touch(self, ids: str | Iterable[str]) -> int:
        """Keep entries this consumer still handles: their idle time starts again, so no
        other consumer takes them over after ``claim_idle_ms`` (a slow handling would be
        done twice). Entries acknowledged or taken over meanwhile are left as they are;
        returns how many were touched. Call it more often than ``claim_idle_ms``."""
        ids = [ids] if isinstance(ids, str) else list(ids)
        return (
            int(await self.outbox.script("outbox_touch", (self.group, self.name, *ids)))
            if ids
            else 0
        )

    async def ack(self, ids: str | Iterable[str]) -> int:
        """Acknowledge entries (done for this group); returns how many were pending."""
        ids = [ids] if isinstance(ids, str) else list(ids)
        client = await self.outbox.queue.client()
        return int(await client.xack(self.outbox.key, self.group, *ids)) if ids else 0

    async def reject(self, ids: str | Iterable[str], reason: str) -> int:
        """Move entries to the dead stream now, with ``reason``; returns how many moved."""
        ids = [ids] if isinstance(ids, str) else list(ids)
        return int(await self.outbox.script("outbox_reject", (self.group, reason, *ids)))

    def __aiter__(self) -> AsyncIterator[OutboxEntry]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[OutboxEntry]:
        # Endless: waits through Redis outages (logged once per outage), like the worker.
        while True:
            try:
                batch = await self.read()
            except Exception as exc:
                # Unreachable, or refusing writes (XREADGROUP is one): wait it out.
                if not isinstance(exc, NET_ERRORS) and not refuses_writes(exc):
                    raise
                await self._outage.pause(exc)
                continue
            self._outage.ok()
            if not batch and self.block_ms == 0:
                await asyncio.sleep(0.05)  # a non-blocking consumer must not spin
            for entry in batch:
                yield entry
