"""A direct reply path for the engine's script exchanges on plain redis-py connections.

redis-py reads replies through an ``asyncio.StreamReader`` and several layers of
per-call bookkeeping (timeouts, health checks, push handling). On the hot path — one
awaited ``add_job``, a worker's claim and finish — those layers cost about as much
Python time as the exchange itself. ``ReplyChannel`` takes the connection's transport
for the duration the engine holds the connection (``scripts.ScriptRegistry``): bytes go
straight from ``data_received`` into a hiredis reader, and the awaiting task is woken
once, when the last reply of the exchange is complete.

The connection stays redis-py's: its handshake (AUTH, SELECT, CLIENT SETNAME) ran as
usual, its close goes through ``Connection.disconnect`` (the end of the connection is
passed on to the original stream protocol, so ``wait_closed`` and the reader's EOF work
as before), and before it goes back to the pool the original protocol is put back
(``restore``). Only connections whose reading redis-py does not customise are taken:
exact ``Connection`` / ``SSLConnection`` / ``UnixDomainSocketConnection`` (or the
pools' ``answering`` subclass of one, which changes only the health-check ``PING``) with
the hiredis parser (a Sentinel-managed connection, which turns a READONLY reply into a
reconnect, keeps redis-py's path).

The request side of the same exchanges is here too: ``pack_args`` writes a command's
arguments as RESP (in hiredis's C packer when they are plain str, bytes, int and float).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse

hiredis: Any
try:  # hiredis is a dependency (redis[hiredis]); without it the engine keeps redis-py's path
    import hiredis
except ImportError:  # pragma: no cover - exercised only without the extra
    hiredis = None

#: hiredis's type for RESP3 push messages (hiredis >= 3.2), or None.
_PUSH: type | None = getattr(hiredis, "PushNotification", None)
#: hiredis's RESP packing of a tuple of str, bytes, int and float (``*N`` header first),
#: or None: ``pack_args`` uses it for arguments of exactly those types (``_PACKABLE``),
#: which it packs byte for byte as its own loop does.
_PACK: Any = getattr(hiredis, "pack_command", None)
_PACKABLE = frozenset({str, bytes, int, float})

__all__ = [
    "ReplyChannel", "ReplyTimeout", "channel_for", "kept_channel", "pack_args",
    "release_channel",
]  # fmt: skip

#: What the hiredis reader returns while a reply is incomplete (no RESP2 reply decodes
#: to this object).
_MORE = object()

_CLOSED = "Connection closed by server."


class ReplyTimeout(Exception):
    """The replies of an exchange did not all arrive within its deadline."""


class ReplyChannel(asyncio.Protocol):
    """The protocol installed on a connection's transport while the engine uses it.

    One exchange at a time: ``exchange(payload, n)`` writes the payload and returns a
    future of the ``n`` replies, in order (server errors as exception instances, as
    redis-py's parser makes them). Anything that breaks the stream — the peer closing
    it, a protocol error, bytes that no exchange asked for — fails the exchange in
    flight and marks the channel unusable (``usable``); the caller then disconnects the
    connection, which the pool reconnects before anyone uses it again.
    """

    __slots__ = (
        "_broken",
        "_deadline",
        "_got",
        "_orig",
        "_pushed",
        "_reader",
        "_timer",
        "_transport",
        "_waiter",
        "_want",
    )

    def __init__(self, transport: asyncio.Transport, orig: Any, reader: Any) -> None:
        self._transport = transport
        self._orig = orig
        self._reader = reader
        self._waiter: asyncio.Future[list[Any]] | None = None
        self._want = 0
        self._got: list[Any] = []
        self._broken: BaseException | None = None
        self._pushed = False
        # One timer watches the exchanges' deadlines: armed by an exchange when none is,
        # left armed when the replies come (the next exchange's deadline is later), and
        # moved on to the deadline of the exchange in flight when it fires (``_expire``).
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0

    # -- the engine's side --------------------------------------------------------------
    @property
    def usable(self) -> bool:
        """Whether the stream is in step: open, nothing pending, nothing stray."""
        return (
            self._broken is None
            and not self._pushed
            and self._waiter is None
            and not self._transport.is_closing()
            and not self._reader.has_data()
        )

    def exchange(self, payload: bytes, n: int, timeout: float) -> asyncio.Future[list[Any]]:
        """Send ``payload`` (``n`` RESP commands) and return the future of their
        replies; it fails with ``ReplyTimeout`` when they are not all in within
        ``timeout`` seconds (the channel's one timer, ``_expire``)."""
        if self._broken is not None:
            raise RedisConnectionError(f"connection unusable: {self._broken}")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[Any]] = loop.create_future()
        self._waiter = fut
        self._want = n
        self._got = []
        self._deadline = deadline = loop.time() + timeout
        timer = self._timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._timer = loop.call_at(deadline, self._expire)
        self._transport.write(payload)
        return fut

    def abandon(self) -> None:
        """The exchange in flight will not be waited for (its task was cancelled, a
        reply said the connection is unusable): the stream is out of step from here."""
        self._fail(RedisConnectionError("an exchange was abandoned mid-way"))

    def restore(self) -> None:
        """Give the transport back to redis-py's stream protocol (the stream must be in
        step: every reply of the last exchange read)."""
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        self._transport.set_protocol(self._orig)

    # -- asyncio.Protocol ---------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        waiter = self._waiter
        if waiter is None:
            self._fail(RedisConnectionError("Redis sent bytes no request asked for"))
            return
        got = self._got
        try:
            while len(got) < self._want:
                reply = reader.gets()
                if reply is _MORE:
                    return
                if _PUSH is not None and type(reply) is _PUSH:
                    # RESP3 out-of-band data (nothing the engine subscribes to): not a
                    # reply; redis-py gets the connection back reconnected, not as is.
                    self._pushed = True
                    continue
                got.append(reply)
        except InvalidResponse as exc:
            self._fail(exc)
            return
        self._waiter = None  # the timer stays for the next exchange (``_expire``)
        if not waiter.done():
            waiter.set_result(got)

    def eof_received(self) -> bool | None:
        self._fail(RedisConnectionError(_CLOSED))
        result: bool | None = self._orig.eof_received()
        return result

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError(_CLOSED if exc is None else f"connection lost: {exc}"))
        self._orig.connection_lost(exc)

    def pause_writing(self) -> None:
        self._orig.pause_writing()

    def resume_writing(self) -> None:
        self._orig.resume_writing()

    def _expire(self) -> None:
        self._timer = None
        if self._waiter is None:
            return  # no exchange in flight: the next one arms the timer again
        loop = asyncio.get_running_loop()
        if loop.time() < self._deadline:  # a later exchange than the one that armed it
            self._timer = loop.call_at(self._deadline, self._expire)
            return
        self._fail(ReplyTimeout())

    def _fail(self, exc: BaseException) -> None:
        if self._broken is None:
            self._broken = exc
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)


