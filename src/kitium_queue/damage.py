"""Keys of a queue's own layout damaged outside kitium-queue.

The state sets, ``meta``, the event stream, the wake-up marker and the counters
(``lua/lib_base.lua``) can be overwritten by hand or by another client with another
Redis type, or a counter with something that is not an integer. The scripts check the
keys they write before their first write (``check_keys``: ``DamagedKeyError``, nothing
written); a command that meets such a key elsewhere fails with a bare ``WRONGTYPE``.
This module names the key:

* ``find_damage(client, keys)``: the first damaged key of the layout, as a
  ``DamagedKeyError`` (None when all are sound); two round trips, on error paths and in
  ``health_check`` only.
* ``explain_damage(client, keys, exc)``: ``exc`` if it is not a type or counter error of
  a script run on the layout ``keys``, else the ``DamagedKeyError`` that names the key.
* ``named_key(client, key, expected, call)``: the same for a command on a key outside
  the layout (the schedule index).
* ``DamagedKeys``: the worker's report of a damaged key, at a bounded rate (one per
  queue, ``QueueContext.damaged``): the first error at once, then one a minute while the
  key stays damaged, and a warning when work resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from redis.exceptions import RedisError, ResponseError

from .errors import DamagedKeyError
from .keys import QueueKeys
from .limits import get_logger, safe_text
from .serverinfo import WriteRefusals

__all__ = [
    "DAMAGE_LOG_S",
    "DamagedKeys",
    "explain_damage",
    "find_damage",
    "health_damage",
    "is_damage_error",
    "named",
    "named_key",
]

log = get_logger("kitium_queue.worker")
T = TypeVar("T")

#: Seconds between two reports of a key that stays damaged.
DAMAGE_LOG_S = 60.0

# What each key of the layout holds (KEYS order, lua/lib_base.lua KEY_TYPES).
_EXPECTED = ("zset",) * 6 + ("hash", "stream", "zset") + ("integer",) * 3
_LAYOUT = len(_EXPECTED)
# The replies of a command meeting a damaged key: another type, a counter INCR refuses.
_DAMAGE_REPLIES = ("WRONGTYPE", "value is not an integer", "increment or decrement would overflow")


def _is_layout(keys: Sequence[str]) -> bool:
    if len(keys) < _LAYOUT or not keys[0].endswith("wait"):
        return False
    base = keys[0][: -len("wait")]
    return tuple(keys[:_LAYOUT]) == QueueKeys.layout(base)


def _integer(raw: Any) -> bool:
    try:
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        return str(int(text)) == text and len(text) <= 15
    except (ValueError, UnicodeDecodeError):
        return False


async def find_damage(client: Any, keys: Sequence[str]) -> DamagedKeyError | None:
    """The first key of the layout ``keys`` (``QueueKeys.all``) holding another type, or
    a counter holding something that is not an integer; None when all are sound."""
    keys = tuple(keys[:_LAYOUT])
    pipe = client.pipeline(transaction=False)
    for k in keys:
        pipe.type(k)
    types = [t.decode() if isinstance(t, bytes) else str(t) for t in await pipe.execute()]
    counters = [i for i, e in enumerate(_EXPECTED) if e == "integer" and types[i] == "string"]
    values: list[Any] = []
    if counters:
        pipe = client.pipeline(transaction=False)
        for i in counters:
            pipe.get(keys[i])
        values = list(await pipe.execute())
    for i, (found, expected) in enumerate(zip(types, _EXPECTED, strict=True)):
        if found == "none":
            continue
        if expected == "integer":
            if found != "string":
                return DamagedKeyError("", keys[i], found, expected)
            raw = values[counters.index(i)]
            if raw is not None and not _integer(raw):
                return DamagedKeyError("", keys[i], found, expected)
        elif found != expected:
            return DamagedKeyError("", keys[i], found, expected)
    return None


async def health_damage(client: Any, keys: Sequence[str]) -> str | None:
    """``health_check``'s error for a damaged key of the layout ``keys``
    (``"DamagedKeyError: ..."``), or None when all are sound or they cannot be read."""
    try:
        found = await find_damage(client, keys)
    except Exception:  # an ACL user without TYPE, a lost connection: not checked
        return None
    return None if found is None else f"DamagedKeyError: {found}"


def is_damage_error(exc: BaseException) -> bool:
    """Whether ``exc`` is what a damaged key of the layout makes a command answer."""
    if isinstance(exc, DamagedKeyError):
        return True
    return isinstance(exc, ResponseError) and any(r in str(exc) for r in _DAMAGE_REPLIES)


async def explain_damage(client: Any, keys: Sequence[str], exc: Exception) -> Exception:
    """``exc``, or the ``DamagedKeyError`` naming the key when ``exc`` is a bare type or
    counter error of a command run on the layout ``keys`` and a key of it is damaged."""
    if isinstance(exc, DamagedKeyError) or not is_damage_error(exc) or not _is_layout(keys):
        return exc
    try:
        found = await find_damage(client, keys)
    except (RedisError, OSError):
        return exc
    if found is None:
        return exc
    found.__cause__ = exc
    return found


async def named(queries: Any, call: Awaitable[T]) -> T:
    """``await call`` (a read of ``queries``, a ``Queries``): a bare ``WRONGTYPE`` from a
    key of the queue's layout comes out as the ``DamagedKeyError`` naming the key."""
    try:
        return await call
    except ResponseError as exc:
        ctx = queries.ctx
        err = await explain_damage(await ctx.client(), ctx.keys.all, exc)
        if err is exc:
            raise
        raise err from exc


