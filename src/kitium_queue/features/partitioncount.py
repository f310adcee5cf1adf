"""The partition count of a ``PartitionedQueue``, recorded in Redis at its first use
(``CountRecord``), and the partitions' names (``partition_names``): a process that
opens the queue with another count cannot lose sight of the jobs the recorded count
still holds, and one that lost its place in the record refuses new jobs rather than
add them to a layout nobody reads (docs/scale-out.md, "Changing the partition count")."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from redis.crc import key_slot
from redis.exceptions import ResponseError

from ..connerrors import refused
from ..errors import ConfigurationError, ConnectionUnavailableError, PermissionDeniedError
from ..keys import QueueKeys
from ..leader import cancel_and_wait
from ..leftover import keep
from ..limits import clip, get_logger
from ..scripts import ScriptRegistry

__all__ = [
    "MAX_PARTITIONS", "RECORD_LUA", "RECORD_SCRIPT", "SCHEME", "CountRecord", "partition_names",
]  # fmt: skip

log = get_logger(__name__)

_SLOTS = 16384
#: The most partitions a queue may have.
MAX_PARTITIONS = 1024


def partition_names(name: str, partitions: int) -> list[str]:
    """Physical queue names of ``name`` split ``partitions`` ways.

    Partition ``i`` is ``"<name>#<i>"``, or ``"<name>#<i>.<k>"`` with the smallest ``k``
    that puts its hash tag in the i-th of ``partitions`` equal ranges of the 16384
    cluster slots. So the partitions cover the slot space evenly, and with the usual
    even slot layout (``redis-cli --cluster create``, managed services) a partition count
    that is a multiple of the number of masters spreads the queue evenly over them.
    Deterministic: every producer and worker derives the same names.
    """
    out = []
    for i in range(partitions):
        lo, hi = i * _SLOTS // partitions, (i + 1) * _SLOTS // partitions
        k = 0
        while True:
            cand = f"{name}#{i}" if k == 0 else f"{name}#{i}.{k}"
            if lo <= key_slot(cand.encode()) < hi:
                out.append(cand)
                break
            k += 1
    return out


#: The placement scheme recorded with the count: keys map by ``crc32(key) % N`` and the
#: partitions are named by ``partition_names``. Another scheme is another layout.
SCHEME = "crc32-slot-ranges/1"
_REFRESH_S = 10.0  # how often a process that uses the count says so
_STALE_MS = 30_000  # a process not heard of for this long no longer counts as using it
_CANONICAL = re.compile(r"[1-9][0-9]{0,3}")

#: The name the record's script is registered under in each partition's registry.
RECORD_SCRIPT = "partition_count"
# One call: the record (a hash: partitions, scheme) and the processes using it (a sorted
# set: token -> when last seen, server time), both under the hash tag ``{<name>#}``.
# ARGV: count, scheme, token, stale ms, mode ('use' | 'take'), and for 'take' the count
# and scheme it replaces. Returns {'same', '1' if the token was still listed else '0'}
# | {'new'} | {'taken', old n, old scheme} | {'other', n, scheme, users}
# | {'damaged', key, type}. Every check before the first write.
RECORD_LUA = """
local rec, users = KEYS[1], KEYS[2]
for i, want in ipairs({'hash', 'zset'}) do
  local t = redis.call('TYPE', KEYS[i])['ok']
  if t ~= 'none' and t ~= want then return {'damaged', KEYS[i], t} end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', users, '-inf', now - tonumber(ARGV[4]))
local cur = redis.call('HMGET', rec, 'partitions', 'scheme')
if cur[1] == ARGV[1] and cur[2] == ARGV[2] then
  local had = redis.call('ZSCORE', users, ARGV[3])
  redis.call('ZADD', users, now, ARGV[3])
  return {'same', had and '1' or '0'}
end
local live = redis.call('ZCARD', users)
if cur[1] and not (ARGV[5] == 'take' and cur[1] == ARGV[6] and cur[2] == ARGV[7]
                   and live == 0) then
  return {'other', cur[1], cur[2] or '', live}
