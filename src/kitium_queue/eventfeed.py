"""``queue.events()``: the durable event stream read on a caller's behalf.

``events.read_stream`` reads the stream on one connection; this module adds what a
reader that follows the stream (``follow=True``, the default, and ``kitium-queue
events``) needs to go on like ``tail -f``:

* **Through a lost connection.** A connection the server closed (``CLIENT KILL``, a
  restart, a failover, a proxy's idle timeout) or Redis down for a while ends no
  follower: it reconnects with a growing pause (``RETRY_FIRST_S`` doubling up to
  ``RETRY_MAX_S``) and reads on after the last event it delivered, so no event is lost
  or delivered twice (the stream keeps them meanwhile, up to its trimmed length).
  ``"$"`` is resolved to a stream id once, before the first read: a reconnect never
  skips what was added while the connection was down.
* **A gap.** Each read asks for the entries from the last one delivered on, that one
  included: the stream holds it, so nothing after it was trimmed (trimming removes the
  oldest entries), and an older entry still held means it was deleted on its own (a
  compliance erasure), no gap either. Only when the stream holds neither it nor any
  before it, one ``XINFO STREAM`` tells whether entries it had not read were lost
  (``_Place``): Redis counts the entries ever added (``entries-added``, 7.0+), so the
  entries ever added before the first one held, against how many the reader had come
  to, say it exactly, whatever the trimming's granularity (``MAXLEN ~`` removes whole
  blocks of about 100 entries). Then the reader yields a ``GAP_EVENT`` entry first
  (``fields``: ``after``, ``next``) and logs a warning (at most every ``DOWN_LOG_S``),
  and reads on. It also does so, not knowing, where the count cannot tell: on Redis
  before 7.0, for a stream with an entry deleted on its own after the first one held
  (until trimmed past it: a compliance rewrite leaves one), where the reader has not
  yet come to an entry whose count it knows (one resumed from a saved id, before the
  newest entry at its start), and at the first check after a lost connection (a
  Redis restarted without persistence made the stream anew, and can have lost nothing
  unread or some: nothing tells the two apart). A stream removed and made again
  (``clear()``) starts its count again, and is a gap.
* **Closing.** The queue's ``close()`` ends the loop: the iteration stops
  (``StopAsyncIteration``) at its next step, a blocking read or a pause before a
  reconnection cut short (``EventEmitter.closing``).
* **What it raises.** A first connection that fails raises at once (a wrong setting
  would otherwise be retried for ever), as does a reader with ``follow=False``; an
  error that is not a lost connection (a damaged stream key, an ACL refusal, refused
  credentials) always raises. Each is the library's error, via
  ``ConnectionFactory.error``. A follower reconnects for as long as Redis stays
  unreachable, unless its caller bounded that with ``giving_up_after`` (the CLI's
  ``events``: a script tailing the stream gets an exit code rather than a silent
  wait); such a follower tells of its reconnecting at info level only, since the
  error it may end with says it all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar

from redis.exceptions import (
    AuthenticationError,
    RedisClusterException,
    RedisError,
    ResponseError,
)

from .connection import TRANSIENT_ERRORS
from .context import CONNECT_TIMEOUT_S
from .errors import ConfigurationError, ConnectionUnavailableError
from .events import PROGRESS_BYTES_FIELD, StreamEvent, stream_entries, stream_event
from .limits import Hush, get_logger
from .options import lookup_id
from .pools import ping
from .redact import redact_json_text

if TYPE_CHECKING:
    from .context import QueueContext

__all__ = ["GAP_EVENT", "RETRY_FIRST_S", "RETRY_MAX_S", "giving_up_after", "stream_events"]

log = get_logger(__name__)

#: First pause before a follower reconnects after losing its connection.
RETRY_FIRST_S = 0.1
#: Longest pause between reconnection attempts while Redis stays unreachable.
RETRY_MAX_S = 5.0
#: While Redis stays unreachable, a follower says so again at most this often.
DOWN_LOG_S = 30.0
#: Entries one read asks for; a tenth as many after each lost connection (down to 1).
READ_COUNT = 500
#: ``StreamEvent.event`` of the entry ``events()`` yields where events may be missing:
#: ``fields["after"]`` is the last entry read (its ``id`` too), ``fields["next"]`` the
#: first one the stream still holds after it; ``job_id`` is empty.
GAP_EVENT = "events-gap"

# How long a follower started in this context reconnects while Redis stays
# unreachable (None: for as long as it takes); see ``giving_up_after``.
_GIVE_UP_S: ContextVar[float | None] = ContextVar("kitium_queue_events_give_up", default=None)

# What ends a read: anything from Redis or the socket becomes the library's error.
# (``ConnectionUnavailableError``: the shared client, which reads large progress
# values, could not connect again.)
_CONNECTION_ERRORS = (
    RedisError,
    RedisClusterException,
    OSError,
    asyncio.TimeoutError,
    ConnectionUnavailableError,
)


@contextlib.contextmanager
def giving_up_after(seconds: float | None) -> Iterator[None]:
    """Within this block (and the tasks started in it), a follower of the event stream
    whose Redis stays unreachable for ``seconds`` raises ``ConnectionUnavailableError``
    instead of reconnecting on (None: reconnect for as long as it takes, the default)."""
    token = _GIVE_UP_S.set(seconds)
    try:
        yield
    finally:
        _GIVE_UP_S.reset(token)


def _lost(exc: BaseException) -> bool:
    """Whether a follower may read again after ``exc``: the connection was lost or the
    server is failing over, not a refusal (credentials, ACL) or a damaged key."""
    if isinstance(exc, AuthenticationError):
        return False
    return isinstance(exc, (*TRANSIENT_ERRORS, ConnectionUnavailableError))


async def _shown(ctx: QueueContext, ev: StreamEvent) -> StreamEvent:
    """``ev`` as a caller sees it: a large progress value read from its job's record
    (left out if the job is gone), progress through the payload redactors."""
    if ev.event == "job-progress" and PROGRESS_BYTES_FIELD in ev.fields:
        try:
            jid: str | None = lookup_id(ev.job_id, "job_id")
        except ConfigurationError:  # an entry written by another client: as stored
            jid = None
        if jid is not None:
            raw = await (await ctx.client()).hget(ctx.keys.job(jid), "pg")
            if raw is not None:
                fields = {**ev.fields, "progress": raw.decode("utf-8", "backslashreplace")}
                ev = StreamEvent(ev.id, ev.event, ev.job_id, fields)
    if ctx.redactors and "progress" in ev.fields:
        shown = redact_json_text(ev.fields["progress"], ctx.redact_value)
        ev = StreamEvent(ev.id, ev.event, ev.job_id, {**ev.fields, "progress": shown})
    return ev


def _order(entry_id: str) -> tuple[int, int]:
    """A stream id as the pair Redis orders it by ("<ms>" alone is "<ms>-0")."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _before(mark: tuple[int, int]) -> str:
    """The stream id right before ``mark`` ("0-0" for "0-0"): ``XREAD`` after it reads
    from ``mark`` on, ``mark`` included."""
    ms, seq = mark
    if seq:
        return f"{ms}-{seq - 1}"
    return f"{ms - 1}-{2**64 - 1}" if ms else "0-0"