async def named_key(client: Any, key: str, expected: str, call: Awaitable[T]) -> T:
    """``await call`` (a command on ``key``, outside the layout: the schedule index): a
    bare ``WRONGTYPE`` comes out as the ``DamagedKeyError`` naming ``key`` when it holds
    another type than ``expected``."""
    try:
        return await call
    except ResponseError as exc:
        if "WRONGTYPE" not in str(exc):
            raise
        try:
            raw = await client.type(key)
        except (RedisError, OSError):
            raise exc from None
        found = raw.decode() if isinstance(raw, bytes) else str(raw)
        if found in ("none", expected):
            raise
        raise DamagedKeyError("", key, found, expected) from exc


class DamagedKeys:
    """A queue's report of a damaged key of its layout, at a bounded rate (module
    docstring), and of the server refusing writes (``serverinfo.WriteRefusals``: full,
    unable to save, a replica). ``failed(exc, client, keys)`` takes any error of a
    worker's call: returns False when it is about neither (the caller reports it as
    before); a bare ``WRONGTYPE`` is looked into in the background to name the key.
    ``ok()`` after a call that succeeded. Never raises."""

    def __init__(self, queue: str, *, clock: Callable[[], float] | None = None) -> None:
        self.queue = queue
        self._clock = clock or time.monotonic
        self._key: str | None = None  # the damaged key last reported
        self._logged_at: float | None = None
        self._repeats = 0
        self._looking: asyncio.Future[Any] | None = None
        #: True while the last call of a worker of this process met a damaged key.
        self.damaged = False
        self.refusals = WriteRefusals(queue, self._clock)

    def failed(self, exc: BaseException, client: Any = None, keys: Sequence[str] = ()) -> bool:
        if self.refusals.failed(exc):
            return True
        if not is_damage_error(exc):
            return False
        self.damaged = True
        if isinstance(exc, DamagedKeyError):
            self._report(exc.key, str(exc))
        elif client is not None and keys:
            if self._due(None) and (self._looking is None or self._looking.done()):
                self._looking = asyncio.ensure_future(self._look(exc, client, keys))
            else:
                self._repeats += 1
        else:
            self._report(None, safe_text(exc))
        return True

    def ok(self, client: Any, keys: Sequence[str]) -> None:
        """A call of a worker succeeded: while a key was reported damaged, check the
        layout ``keys`` in the background, and say so once all are sound again (a call
        that does not use the damaged key succeeds meanwhile)."""
        self.refusals.ok()
        if self.damaged and (self._looking is None or self._looking.done()):
            self._looking = asyncio.ensure_future(self._verify(client, keys))

    async def _verify(self, client: Any, keys: Sequence[str]) -> None:
        try:
            if await find_damage(client, keys) is not None:
                return
        except Exception:  # the next call tells
            return
        self.damaged = False
        if self._key is not None or self._repeats:
            log.warning(
                "queue %s: its keys are sound again (%s was repaired); work resumes",
                self.queue,
                self._key or "the damaged key",
            )
        # The next damage is reported at once; the same report's clock is kept.
        self._key, self._repeats = None, 0

    async def _look(self, exc: BaseException, client: Any, keys: Sequence[str]) -> None:
        found = None
        with contextlib.suppress(Exception):
            found = await find_damage(client, keys)
        if found is not None:
            self._report(found.key, str(found))
        else:
            self._report(None, safe_text(exc))

    def _due(self, key: str | None) -> bool:
        if key is not None and key != self._key:
            return True
        return self._logged_at is None or self._clock() - self._logged_at >= DAMAGE_LOG_S

    def _report(self, key: str | None, text: str) -> None:
        if not self._due(key):
            self._repeats += 1
            return
        more = (
            f" ({self._repeats} more failed calls since the last report)" if self._repeats else ""
        )
        log.error(
            "queue %s: work stopped on a damaged key%s: %s. Retrying; reported again "
            "every %d s while it lasts",
            self.queue,
            more,
            text,
            int(DAMAGE_LOG_S),
        )
        self._key = key if key is not None else self._key
        self._logged_at = self._clock()
        self._repeats = 0