end
redis.call('HSET', rec, 'partitions', ARGV[1], 'scheme', ARGV[2])
redis.call('ZADD', users, now, ARGV[3])
if cur[1] then return {'taken', cur[1], cur[2] or ''} end
return {'new'}
"""


def _trust_s() -> float:
    """How long after this process was last confirmed in the record a new job goes on
    without asking Redis: two thirds of the stale bound (20 s), which the refresh
    (every 10 s) keeps ahead of. Within it the entry is surely still there (it was
    written after the call was sent, and is kept for the stale bound), so no other
    count can have been recorded."""
    return _STALE_MS / 1000 * 2 / 3


class CountRecord:
    """The partition count of one logical queue, recorded in Redis at its first use
    (``<prefix>:{<name>#}:partitions``, with the processes using it in
    ``...:partitions:users``), so that a process opening it with another count cannot
    lose sight of the jobs the recorded count still holds (docs/scale-out.md).

    ``scripts``: the registry the record's script (``RECORD_SCRIPT``) is registered in,
    used when ``check`` is given none; ``spare``: makes a client of the same server for
    a ``release`` awaited in another event loop than the check's."""

    def __init__(
        self,
        name: str,
        partitions: int,
        prefix: str,
        *,
        scripts: ScriptRegistry | None = None,
        spare: Callable[[], Any] | None = None,
    ) -> None:
        self.name, self.partitions = name, partitions
        base = f"{prefix}:{{{name}#}}:"
        self.key, self.users_key = base + "partitions", base + "partitions:users"
        self.prefix = prefix
        if scripts is None:
            scripts = ScriptRegistry()
            scripts.add_fragment(RECORD_SCRIPT, RECORD_LUA)
        self._scripts = scripts
        self._spare = spare
        self._token = ""  # this registration's (made at each check: forked processes differ)
        self._lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        self._client: Any = None  # the client of the last check, None: not checked
        self._refresher: asyncio.Task[None] | None = None
        self._asking: asyncio.Task[None] | None = None  # the call ``confirm`` makes
        self._failure: Exception | None = None  # why the last call failed
        # When the last call that kept this process in the record was sent (monotonic
        # and wall clock: a frozen VM's monotonic clock may stand still).
        self._heard = (0.0, 0.0)
        #: Set when the record changed under this process: new jobs are refused.
        self.moved: str | None = None

    @property
    def checked(self) -> bool:
        """Whether a connection of this process checked the count (until ``release``)."""
        return self._client is not None

    async def _call(
        self, client: Any, mode: str = "use", old: Sequence[str] = ("", "")
    ) -> list[str]:
        args = (str(self.partitions), SCHEME, self._token, str(_STALE_MS), mode, *old)
        answer = await self._scripts.call(client, RECORD_SCRIPT, (self.key, self.users_key), args)
        return [a.decode("utf-8", "replace") if isinstance(a, bytes) else str(a) for a in answer]

    async def check(self, client: Any, scripts: ScriptRegistry | None = None) -> None:
        """Record the count, or check it against the recorded one (once per connection
        of the queue; ``ConfigurationError`` if another count is in use). ``scripts``:
        the connecting queue's registry (its scripts loaded on ``client``)."""
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock[0] is not loop:  # a lock serves one loop
            self._lock = (loop, asyncio.Lock())
        async with self._lock[1]:
            if self._client is not None:
                return
            if scripts is not None:
                self._scripts = scripts
            self._token = uuid.uuid4().hex
            try:
                await self._settle(client)
            except (ResponseError, PermissionDeniedError) as exc:
                if not refused(exc):
                    raise
                raise PermissionDeniedError(
                    f"Redis refused the check of the partition count of {self.name!r} "
                    f"({clip(str(exc), 200)}): its user needs the key pattern "
                    f"~{self.prefix}:{{{self.name}#* (every partition count and the record "
                    f"of the count), or ~{self.prefix}:{{{self.name}#}}:* besides the "
                    "partitions' own (docs/scale-out.md)"
                ) from None
            self._client, self.moved = client, None
            self._refresher = loop.create_task(_refresh(weakref.ref(self)))

    async def _settle(self, client: Any) -> None:
        sent = (time.monotonic(), time.time())
        answer = await self._call(client)
        for _ in range(3):
            if answer[0] == "damaged":
                raise ConfigurationError(
                    f"the partition count record of {self.name!r} is damaged: key "
                    f"{clip(answer[1], 300)} holds a {clip(answer[2], 20)}; check it and delete it"
                )
            if answer[0] == "same":
                self._heard = sent
                return
            if answer[0] in ("new", "taken"):
                was = f" (it was {clip(answer[1], 10)})" if answer[0] == "taken" else ""
                log.info(
                    "partitioned queue %s: partition count %d recorded%s",
                    self.name, self.partitions, was,
                )  # fmt: skip
                self._heard = sent
                return
            old_n, old_scheme, live = answer[1], answer[2], int(answer[3])
            held = await self._held(client, old_n, old_scheme)
            if held or live:
                raise ConfigurationError(self._refusal(old_n, held, live))
            sent = (time.monotonic(), time.time())
            answer = await self._call(client, "take", (old_n, old_scheme))
        raise ConfigurationError(
            f"partitioned queue {self.name!r}: the recorded partition count kept changing "
            "while this process checked it; start it again"
        )

    async def _held(self, client: Any, old_n: str, old_scheme: str) -> dict[str, int]:
        """The jobs the layout of ``old_n`` partitions holds, per state (none at 0)."""
        if old_scheme != SCHEME or not _CANONICAL.fullmatch(old_n) or int(old_n) > MAX_PARTITIONS:
            raise ConfigurationError(
                f"partitioned queue {self.name!r} is recorded with partitions="
                f"{clip(repr(old_n), 20)} and placement {clip(repr(old_scheme), 60)}, which "
                f"this release cannot read; if no job is left in that layout, delete key "
                f"{self.key} and start again"
            )
        pipe = client.pipeline(transaction=False)
        for name in partition_names(self.name, int(old_n)):
            k = QueueKeys(name, self.prefix)
            for key in (k.wait, k.active, k.delayed, k.failed, k.dlq):
                pipe.zcard(key)
            pipe.hget(k.meta, "parked")
        held = dict.fromkeys(("waiting", "active", "delayed", "failed", "dlq", "parked"), 0)
        for i, reply in enumerate(await pipe.execute()):
            with contextlib.suppress(TypeError, ValueError):  # a damaged parked counter
                held[list(held)[i % 6]] += max(0, int(reply or 0))
        return {s: n for s, n in held.items() if n}

    def _refusal(self, old_n: str, held: dict[str, int], live: int) -> str:
        head = (
            f"partitioned queue {self.name!r} is recorded in Redis with {old_n} partitions "
            f"and this process opened it with partitions={self.partitions}: the partitions "
            "of another count are other queues, "
        )
        tail = (
            f"start with partitions={self.partitions} again then: the new count is "
            "recorded once the old layout holds no job and no process uses it "
            "(docs/scale-out.md, changing the partition count)"
        )
        if held:
            total = sum(held.values())
            what = ", ".join(f"{n} {s}" for s, n in held.items())
            return (
                f"{head}so the {total} job(s) that layout still holds ({what}) would be "
                f"neither counted, found nor run. Keep PartitionedQueue({self.name!r}, "
                f"partitions={old_n}) running until they are done (retry or remove its "
                f"failed and dead-lettered jobs), stop its processes, and {tail}"
            )
        return (
            f"{head}and {live} process(es) using {old_n} partitions are live (heard of "
            f"within {_STALE_MS // 1000} s): jobs they add would not be seen. Stop them "
            f"(close(); a process killed is forgotten {_STALE_MS // 1000} s after it was "
            f"last heard of), and {tail}"
        )

    # ------------------------------------------------------------------ staying counted
    def current(self) -> bool:
        """Whether a new job may go on without asking Redis: refused (``ConfigurationError``)
        once the count moved under this process; False when this process was last
        confirmed in the record longer than ``_trust_s`` ago (paused, frozen, its loop
        blocked, Redis away): ``confirm`` first. No Redis call."""
        if self.moved is not None:
            raise ConfigurationError(self.moved)
        if self._client is None:
            return True  # the add connects, and its connection checks the count
        mono, wall = self._heard
        return max(time.monotonic() - mono, time.time() - wall) < _trust_s()

    async def confirm(self) -> None:
        """Before a new job when ``current`` said False: ask Redis now (one call). The
        count unchanged, this process takes its place again (if it lost it) and the
        job goes on; another count recorded meanwhile refuses it, naming both. The adds
        that find the confirmation old at once (a burst at the mark, the threads of a
        ``SyncPartitionedQueue``) share one call and its answer."""
        if self.current():
            return
        loop = asyncio.get_running_loop()
        asking = self._asking
        if asking is None or asking.done() or asking.get_loop() is not loop:
            asking = self._asking = loop.create_task(self._ask())
            asking.add_done_callback(_retrieved)  # its waiters may all be cancelled
        await asyncio.shield(asking)

    async def _ask(self) -> None:
        mono, wall = self._heard
        self._failure = None
        if not await self._refreshed():
            raise ConfigurationError(self.moved)
        cause, self._failure = self._failure, None
        if self._heard == (mono, wall) and max(time.monotonic() - mono, time.time() - wall) >= (
            _STALE_MS / 1000
        ):
            # A connection error, as the add's own would be: retried by callers that
            # retry those (a ConfigurationError said the settings were wrong).
            raise ConnectionUnavailableError(
                f"partitioned queue {self.name!r}: Redis did not answer the check of the "
                f"partition count ({clip(str(cause), 200)}), and this process has not been "
                f"confirmed in its record for {_STALE_MS // 1000} s or more: new jobs are "
                "refused until Redis answers (another count may have been recorded "
                "meanwhile)"
            ) from cause

    async def _refreshed(self) -> bool:
        """Say this process still uses the count; False once another took over (``moved``)."""
        client, sent = self._client, (time.monotonic(), time.time())
        if client is None:
            return self.moved is None
        try:
            answer = await self._call(client)
        except Exception as exc:  # Redis away: the next turn tries again
            log.debug("partitioned queue %s: count refresh failed: %s", self.name, exc)
            self._failure = exc
            return self.moved is None
        if answer[0] == "same":
            if answer[1:] == ["0"]:
                log.warning(
                    "partitioned queue %s: this process was not heard of for %d s or more "
                    "(paused, frozen or cut off from Redis) and had lost its place in the "
                    "partition count record; the count is unchanged (%d): place taken again",
                    self.name, _STALE_MS // 1000, self.partitions,
                )  # fmt: skip
            self._heard = max(self._heard, sent)
        elif answer[0] == "other":
            self.moved = (
                f"partitioned queue {self.name!r}: Redis records {clip(answer[1], 10)} "
                f"partitions, and this process uses {self.partitions}: the partition count "
                f"recorded in Redis is no longer {self.partitions} (this process was not "
                f"heard of for {_STALE_MS // 1000} s or more, paused, frozen or cut off, and "
                f"another count took over meanwhile): new jobs are refused, they would go to "
                f"a layout no process reads; restart it with partitions={clip(answer[1], 10)}"
            )
            log.error("%s", self.moved)
        elif answer[0] == "damaged":
            self.moved = (
                f"partitioned queue {self.name!r}: the partition count record is damaged "
                f"(key {clip(answer[1], 300)} holds a {clip(answer[2], 20)}): new jobs are "
                f"refused; check it and delete it, then restart this process"
            )
            log.error("%s", self.moved)
        return self.moved is None

    # ------------------------------------------------------------------ release
    async def release(self) -> None:
        """Stop saying this process uses the count (``close``), from any event loop: in
        another than the check's, its refresh is stopped in its own loop (if that one
        runs) and the entry withdrawn over a client of this loop (``spare``)."""
        task, self._refresher = self._refresher, None
        client, self._client = self._client, None
        token, self._token = self._token, ""  # a refresh still under way stops
        here = asyncio.get_running_loop()
        loop = task.get_loop() if task is not None else here
        if task is not None and loop is here:
            # Cancelled again until it ends (a refresh's call may take one cancel for
            # its reply before Python 3.12, gh-86296: a close then waited a refresh).
            with contextlib.suppress(Exception):
                await cancel_and_wait(task)
        elif task is not None and loop.is_running():  # another thread's: stopped there
            stopped = asyncio.run_coroutine_threadsafe(_stopped(task), loop)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.wrap_future(stopped), 5)
        elif task is not None and loop.is_closed():
            # Kept, never run (leftover.py): collected, asyncio said it "destroyed but
            # pending" (an ERROR) wherever the garbage collector ran next.
            keep((task, self._asking))
        elif task is not None:  # an idle loop: cancelled if it runs again
            with contextlib.suppress(RuntimeError):  # closed since
                loop.call_soon_threadsafe(task.cancel)
        if client is None or not token:
            return
        own = None
        if loop is not here:  # that client's connections belong to its loop
            if self._spare is None:
                return  # forgotten after _STALE_MS
            client = own = self._spare()
        try:
            await asyncio.wait_for(client.zrem(self.users_key, token), 5)
        except Exception as exc:  # forgotten after _STALE_MS all the same
            log.debug("partitioned queue %s: count release failed: %s", self.name, exc)
        finally:
            if own is not None:
                with contextlib.suppress(Exception):
                    await own.aclose()


def _retrieved(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()


async def _stopped(task: asyncio.Task[None]) -> None:
    with contextlib.suppress(Exception):
        await cancel_and_wait(task)


async def _refresh(ref: weakref.ref[CountRecord]) -> None:
    """Refresh every ``_REFRESH_S`` while the record lives (an unclosed queue is freed)
    and keeps the registration it started with (``release`` ends it)."""
    record = ref()
    token = record._token if record is not None else ""
    del record
    while True:
        await asyncio.sleep(_REFRESH_S)
        record = ref()
        if record is None or record._token != token or not await record._refreshed():
            return
        del record
