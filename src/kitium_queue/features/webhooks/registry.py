"""The registrations of a queue's webhooks: stored in Redis, cached in each process.

The cache is reloaded when ``wh:ver`` changed, checked at most every ``check_s``
seconds (the delivery service checks before each batch), so a registration made by any
process reaches every worker within about that time. A ``wh:ver`` damaged by hand
(another type) makes every check reload; a damaged ``wh:hooks`` raises the
``DamagedKeyError`` naming it (``webhook_damage``: the feature's keys and their repair).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from ...errors import ConfigurationError, DamagedKeyError
from ...limits import get_logger
from .models import DeliveryRecord, Webhook

if TYPE_CHECKING:
    from ...queue import JobQueue

__all__ = [
    "Registry",
    "checked",
    "counts",
    "damaged_key",
    "read_records",
    "script_reports",
    "webhook_damage",
]

log = get_logger(__name__)

# What deleting each key of the feature costs (by its name after the queue prefix).
_FIXES = {
    "wh:hooks": "delete it (every webhook registration of the queue is lost: register them "
    "again) or restore it",
    "wh:subs": "register, update or remove any webhook: that rebuilds it (meanwhile every "
    "event is written to the outbox)",
    "wh:ver": "delete it (nothing is lost: caches reload)",
    "wh:retry": "delete it (the deliveries it scheduled are no longer retried: replay them "
    "from their records) or restore it",
    "wh:dlq": "delete it (the list of dead-lettered deliveries is lost; their records stay) "
    "or restore it",
    "wh:dlq-dropped": "delete it (the counts of dead deliveries the DLQ's bound dropped "
    "start again from 0)",
}
_TYPES = {"zset": "sorted set", "integer": "integer counter"}


def damaged_key(key: str, found: str, expected: str) -> DamagedKeyError:
    """The ``DamagedKeyError`` for a webhook key ``key`` holding ``found`` (a Redis type)
    where ``expected`` was due, with what to do about it."""
    name = key.split("wh:", 1)[-1]
    fix = _FIXES.get("wh:" + name)
    if fix is None and name.startswith("dlq:"):
        fix = "delete it and wh:dlq-v (the next delivery service to start lists the "
        fix += "endpoint's dead deliveries in it again, from wh:dlq)"
    if fix is None and name.startswith("d:"):
        fix = "delete it (that delivery's record is lost; it leaves the DLQ at the next replay)"
    if fix is None:
        fix = "delete it (the delivery history listing of that webhook starts afresh; the "
        fix += "records stay)"
    held = (
        "something that is not an integer"
        if found == "string" and expected == "integer"
        else f"a {_TYPES.get(found, found)}"
    )
    err = DamagedKeyError(
        f"webhook key {key} holds {held}, not a {_TYPES.get(expected, expected)}: it was "
        f"damaged outside kitium-queue; {fix}"
    )
    err.key, err.found, err.expected = key, found, expected
    return err


def webhook_damage(exc: BaseException) -> BaseException:
    """``exc``, or the same ``DamagedKeyError`` worded for a webhook key when it names one."""
    if isinstance(exc, DamagedKeyError) and ":wh:" in exc.key and "webhook key" not in str(exc):
        out = damaged_key(exc.key, exc.found, exc.expected)
        out.__cause__ = exc
        return out
    return exc


async def checked(client: Any, key: str, expected: str, call: Any) -> Any:
    """``await call`` (a read of webhook key ``key``): a bare ``WRONGTYPE`` comes out as
    the ``DamagedKeyError`` naming ``key`` and its repair."""
    try:
        return await call
    except ResponseError as exc:
        if "WRONGTYPE" not in str(exc):
            raise
        raw = await client.type(key)
        found = raw.decode() if isinstance(raw, bytes) else str(raw)
        raise damaged_key(key, found, expected) from exc


async def _types(client: Any, keys: Sequence[bytes | str]) -> list[str]:
    pipe = client.pipeline(transaction=False)
    for k in keys:
        pipe.type(k)
    return [t.decode() if isinstance(t, bytes) else str(t) for t in await pipe.execute()]


async def read_records(
    client: Any, prefix: bytes, members: Sequence[bytes]
) -> list[DeliveryRecord]:
    """The delivery records of ``members`` (``<webhook>/<event>`` as stored; keys
    ``prefix + member``): one whose key was damaged by hand (another type) is listed
    with state ``damaged`` and the error naming it; missing ones are left out."""
    if not members:
        return []
    pipe = client.pipeline(transaction=False)
    for m in members:
        pipe.hgetall(prefix + m)
    replies = await pipe.execute(raise_on_error=False)
    bad = [prefix + m for m, h in zip(members, replies, strict=True) if isinstance(h, Exception)]
    found = dict(zip(bad, await _types(client, bad) if bad else [], strict=True))
    out = []
    for m, h in zip(members, replies, strict=True):
        wid, _, eid = m.decode("utf-8", "replace").partition("/")
        if isinstance(h, Exception):
            key = prefix + m
            err = damaged_key(key.decode("utf-8", "replace"), found[key], "hash")
            out.append(DeliveryRecord(wid, eid, "", "damaged", 0, 0, "", str(err)))
        elif h:
            out.append(DeliveryRecord.from_hash(wid, eid, h))
    return out


async def counts(
    client: Any, reads: Sequence[tuple[str, str, str]]
) -> tuple[list[int | None], list[str]]:
    """``(command, key, expected type)`` reads of sizes (``hlen``, ``zcard``): the sizes
    (None for a key damaged by hand) and the errors naming the damaged keys."""
    pipe = client.pipeline(transaction=False)
    for cmd, key, _ in reads:
        getattr(pipe, cmd)(key)
    got = await pipe.execute(raise_on_error=False)
    bad = [i for i, n in enumerate(got) if isinstance(n, Exception)]
    types = await _types(client, [reads[i][1] for i in bad]) if bad else []
    damaged = [
        str(damaged_key(reads[i][1], t, reads[i][2])) for i, t in zip(bad, types, strict=True)
    ]
    return [None if isinstance(n, Exception) else int(n) for n in got], damaged


async def script_reports(client: Any, extra: Callable[[str], str]) -> list[str]:
    """What the feature's scripts met and reported in ``slot-errors`` (``extra``: the
    queue's ``keys.extra``): a damaged ``wh:subs``, ``wh:retry`` members dropped. None
    when ``slot-errors`` is itself damaged (``health_check`` names it)."""
    fields = ["damaged:" + extra("wh:subs"), "webhooks:retry-member"]
    try:
        got = await client.hmget(extra("slot-errors"), fields)
    except ResponseError:
        return []
    # Each is stored as "<ms> <text>".
    return [bytes(v).decode("utf-8", "replace").partition(" ")[2] for v in got if v]


class Registry:
    """Cached ``wh:hooks`` of one queue."""

    def __init__(self, queue: JobQueue, check_s: float = 1.0) -> None:
        self.queue = queue
        self.key = queue.keys.extra("wh:hooks")
        self.ver_key = queue.keys.extra("wh:ver")
        self.check_s = check_s
        self.hooks: dict[str, Webhook] = {}
        self._ver: bytes | None = None
        self._checked = 0.0
        self._by_event: dict[tuple[str, bool], tuple[Webhook, ...]] = {}
        self.damaged: list[str] = []
        self._loaded = False
        self._lock = asyncio.Lock()
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    async def refresh(self, force: bool = False) -> None:
        """Reload if ``check_s`` passed (or ``force``) and the version moved. Callers
        that run at the same time wait for one load: none returns with a cache that a
        load in progress has not filled yet."""
        if not force and not self.stale():
            return
        loop = asyncio.get_running_loop()
        if self._lock_loop is not loop:  # a lock belongs to the loop that first used it
            self._lock, self._lock_loop = asyncio.Lock(), loop
        async with self._lock:
            if not force and not self.stale():
                return  # loaded while this call waited
            await self._load(force)

    async def _load(self, force: bool) -> None:
        started = time.monotonic()
        client = await self.queue.client()
        try:
            ver: bytes | None = await client.get(self.ver_key)
        except ResponseError as exc:
            if "WRONGTYPE" not in str(exc):
                raise
            ver = None  # damaged by hand: reload every time (webhooks_put names it)
            self._loaded = False
        if ver == self._ver and not force and self._loaded:
            self._checked = started
            return
        raw = await checked(client, self.key, "hash", client.hgetall(self.key))
        hooks: dict[str, Webhook] = {}
        damaged: list[str] = []
        for k, v in raw.items():
            wid = k.decode("utf-8", "replace")
            try:
                hooks[wid] = Webhook.from_json(v)
            except ConfigurationError as exc:
                damaged.append(wid)
                log.warning(
                    "webhook registration %r of queue %s is damaged and ignored: %s",
                    wid[:100],
                    self.queue.name,
                    exc,
                )
        self.hooks, self._ver, self.damaged = hooks, ver, damaged
        self._by_event = {}
        self._checked, self._loaded = started, True

    def put(self, hook: Webhook) -> None:
        """Update the cache after this process changed a registration."""
        self.hooks[hook.id] = hook
        self._by_event = {}

    def drop(self, webhook_id: str) -> None:
        self.hooks.pop(webhook_id, None)
        self._by_event = {}

    def get(self, webhook_id: str) -> Webhook | None:
        return self.hooks.get(webhook_id)

    def wanting(self, event: str, *, guaranteed: bool) -> tuple[Webhook, ...]:
        """Active endpoints subscribed to ``event``: the guaranteed ones, or the others."""
        key = (event, guaranteed)
        found = self._by_event.get(key)
        if found is None:
            found = tuple(
                h
                for h in self.hooks.values()
                if h.active and h.guaranteed == guaranteed and event in h.events
            )
            self._by_event[key] = found
        return found

    def stale(self) -> bool:
        return not self._loaded or time.monotonic() - self._checked >= self.check_s