_DIRECT: dict[type, bool] = {}


def _eligible(conn: Any) -> bool:
    cls = type(conn)
    known = _DIRECT.get(cls)
    if known is None:
        from redis.asyncio import connection as rc

        from .pools import answering  # its classes only change the health-check PING

        names = ("Connection", "SSLConnection", "UnixDomainSocketConnection")
        bases = [b for n in names if (b := getattr(rc, n, None)) is not None]
        known = hiredis is not None and any(cls in (b, answering(b)) for b in bases)
        _DIRECT[cls] = known
    if not known:
        return False
    parser = getattr(conn, "_parser", None)
    return type(parser).__name__ == "_AsyncHiredisParser"


def channel_for(conn: Any) -> ReplyChannel | None:
    """The channel of a connected redis-py connection, installing it on first use;
    None when the connection must keep redis-py's own path."""
    writer = getattr(conn, "_writer", None)
    if writer is None:
        return None
    transport = writer.transport
    proto = transport.get_protocol()
    if type(proto) is ReplyChannel:
        return proto
    if not _eligible(conn):
        return None
    parser = conn._parser
    reader_hiredis = getattr(parser, "_reader", None)
    if reader_hiredis is not None and reader_hiredis.has_data():
        return None  # redis-py holds unread bytes: leave the connection as it is
    stream = getattr(conn, "_reader", None)
    if stream is not None and getattr(stream, "_buffer", None):
        return None
    kwargs: dict[str, Any] = {
        "protocolError": InvalidResponse,
        "replyError": parser.parse_error,
        "notEnoughData": _MORE,
    }
    encoder = conn.encoder
    if encoder.decode_responses:
        kwargs["encoding"] = encoder.encoding
        kwargs["errors"] = encoder.encoding_errors
    channel = ReplyChannel(transport, proto, hiredis.Reader(**kwargs))
    transport.set_protocol(channel)
    return channel


def kept_channel(conn: Any) -> ReplyChannel | None:
    """The channel of a connection the engine kept between exchanges, when it is usable;
    None otherwise (the caller then checks the connection as any other). A usable channel
    says all the connection's checks would: since it took the transport, the end of the
    stream comes through it."""
    writer = getattr(conn, "_writer", None)
    proto = writer.transport.get_protocol() if writer is not None else None
    return proto if type(proto) is ReplyChannel and proto.usable else None


def release_channel(conn: Any) -> bool:
    """Give a connection back to redis-py's reading if a channel holds it. False when
    that channel is out of step: the caller disconnects the connection (the pool
    reconnects it before anyone uses it again)."""
    writer = getattr(conn, "_writer", None)
    proto = writer.transport.get_protocol() if writer is not None else None
    if type(proto) is not ReplyChannel:
        return True
    if not proto.usable:
        return False
    proto.restore()
    return True


def pack_args(args: Sequence[Any]) -> bytes:
    """``args`` as RESP bulk strings (a command's arguments after its ``*N`` header)."""
    if _PACK is not None and _PACKABLE.issuperset(map(type, args)):
        packed: bytes = _PACK(tuple(args))  # hiredis, in C: the same bytes after "*N\r\n"
        return packed[packed.index(b"\n") + 1 :]
    # Other types (and no hiredis): exact type checks first, the small ints every call
    # carries (counts, flags, retention) come packed already.
    parts: list[bytes] = []
    append = parts.append
    small = _SMALL_INTS
    for a in args:
        t = type(a)
        if t is bytes:
            append(b"$%d\r\n%b\r\n" % (len(a), a))
        elif t is str:
            b = a.encode()
            append(b"$%d\r\n%b\r\n" % (len(b), b))
        elif t is int and -1 <= a <= _SMALL_MAX:
            append(small[a + 1])
        else:
            if isinstance(a, int):  # bool too: True → "1", as redis-py encodes it
                b = b"%d" % a
            elif isinstance(a, (bytes, bytearray, memoryview)):
                b = bytes(a)
            else:
                b = str(a).encode()
            append(b"$%d\r\n%b\r\n" % (len(b), b))
    return b"".join(parts)


_SMALL_MAX = 1024
#: -1 .. _SMALL_MAX as RESP bulk strings (index = value + 1).
_SMALL_INTS = tuple(b"$%d\r\n%d\r\n" % (len(b"%d" % i), i) for i in range(-1, _SMALL_MAX + 1))
