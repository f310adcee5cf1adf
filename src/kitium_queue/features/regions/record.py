"""One region as the manager sees it: its connection, its copies of the queue, its
region record (``region.lua``) and its health."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ...connection import ConnectionFactory
from ...errors import ConfigurationError
from ...queue import JobQueue
from .config import RegionConfig
from .lua import RECORD, install

__all__ = ["Record", "RegionCopy", "home_name"]


def _s(v: Any) -> str:
    # Leniently: a field damaged by hand with bytes that are not UTF-8 reads as escaped
    # text (never equal to a configured region name, as in the script's byte compares),
    # not as an error that would make a live region look unreachable.
    return v.decode("utf-8", "backslashreplace") if isinstance(v, (bytes, bytearray)) else str(v)


def _int(v: Any) -> int | None:
    text = _s(v)
    try:
        return int(text)
    except ValueError:
        return None


def home_name(name: str, region: str) -> str:
    """The queue of the jobs pinned to ``region`` (``"<name>/<region>"``)."""
    return f"{name}/{region}"


@dataclass(frozen=True, slots=True)
class Record:
    """A region record as ``region.lua`` returned it (after an op).

    ``lease``: ms of the region's clock (``now``) until which it may serve as the
    primary; -1 = no end; ``epoch`` None: the copy never learnt of a primary.
    """

    status: str
    detail: str
    region: str
    epoch: int | None
    primary: str | None
    lease: int
    vepoch: int | None
    vfor: str | None
    vuntil: int
    pos: str
    src: str
    down: int | None
    former: int | None
    now: int

    @classmethod
    def parse(cls, reply: Sequence[Any]) -> Record:
        f = dict(zip(RECORD, reply[2:], strict=True))
        return cls(
            status=_s(reply[0]),
            detail=_s(reply[1]),
            region=_s(f["self"]),
            epoch=_int(f["epoch"]),
            primary=_s(f["primary"]) or None,
            lease=_int(f["lease"]) or 0,
            vepoch=_int(f["vepoch"]),
            vfor=_s(f["vfor"]) or None,
            vuntil=_int(f["vuntil"]) or 0,
            pos=_s(f["pos"]),
            src=_s(f["src"]),
            down=_int(f["down"]),
            former=_int(f["former"]),
            now=_int(f["now"]) or 0,
        )

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def is_primary(self) -> bool:
        """The copy believes it is the primary of its epoch (its lease may have ended)."""
        return self.epoch is not None and self.primary == self.region

    @property
    def lease_left_ms(self) -> int:
        """How long the copy may still serve as the primary (0 if it may not)."""
        if not self.is_primary or self.down == self.epoch:
            return 0
        if self.lease < 0:
            return 2**62
        return max(0, self.lease - self.now)

    @property
    def serving(self) -> bool:
        """The copy takes new jobs now (primary, lease running, not stepped down)."""
        return self.lease_left_ms > 0

    @property
    def position_ms(self) -> int:
        """The time part of the replication position (0: none)."""
        head = self.pos.split("-", 1)[0]
        return int(head) if head.isdigit() else 0


class RegionCopy:
    """A region's connection and its copies of the queue.

    ``lane``: its copy of the global queue (``name``); ``home``: its own queue of the jobs
    pinned to it (``name/<region>``); ``copy_of(other)``: the copies it keeps of another
    region's pinned jobs (``replicate_job``). Health is what the last check found.
    """

    def __init__(
        self,
        cfg: RegionConfig,
        name: str,
        queue_options: Mapping[str, Any],
        timeout_s: float,
        *,
        replicated: bool = True,
    ) -> None:
        self.cfg = cfg
        self.name = cfg.region
        self.queue_name = name
        self.timeout_s = timeout_s
        self.connection = ConnectionFactory(cfg.redis)
        # One client for every queue of the region (as PartitionedQueue shares one).
        self._shared: Any = None if self.connection.is_memory else self.connection.client()
        self._backend = cfg.redis if self._shared is None else self._shared
        self._options = dict(queue_options)
        # Without replication the primary writes no outbox entries (nobody would read them).
        self.lane = self._queue(name, replicated=replicated)
        self.home = self._queue(home_name(name, self.name), replicated=False)
        self.copies: dict[str, JobQueue] = {}
        #: Deadline of a queue's first contact (connect, load its scripts): connect()'s.
        self.first_contact_s = max(timeout_s, 10.0)
        # Health, as the last check found it.
        self.record: Record | None = None
        self.reachable: bool | None = None
        self.down_since: float | None = None
        self.last_ok: float | None = None
        self.error = ""
        self.latency_ms: float | None = None

    def _queue(self, name: str, *, replicated: bool) -> JobQueue:
        q = JobQueue(name, redis=self._backend, **self._options)
        install(q, replicated=replicated)
        return q

    @property
    def priority(self) -> int:
        return self.cfg.priority

    def describe(self) -> str:
        """Where the region's Redis is, never with credentials."""
        return self.connection.describe()

    # ------------------------------------------------------------------ records
    async def op(self, op: str, *args: Any, queue: JobQueue | None = None) -> Record:
        """Run ``region.lua`` op on one of this region's copies (default: the global
        queue's), with the health-check deadline; raises on any failure."""
        q = queue or self.lane
        reply = await asyncio.wait_for(q.run("region", [op, self.name, *args]), self.timeout_s)
        rec = Record.parse(reply)
        if rec.status == "mismatch":
            raise ConfigurationError(
                f"the Redis of region {self.name!r} ({self.describe()}) holds the queue "
                f"{q.name!r} of region {rec.detail!r}: two regions are configured with "
                "the same Redis (and key prefix). Give each region its own deployment"
            )
        return rec

    async def connect(self, timeout_s: float) -> None:
        """Open the connection and load the scripts of the global queue and of the
        region's own (pinned jobs), with a deadline fit for a first contact (the health
        checks' own is short: a first ``op`` on a queue whose scripts were not loaded
        yet could miss it on a busy host); a failure shows in the next check."""
        self.first_contact_s = timeout_s
        for q in (self.lane, self.home):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(q.client(), timeout_s)

    async def check(self) -> Record | None:
        """Read the global queue's record: the health check. Updates the health fields;
        returns None when the region did not answer."""
        started = time.monotonic()
        try:
            rec = await self.op("read")
        except ConfigurationError:
            raise
        except Exception as exc:  # any failure: the region does not serve us now
            self.unanswered(exc, started)
            return None
        return self.answered(rec, started)

    def unanswered(self, exc: BaseException, started: float) -> None:
        """Note that a look at the region begun at ``started`` got no answer."""
        self.reachable = False
        self.error = f"{type(exc).__name__}: {self.connection.redact(exc)}"[:300]
        if self.down_since is None:
            self.down_since = started

    def answered(self, rec: Record, started: float) -> Record:
        """Note the region's answer ``rec`` to a look begun at ``started``."""
        now = time.monotonic()
        self.latency_ms = (now - started) * 1000
        self.reachable, self.down_since, self.last_ok, self.error = True, None, now, ""
        self.record = rec
        return rec

    def down_for_s(self) -> float:
        """How long the region has been unreachable (0 when it answers)."""
        return 0.0 if self.down_since is None else time.monotonic() - self.down_since

    # ------------------------------------------------------------------ copies
    async def copy_of(self, region: str) -> JobQueue:
        """This region's copy of ``region``'s pinned jobs (fenced: never served here)."""
        if region == self.name:
            return self.home
        q = self.copies.get(region)
        if q is None:
            q = self._queue(home_name(self.queue_name, region), replicated=False)
            self.copies[region] = q
            with contextlib.suppress(Exception):  # its first contact, as connect()'s
                await asyncio.wait_for(q.client(), self.first_contact_s)
        await self.op("follow", region, queue=q)
        return q

    async def make_home(self) -> None:
        """Mark the pinned-jobs queue as served here for good (no lease, no epoch)."""
        await self.op("home", queue=self.home)

    def queues(self) -> list[JobQueue]:
        return [self.lane, self.home, *self.copies.values()]

    async def close(self) -> None:
        try:
            for q in self.queues():
                await q.close()
        finally:  # also when the close is cancelled for taking too long
            shared, self._shared = self._shared, None
            if shared is not None and self.connection.owns(shared):
                await shared.aclose()
