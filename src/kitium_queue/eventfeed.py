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
  included: the stream holds it, so nothing after it was trimmed. When it holds neither
  it nor any before it (the stream was trimmed past it at ``events_max_len`` while the
  reader lagged, or removed: ``clear()``, a Redis restart without persistence), the
  events between it and the next one held may be lost: the reader yields a
  ``GAP_EVENT`` entry first (``fields``: ``after``, ``next``) and logs a warning (at
  most every ``DOWN_LOG_S``), then reads on. An entry deleted on its own (a
  compliance erasure) is no gap.
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
from collections.abc import AsyncGenerator, Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from redis.exceptions import AuthenticationError, RedisClusterException, RedisError

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


async def _resolved(client: Any, key: str, last_id: str) -> str:
    """``last_id`` with ``"$"`` replaced by the id of the stream's newest entry now
    ("0-0" for an empty stream)."""
    if last_id != "$":
        return last_id
    newest = await client.xrevrange(key, "+", "-", count=1)
    if not newest:
        return "0-0"
    first = newest[0][0]
    return first.decode() if isinstance(first, bytes) else str(first)


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
    *,
    last_id: str,
    block_ms: int,
    follow: bool,
    count: int,
    gaps: Hush,
) -> AsyncGenerator[StreamEvent, None]:
    """The entries of ``key`` after ``last_id`` (a stream id, "0-0" from the start), a
    ``GAP_EVENT`` first where some may be missing; with ``follow=False`` it ends once
    none came within ``block_ms``. ``XREAD`` from ``last_id`` on, ``last_id`` included,
    reads them: the entry it returns first tells whether ``last_id`` is still held (no
    gap, module text); ``XREAD BLOCK`` only waits for the next entry, read then the
    same way."""
    while True:
        mark = _order(last_id)
        reply = await client.xread({key: _before(mark)}, count=count + 1)
        entries = [stream_event(eid, raw) for eid, raw in stream_entries(reply)]
        fresh = [ev for ev in entries if _order(ev.id) > mark]
        if fresh:
            # ``last_id`` is gone: a gap unless an older entry is still held (an entry
            # deleted on its own, not trimmed).
            gone = mark != (0, 0) and len(fresh) == len(entries)
            if gone and not await client.xrevrange(key, max=last_id, min="-", count=1):
                _gap_said(gaps, queue, last_id, fresh[0].id)
                yield StreamEvent(last_id, GAP_EVENT, "", {"after": last_id, "next": fresh[0].id})
            for ev in fresh:
                last_id = ev.id
                yield ev
            if len(entries) > count:
                continue  # more to read at once
        while not stream_entries(await client.xread({key: last_id}, count=1, block=block_ms)):
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
    client = conn.client(blocking=True)
    deadline = conn.answer_timeout_s(CONNECT_TIMEOUT_S)
    key = ctx.keys.events
    connected = False
    outage = _Outage(ctx.name, _GIVE_UP_S.get())
    gaps = Hush()
    count = READ_COUNT
    try:
        while True:
            try:
                # Blocking reads have no socket timeout: a PING with a deadline first, so
                # a server that never answers fails (or is retried) instead of hanging.
                await ping(client, deadline)
                last_id = await _resolved(client, key, last_id)
                connected = True
                outage.ended(last_id)
                async for ev in _read(
                    client, key, ctx.name, last_id=last_id, block_ms=block_ms, follow=follow,
                    count=count, gaps=gaps,
                ):  # fmt: skip
                    if ev.event != GAP_EVENT:
                        ev = await _shown(ctx, ev)
                    last_id = ev.id  # delivered: a reconnect reads on after it
                    outage.pause = RETRY_FIRST_S
                    yield ev
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
                outage.failed(exc, last_id, conn.redact(exc) or "no answer")
                # Fewer entries per reply from now on: a reply the server cut off (over
                # its client-output-buffer-limit) is not asked for again as it was.
                count = max(1, count // 10)
            await outage.wait()
    finally:
        if conn.owns(client):
            await client.aclose()