_T = TypeVar("_T")

#: Times one read is done again when the stream was trimmed on past it before the
#: ``XINFO STREAM`` that checks it for a gap (then the gap is told, not knowing).
CHECK_TRIES = 3


class _Closed(Exception):
    """The queue was closed: the reader ends (``stream_events``)."""


async def _unless_closed(closed: asyncio.Future[None], aw: Awaitable[_T]) -> _T:
    """``aw``'s result, or ``_Closed`` once ``closed`` is done first (``aw`` cancelled)."""
    task = asyncio.ensure_future(aw)
    if not closed.done():
        try:
            await asyncio.wait((task, closed), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            task.cancel()
            raise
    if not task.done():
        task.cancel()
        await asyncio.wait((task,))
    if closed.done():
        if not task.cancelled():
            task.exception()  # retrieved: the reader ends whatever it was
        raise _Closed
    return task.result()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _Info:
    """What ``XINFO STREAM`` says of the stream that counting needs (``_Place``)."""

    __slots__ = ("added", "deleted", "first", "length", "newest")

    def __init__(self, raw: Any) -> None:
        info = {_text(k): v for k, v in dict(raw).items()}
        added = info.get("entries-added")
        self.added: int | None = None if added is None else int(added)  # None: Redis < 7
        self.length = int(info.get("length") or 0)
        self.newest = _order(_text(info.get("last-generated-id") or "0-0"))
        deleted = info.get("max-deleted-entry-id")
        self.deleted = _order(_text(deleted)) if deleted is not None else None
        first = info.get("first-entry")
        self.first = _order(_text(first[0])) if first and first[0] is not None else None

    def counts(self) -> list[tuple[tuple[int, int], int]]:
        """Entries whose count (of the entries ever added up to it) this tells: the
        newest ever added, and the first held when no entry after it was deleted on its
        own (Redis' own rule for a consumer group's lag)."""
        if self.added is None:
            return []
        known = [(self.newest, self.added)]
        if self.first is not None and self.deleted is not None and self.deleted < self.first:
            known.append((self.first, self.added - self.length + 1))
        return sorted(known)


async def _stream_info(client: Any, key: str) -> _Info | None:
    """The stream's ``_Info``; None when Redis does not say (an ACL without
    ``XINFO``, a damaged key: the read that follows tells), ``_Info`` of nothing added
    when there is no stream."""
    try:
        return _Info(await client.xinfo_stream(key))
    except ResponseError as exc:
        if "no such key" in str(exc).lower():
            return _Info({"entries-added": 0, "max-deleted-entry-id": b"0-0"})
        return None


class _Place:
    """Where a reader is: ``last_id``, the last entry delivered, and ``added``, how many
    entries the stream was ever added up to it (None: not known), so that a read that
    finds the stream trimmed past it can tell exactly whether an entry it had not read
    went with it (``check``).

    ``added`` is first known from ``XINFO STREAM`` at the start: a reader from ``"$"``
    starts at the newest entry ever added, whose count it gives; one from ``"0"`` or a
    saved id comes to know it at the first entry it delivers whose count was told
    (``known``: the newest at its start, the first held then). Each entry delivered
    after adds one: an entry deleted on its own (``XDEL``) before the reader came to it
    is not seen, and makes the count short, so a later check may tell of a gap there
    (never miss one). ``same`` is False after a lost connection, until the stream is
    seen to hold what the reader read (the stream found then may be another one)."""

    __slots__ = ("added", "known", "last_id", "same")

    def __init__(self, last_id: str) -> None:
        self.last_id = last_id
        self.added: int | None = None
        self.known: list[tuple[tuple[int, int], int]] = []
        self.same = True

    async def begin(self, client: Any, key: str) -> None:
        """Before the first read: ``"$"`` resolved to a stream id (the newest entry
        ever added; "0-0" for no stream), and what counts the stream tells."""
        info = await _stream_info(client, key)
        if self.last_id == "$":
            if info is None:  # not told: the newest entry held
                newest = await client.xrevrange(key, "+", "-", count=1)
                self.last_id = _text(newest[0][0]) if newest else "0-0"
                return
            ms, seq = info.newest
            self.last_id = f"{ms}-{seq}"
        self.learn(info)

    def learn(self, info: _Info | None) -> None:
        self.known = info.counts() if info is not None else []
        mark = _order(self.last_id)
        for at, added in self.known:
            if at == mark:
                self.added = added
        self.known = [(at, n) for at, n in self.known if at > mark]

    def passed(self, entry_id: str) -> None:
        """An entry after ``last_id`` was delivered."""
        self.last_id = entry_id
        mark = _order(entry_id)
        if self.added is not None:
            self.added += 1
        while self.known and self.known[0][0] <= mark:
            at, added = self.known.pop(0)
            if at == mark:
                self.added = added

    async def check(self, client: Any, key: str, entries: list[StreamEvent]) -> bool | None:
        """Whether entries the reader had not read were lost, now that the stream holds
        neither ``last_id`` nor any entry before it; ``entries``: what the read found,
        the first one held on. None: trimmed on past all of them meanwhile, read again.
        ``added`` is then that of the entry before ``entries[0]``."""
        info = await _stream_info(client, key)
        marks = [_order(ev.id) for ev in entries]
        if info is None or info.added is None or info.first is None or info.deleted is None:
            lost = True  # Redis < 7.0, no XINFO allowed, or no stream any more: not told
            counted = None
        elif info.first not in marks:
            if info.first > marks[-1]:
                return None
            lost, counted = True, None  # an older entry than the read found: another stream
        elif info.deleted >= info.first:  # deleted on its own after the first held
            lost, counted = True, None
        else:
            counted = info.added - info.length - marks.index(info.first)
            lost = not self.same or counted != self.added
        self.same = True
        self.added = counted
        self.known = [(at, n) for at, n in (info.counts() if info else []) if at >= marks[0]]
        return lost


def _gap_said(gaps: Hush, queue: str, after: str, following: str) -> None:
    """A warning when a reader meets a gap, at most every ``DOWN_LOG_S`` (with how many
    came meanwhile)."""
    unsaid = gaps.say(DOWN_LOG_S)
    if unsaid is None:
        return
    log.warning(
        "queue %s: events(): the stream no longer holds event %s nor any before it; "
        "events between it and %s may be missing (trimmed at events_max_len while the "
        "reader lagged, or the stream was removed)%s",
        queue,
        after,
        following,
        f"; {unsaid} more such gaps since the last warning" if unsaid else "",
    )


async def _read(
    client: Any,
    key: str,
    queue: str,
    place: _Place,
    *,
    block_ms: int,
    follow: bool,
    count: int,
    gaps: Hush,
    closed: asyncio.Future[None],
) -> AsyncGenerator[StreamEvent, None]:
    """The entries of ``key`` after ``place.last_id`` (a stream id, "0-0" from the
    start), a ``GAP_EVENT`` first where some were lost; with ``follow=False`` it ends
    once none came within ``block_ms``. ``XREAD`` from ``last_id`` on, ``last_id``
    included, reads them: the entry it returns first tells whether ``last_id`` is still
    held (no gap, module text); ``XREAD BLOCK`` only waits for the next entry, read
    then the same way. The caller tells ``place`` of each entry it delivers."""
    tries = 0
    while True:
        mark = _order(place.last_id)
        reply = await client.xread({key: _before(mark)}, count=count + 1)
        entries = [stream_event(eid, raw) for eid, raw in stream_entries(reply)]
        fresh = [ev for ev in entries if _order(ev.id) > mark]
        if closed.done():
            raise _Closed
        if fresh:
            # ``last_id`` is gone: no gap if an older entry is still held (an entry
            # deleted on its own, not trimmed); else the count tells (``_Place``).
            gone = mark != (0, 0) and len(fresh) == len(entries)
            if gone and not await client.xrevrange(key, max=place.last_id, min="-", count=1):
                lost = await place.check(client, key, fresh)
                if lost is None and tries < CHECK_TRIES:
                    tries += 1
                    continue  # trimmed on past what was read: read again
                if lost is not False:
                    after = place.last_id
                    _gap_said(gaps, queue, after, fresh[0].id)
                    yield StreamEvent(after, GAP_EVENT, "", {"after": after, "next": fresh[0].id})
            elif mark != (0, 0):
                place.same = True  # it holds what the reader read: the same stream
            tries = 0
            for ev in fresh:
                yield ev
            if len(entries) > count:
                continue  # more to read at once
        while not stream_entries(
            await _unless_closed(
                closed, client.xread({key: place.last_id}, count=1, block=block_ms)
            )
        ):
            if not follow:
                return


class _Outage:
    """A follower's lost connection: since when, when it last said so, the next pause."""

    def __init__(self, queue: str, give_up: float | None) -> None:
        self.queue = queue
        self.give_up = give_up
        self.level = logging.WARNING if give_up is None else logging.INFO
        self.since: float | None = None
        self.said = 0.0
        self.pause = RETRY_FIRST_S

    def lasted(self) -> float:
        """Seconds since the connection was lost (0.0 while connected)."""
        return 0.0 if self.since is None else time.monotonic() - self.since

    def over(self) -> bool:
        """Whether the caller's bound on reconnecting has passed."""
        return self.give_up is not None and self.since is not None and self.lasted() >= self.give_up

    def failed(self, exc: BaseException, last_id: str, why: str) -> None:
        """A read or a reconnection failed with ``exc`` (worded ``why``): say so when it
        starts and every ``DOWN_LOG_S`` while it lasts."""
        now = time.monotonic()
        if self.since is None or now - self.said >= DOWN_LOG_S:
            log.log(
                self.level,
                "queue %s: events() lost its connection to Redis (%s: %s); reconnecting "
                "(every %.0f s at most) to read on after event %s",
                self.queue,
                type(exc).__name__,
                why,
                RETRY_MAX_S,
                last_id,
            )
            self.said = now
            self.since = now if self.since is None else self.since

    def ended(self, last_id: str) -> None:
        """Redis answers again (the pause grows on until an event is read: a read that
        keeps failing on a server that answers PING is retried at a bounded rate)."""
        if self.since is not None:
            log.log(
                self.level,
                "queue %s: events(): Redis answers again after %.1f s; reading on after event %s",
                self.queue,
                self.lasted(),
                last_id,
            )
        self.since = None

    async def wait(self) -> None:
        await asyncio.sleep(self.pause)
        self.pause = min(self.pause * 2, RETRY_MAX_S)


async def stream_events(
    ctx: QueueContext, *, last_id: str, block_ms: int, follow: bool
) -> AsyncGenerator[StreamEvent, None]:
    """The events of ``ctx``'s stream after ``last_id`` (checked by the caller), as
    ``JobQueue.events`` documents them; with ``follow`` it reconnects after a lost
    connection and resumes after the last event delivered (see the module's text)."""
    conn = ctx.connection
    closed = ctx.emitter.closing()  # done at the queue's close(): the loop ends
    client = conn.client(blocking=True)
    deadline = conn.answer_timeout_s(CONNECT_TIMEOUT_S)
    key = ctx.keys.events
    connected = False
    outage = _Outage(ctx.name, _GIVE_UP_S.get())
    gaps = Hush()
    count = READ_COUNT
    place = _Place(last_id)
    try:
        while True:
            try:
                # Blocking reads have no socket timeout: a PING with a deadline first, so
                # a server that never answers fails (or is retried) instead of hanging.
                await _unless_closed(closed, ping(client, deadline))
                if not connected:
                    await place.begin(client, key)
                connected = True
                outage.ended(place.last_id)
                feed = _read(
                    client, key, ctx.name, place, block_ms=block_ms, follow=follow,
                    count=count, gaps=gaps, closed=closed,
                )  # fmt: skip
                async with contextlib.aclosing(feed):
                    async for ev in feed:
                        if ev.event != GAP_EVENT:
                            ev = await _shown(ctx, ev)
                            place.passed(ev.id)  # delivered: a reconnect reads on after it
                        outage.pause = RETRY_FIRST_S
                        yield ev
                        if closed.done():
                            return
                return  # follow=False: no event within block_ms
            except _CONNECTION_ERRORS as exc:
                if not (follow and connected and _lost(exc)) or outage.over():
                    wrapped = conn.error(exc, ctx.name, timeout_s=deadline)
                    if wrapped is None:
                        raise
                    if outage.since is not None:
                        wrapped = ConnectionUnavailableError(
                            f"{wrapped}; the event reader tried to reconnect for "
                            f"{outage.lasted():.0f} s"
                        )
                    raise wrapped from None
                outage.failed(exc, place.last_id, conn.redact(exc) or "no answer")
                place.same = False  # the stream found again may be another (a restart)
                # Fewer entries per reply from now on: a reply the server cut off (over
                # its client-output-buffer-limit) is not asked for again as it was.
                count = max(1, count // 10)
            await _unless_closed(closed, outage.wait())
    except _Closed:
        return
    finally:
        ctx.emitter.unwatch(closed)
        if conn.owns(client):
            await client.aclose()
