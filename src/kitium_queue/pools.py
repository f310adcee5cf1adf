"""The connection pools of the clients a queue builds (``connection.ConnectionFactory``).

Two things redis-py's plain pool does not do:

* **Wait for a free connection.** redis-py's pool holds at most ``max_connections``
  (100 by default) and raises ``MaxConnectionsError`` ("Too many connections") at once
  for the next caller, so ``asyncio.gather`` of a few hundred queue calls failed
  part-way. These pools queue such a caller (first come, first served) until a
  connection is handed back, for up to ``POOL_WAIT_S``; only a pool that stays
  exhausted that long raises, with a message saying what to change.
* **Reconnect a connection the server closed while it sat in the pool** (a restart, a
  failover, a client timeout) before handing it out. redis-py 8.1's own check spots the
  EOF but then fails the reconnected connection's second check, so the first command on
  each such connection raised ``ConnectionError`` although the server was back.
  Nothing has been sent on it yet: reconnecting is safe (``stream_ended``: also one
  whose transport this side closed, which neither check saw before the loop's next turn).

And one thing redis-py's connections do not do: **take a write refusal as an answer.**
A server whose last background save failed refuses writes *and* ``PING`` (``MISCONF``);
one busy with another client's script past its ``busy-reply-threshold`` refuses every
command (``BUSY``) until the script ends. redis-py checks a new connection, and one idle
for ``health_check_interval``, with a ``PING``, so every such connection raised
redis-py's bare ``ResponseError``: a process started during a disk problem could not
even read, and ``add_job`` failed with Redis's text instead of ``WriteRefusedError``.
The connections of these pools (``answering``) and ``ping`` below count that refusal as
the server answering; the write itself is then refused, and reported, where it is made.

Nor do they **bound the opening of a connection.** The queue's clients have no
``socket_timeout`` (a blocking ``BZPOPMIN`` waits as long as it must), so a server that
accepts a connection and then holds every command (``CLIENT PAUSE ... ALL``, as a
failover does) held the handshake (``AUTH``/``HELLO``/``SELECT``/``CLIENT SETNAME``)
and the health-check ``PING`` of an idle connection for the whole pause, and any call
that needed a new connection with it. The asyncio connections of these pools give each
``HANDSHAKE_TIMEOUT_S``, then raise ``HandshakeTimeoutError`` (nothing of the call
was sent); the commands themselves keep no deadline of their own. They count the opens
under way (``_opening``, ``opens.py``): ``close()`` waits for those, not for one a
cancelled wait closed.

A connection refused by a limit on connections (the server's ``maxclients``, this
process's open files: ``EMFILE``) is ``ConnectLimitError`` naming it and what to change,
and ``hold_connections`` tells whether a worker about to start can get what it needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import sys
from collections import deque
from collections.abc import Sized
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.exceptions import AuthenticationError, MaxConnectionsError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .clusterconn import known_nodes
from .connerrors import (
    PLAIN_TO_TLS_PORT,
    ConnectionLimitError,
    closed_by_server,
    limit_message,
    limit_reached,
    missing_tls_files,
    tls_failure,
    tls_files_missing,
)
from .errors import ConnectionUnavailableError
from .limits import get_logger
from .opens import counting

__all__ = [
    "HANDSHAKE_TIMEOUT_S", "POOL_WAIT_S", "CheckedPool", "CheckedSentinelPool",
    "ConnectFailedError", "ConnectLimitError", "HandshakeTimeoutError", "answering",
    "blocking_wait_overran", "check_pool", "drop_connections", "exhausted", "hold_connections",
    "ping", "refuses_ping", "stream_ended", "waiters_of",
]  # fmt: skip

log = get_logger(__name__)

#: Longest a call waits for a free connection of an exhausted pool.
POOL_WAIT_S = 30.0
#: Longest a new connection's handshake (after the socket opened, which
#: ``socket_connect_timeout`` bounds) or an idle connection's health-check ``PING`` may
#: wait for the server's answer.
HANDSHAKE_TIMEOUT_S = 10.0

if sys.version_info >= (3, 11):
    from asyncio import timeout as _deadline
else:  # pragma: no cover - redis-py depends on async-timeout before 3.11.3
    from async_timeout import timeout as _deadline  # type: ignore[import-not-found,no-redef,unused-ignore]


class _WaitsAndChecks:
    """What ``CheckedPool`` and ``CheckedSentinelPool`` add to redis-py's pools (see the
    module's text). Its state lives in the instance's ``__dict__``, created on first use,
    because ``check_pool`` also gives it to a pool built elsewhere by changing its class."""

    max_connections: int

    def _kq_queue(self) -> deque[asyncio.Future[bool]]:
        waiters: deque[asyncio.Future[bool]] | None = self.__dict__.get("_kq_waiters")
        if waiters is None:
            waiters = self.__dict__["_kq_waiters"] = deque()
        return waiters

    def _kq_wake(self) -> None:
        """Let the longest-waiting caller try again: a connection was handed back."""
        waiters = self.__dict__.get("_kq_waiters")
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(True)
                return

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        waiters = self._kq_queue()
        if not waiters:  # nobody queued ahead: take a connection if one is free
            try:
                return await super().get_connection(*args, **kwargs)  # type: ignore[misc]
            except MaxConnectionsError:
                pass
        loop = asyncio.get_running_loop()
        deadline = loop.time() + POOL_WAIT_S
        front = False
        while True:
            fut: asyncio.Future[bool] = loop.create_future()
            if front:  # woken but beaten to it: keep the place in the line
                waiters.appendleft(fut)
            else:
                waiters.append(fut)
            timer = loop.call_at(deadline, _expire, fut)
            try:
                woken = await fut
            except BaseException:
                if fut.done() and not fut.cancelled() and fut.result():
                    self._kq_wake()  # cancelled after being woken: pass the turn on
                raise
            finally:
                timer.cancel()
            if not woken:
                if fut in waiters:
                    waiters.remove(fut)
                raise exhausted(self.max_connections)
            try:
                return await super().get_connection(*args, **kwargs)  # type: ignore[misc]
            except MaxConnectionsError:
                front = True
            except BaseException:
                self._kq_wake()  # this caller gave up (Redis down, cancelled): next one
                raise

    async def release(self, connection: Any) -> None:
        try:
            await super().release(connection)  # type: ignore[misc]
        finally:
            self._kq_wake()

    async def disconnect(self, *args: Any, **kwargs: Any) -> None:
        try:
            await super().disconnect(*args, **kwargs)  # type: ignore[misc]
        finally:
            for fut in self.__dict__.get("_kq_waiters", ()):
                if not fut.done():
                    fut.set_result(True)

    async def ensure_connection(self, connection: Any) -> None:
        if stream_ended(connection):
            await connection.disconnect(nowait=True)
        await super().ensure_connection(connection)  # type: ignore[misc]


def stream_ended(conn: Any) -> bool:
    """Whether asyncio connection ``conn``, which looks connected, is done: closed by the
    server (EOF), failed, or its transport closed by this side (its stream learns that
    only at the loop's next turn). False without an asyncio stream (``memory://``)."""
    reader = getattr(conn, "_reader", None)
    if not isinstance(reader, asyncio.StreamReader):
        return False
    transport = getattr(getattr(conn, "_writer", None), "transport", None)
    closing = transport is not None and bool(transport.is_closing())
    return closing or reader.at_eof() or reader.exception() is not None


def drop_connections(client: Any) -> None:
    """Close the sockets of ``client``'s asyncio connections (its pool's, a Cluster
    client's nodes', a Sentinel client's sentinels') without their event loop, which no
    longer runs: ``aclose()`` there is impossible, and a transport's ``close()`` hands
    the socket's close to that loop (raising once the loop is closed), so the sockets
    stayed open until garbage collection, with a ``ResourceWarning`` for each connection,
    stream and transport. The client is not to be used again. A Cluster client's nodes
    are those ``clusterconn.known_nodes`` finds; connection lists a later redis-py
    renames are skipped (their sockets close with the process), never raised."""
    holders: list[Any] = [getattr(client, "connection_pool", None), *known_nodes(client)]
    for sentinel in getattr(getattr(client, "kq_sentinel", None), "sentinels", ()):
        holders.append(getattr(sentinel, "connection_pool", None))
    for holder in holders:  # redis-py's private lists: what a later release renames is left
        for name in ("_available_connections", "_in_use_connections", "_connections"):
            with contextlib.suppress(AttributeError, TypeError):
                for conn in list(getattr(holder, name, None) or ()):
                    writer = getattr(conn, "_writer", None)
                    if isinstance(writer, asyncio.StreamWriter):  # not memory://'s stand-in
                        _drop_transport(writer.transport)
                        conn._writer = conn._reader = None  # redis-py's mark of a closed one


def _drop_transport(transport: Any) -> None:
    """Close ``transport``'s socket directly and mark it closed (``drop_connections``);
    a TLS transport's socket is under its SSL protocol's transport. Another loop's
    transports (uvloop's: read-only attributes, no socket to reach) are left to garbage
    collection, as before."""
    with contextlib.suppress(AttributeError, TypeError):
        _drop_selector_transport(transport)


def _drop_selector_transport(transport: Any) -> None:
    ssl_protocol = getattr(transport, "_ssl_protocol", None)
    if ssl_protocol is not None:
        transport._closed = True
        transport = getattr(ssl_protocol, "_transport", None)
    sock = getattr(transport, "_sock", None)
    loop, fd = getattr(transport, "_loop", None), getattr(transport, "_sock_fd", None)
    if loop is not None and fd is not None and not loop.is_closed():
        # An idle loop that may run again: its selector must forget the socket too.
        for forget in ("_remove_reader", "_remove_writer"):
            getattr(loop, forget, lambda fd: None)(fd)
    if sock is not None:
        sock.close()
        transport._sock = None
    if transport is not None and hasattr(transport, "_closing"):
        transport._closing = True  # is_closing(): the stream does not close it again


def waiters_of(pool: Any) -> Sized:
    """The line of callers waiting for a connection of ``pool`` (empty for ever for a
    pool that does not queue them): while it is not empty, a connection that is free
    should go back to the pool rather than be kept aside."""
    if isinstance(pool, _WaitsAndChecks):
        return pool._kq_queue()
    return ()


def exhausted(most: int) -> MaxConnectionsError:
    """The error of a pool of ``most`` connections that stayed in use ``POOL_WAIT_S``."""
    return MaxConnectionsError(
        f"all {most} connections of the pool to Redis stayed in use for {POOL_WAIT_S:g} s; "
        "raise max_connections in redis= (?max_connections=N in the URL) or run fewer "
        "calls at once"
    )


def _expire(fut: asyncio.Future[bool]) -> None:
    if not fut.done():
        fut.set_result(False)


class CheckedPool(_WaitsAndChecks, aioredis.ConnectionPool):
    """redis-py's pool that waits for a free connection and reconnects a connection the
    server closed while it sat in the pool (see the module's text)."""


class CheckedSentinelPool(_WaitsAndChecks, SentinelConnectionPool):
    """``CheckedPool``'s behaviour for the primary of a Sentinel service."""


def check_pool(pool: Any, *, in_memory: bool = False) -> None:
    """Give redis-py's plain pool (of a client built here or passed in) what ``CheckedPool``
    adds, for every use of the client. Other pools (a ``BlockingConnectionPool`` already
    waits) are left as they are. Every pool's new connections, the blocking pools' too,
    take a write refusal to their health check as an answer (``answering``); ``in_memory``
    ones (``memory://``) also give the event loop its turn at each reply (``yielding``)."""
    if type(pool) is aioredis.ConnectionPool:
        pool.__class__ = CheckedPool
    elif type(pool) is SentinelConnectionPool:
        pool.__class__ = CheckedSentinelPool
    cls = getattr(pool, "connection_class", None)
    if isinstance(cls, type):
        pool.connection_class = answering(yielding(cls) if in_memory else cls)


_YIELDING: dict[type, type] = {}


def yielding(cls: type) -> type:
    """``cls`` (the ``memory://`` backend's asyncio connection class) whose
    ``read_response`` gives the event loop a turn once it has the reply, as reading a
    socket does (an in-memory reply is there at once: on Python 3.13 a loop of awaited
    calls never suspended, and starved every other task of its loop, lease renewals
    too), and counts the reads under way in ``_kq_reading`` (a blocking command's wait
    and that turn included): with none, a connection held aside serves no call."""
    made = _YIELDING.get(cls)
    if made is None:
        read = cls.read_response  # type: ignore[attr-defined]

        async def read_response(self: Any, *args: Any, **kwargs: Any) -> Any:
            # The turn comes after the reply is taken: a call cancelled at it leaves its
            # connection in step (a reply left unread would answer the next command).
            self._kq_reading += 1
            try:
                response = await read(self, *args, **kwargs)
                await asyncio.sleep(0)
            finally:
                self._kq_reading -= 1
            return response

        attrs = {"read_response": read_response, "_kq_reading": 0, "__module__": __name__}
        made = _YIELDING[cls] = type(cls.__name__, (cls,), attrs)
    return made


def refuses_ping(exc: BaseException) -> bool:
    """Whether ``exc`` is a server's refusal of ``PING`` that still proves it answers:
    ``MISCONF`` (writes, and with them ``PING``, refused after a failed background save)
    or ``BUSY`` (every command refused while another client's script runs too long)."""
    return isinstance(exc, ResponseError) and str(exc).startswith(("MISCONF", "BUSY"))


async def ping(client: Any, timeout: float) -> ResponseError | None:
    """``PING`` ``client``'s server within ``timeout`` s; a server that refuses it for a
    failed background save (``refuses_ping``) answered, so this returns that refusal
    (None for ``PONG``): the writes that follow are refused, and reported, one by one."""
    try:
        await asyncio.wait_for(client.ping(), timeout)
    except ResponseError as exc:
        if not refuses_ping(exc):
            raise
        return exc
    return None


_ANSWERING: dict[type, type] = {}


class ConnectFailedError(ConnectionUnavailableError, RedisConnectionError):
    """A connection of the pool could not be opened (refused, no route, no such host or
    socket, a TLS handshake that failed or a TLS file that is gone, closed by the server
    while it opened; the message says what to check): nothing of the call reached
    Redis. The library's ``ConnectionUnavailableError``, as when the first connection
    fails, and still redis-py's ``ConnectionError`` (which its retries, and callers'
    handlers written for it, catch)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        # The attributes redis-py's errors carry (error_type, status_code: its own code
        # reads them, its __repr__ too), whatever the version: from one of its own.
        self.__dict__.update(RedisConnectionError(message).__dict__)


class ConnectLimitError(ConnectFailedError, ConnectionLimitError):
    """A connection of the pool could not be opened because a limit on connections was
    reached: the server's ``maxclients``, or this process's open-files limit
    (``EMFILE``). The message names the limit and what to change, not "check that the
    server runs" (``connerrors.ConnectionLimitError``). A ``ConnectFailedError``:
    nothing of the call reached Redis, and a queue words it again with its name."""


class HandshakeTimeoutError(ConnectionUnavailableError):
    """Redis accepted a connection but did not answer its handshake (or an idle
    connection's health-check ``PING``) within ``HANDSHAKE_TIMEOUT_S``: nothing of the
    call was sent. The library's ``ConnectionUnavailableError`` (an ``OSError`` too),
    and not redis-py's ``ConnectionError``, which redis-py would retry up to ten times,
    each for as long again."""


def _handshake_timeout(conn: Any, what: str) -> HandshakeTimeoutError:
    return HandshakeTimeoutError(
        f"Redis at {_where(conn)} accepted the connection but did not answer {what} within "
        f"{HANDSHAKE_TIMEOUT_S:g} s: its clients may be paused (CLIENT PAUSE, as during "
        "a failover; it answers once the pause ends), or it is too busy to answer. "
        "Nothing of this call reached Redis: try again shortly (the next call connects "
        "again), and check the server (its log, SLOWLOG, CLIENT LIST) if it lasts"
    )


def _connect_failed(exc: BaseException, conn: Any = None) -> BaseException:
    """``exc`` raised by ``conn.connect()``: a socket that could not be opened (redis-py's
    "Error 111 connecting to host:port. ...", a failed TLS handshake, a TLS file that is
    gone) or a connection the server closed while it was being opened becomes
    ``ConnectFailedError``, saying what to check, and one refused by a limit on
    connections (the server's ``maxclients``, the process's open files) becomes
    ``ConnectLimitError``; credentials refused (``AUTH``, after a password change)
    become ``authrefused.CredentialsRefusedError``, worded as at the first connection;
    anything else (a timeout, a Sentinel without a primary) stays."""
    text = str(exc)
    limit = limit_reached(exc)
    if limit is not None:  # maxclients; EMFILE (redis-py's "Error 24 connecting to ...")
        return ConnectLimitError(
            limit_message(limit, f"Redis at {_where(conn)}", text.rstrip(". "))
        )
    if isinstance(exc, AuthenticationError):
        from .authrefused import credentials_refused  # it builds on this module

        return credentials_refused(exc, conn)
    if type(exc) is not RedisConnectionError:
        return exc
    files = _tls_files(conn)
    missing = missing_tls_files(files or {}) if " connecting to " in text else []
    said = tls_failure(text)
    if missing:  # ENOENT on a TCP address: a file the TLS handshake reads
        advice = tls_files_missing(missing)
    elif said is not None:
        advice = said[0]
    elif " connecting to " in text:
        advice = "check that the server runs and is reachable (the next call connects again)"
    elif closed_by_server(exc):
        tls = "" if files is not None or _unix(conn) else PLAIN_TO_TLS_PORT
        advice = (
            f"the server closed the connection while it was being opened: {tls}it was "
            "stopping or restarting, or closed the client (the next call connects again)"
        )
    else:
        return exc
    return ConnectFailedError(f"{text} Nothing of this call reached Redis: {advice}")


def _where(conn: Any) -> str:
    try:
        return str(conn._host_error())
    except Exception:  # only to word a message
        return "the server"


def _tls_files(conn: Any) -> dict[str, Any] | None:
    """The TLS file options of redis-py connection ``conn`` (asyncio or blocking), or
    None when it is no TLS connection."""
    holder = getattr(conn, "ssl_context", conn)  # asyncio: a RedisSSLContext
    if conn is None or not hasattr(holder, "ca_certs"):
        return None
    names = ("ca_certs", "ca_path", "certfile", "keyfile")
    return {f"ssl_{n}": getattr(holder, n, None) for n in names}


def _unix(conn: Any) -> bool:
    return "Unix" in type(conn).__name__ or getattr(conn, "path", None) is not None


def answering(cls: type) -> type:
    """``cls`` (a redis-py connection class, asyncio or blocking) whose health-check
    ``PING`` counts a ``MISCONF`` or ``BUSY`` refusal as an answer (see the module's text),
    and whose ``connect`` raises ``ConnectFailedError`` for a socket it could not open.
    Classes without redis-py's ``_send_ping`` are returned as they are."""
    if cls in _ANSWERING.values():
        return cls
    made = _ANSWERING.get(cls)
    if made is not None:
        return made
    send = getattr(cls, "_send_ping", None)
    connect = getattr(cls, "connect", None)
    if send is None or connect is None:
        return cls
    extra: dict[str, Any] = {}
    if inspect.iscoroutinefunction(send):

        async def _send_ping(self: Any) -> None:
            try:
                await send(self)
            except ResponseError as exc:
                if not refuses_ping(exc):
                    raise

        async def _connect(self: Any) -> None:
            self._kq_opening += 1  # an open under way (``_opening``)
            try:
                await connect(self)
            except RedisConnectionError as exc:
                failed = _connect_failed(exc, self)
                if failed is exc:
                    raise
                raise failed from exc
            finally:
                self._kq_opening -= 1

        extra = _opening(cls)
    else:

        def _send_ping(self: Any) -> None:  # type: ignore[misc]
            try:
                send(self)
            except ResponseError as exc:
                if not refuses_ping(exc):
                    raise

        def _connect(self: Any) -> None:  # type: ignore[misc]
            try:
                connect(self)
            except RedisConnectionError as exc:
                failed = _connect_failed(exc, self)
                if failed is exc:
                    raise
                raise failed from exc

    attrs = {"_send_ping": _send_ping, "connect": _connect, "__module__": __name__, **extra}
    made = _ANSWERING[cls] = type(cls.__name__, (cls,), attrs)
    return made


_HANDSHAKE = "the commands that open it (AUTH, HELLO, SELECT, CLIENT SETINFO/SETNAME)"


def _opening(cls: type) -> dict[str, Any]:
    """What asyncio connection class ``cls`` gets for its opening: methods bounding its
    handshake and health-check ``PING`` by ``HANDSHAKE_TIMEOUT_S`` (see the module's text),
    and ``_kq_opening``, its opens under way, which ``connect`` (``answering``) and
    ``connect_check_health`` (a command on a closed connection calls it) count."""
    out = counting(cls, ("connect_check_health",))  # connect: ``answering``'s ``_connect``
    # redis-py 6+ names the handshake on_connect_check_health; before, on_connect.
    name = "on_connect_check_health" if hasattr(cls, "on_connect_check_health") else "on_connect"
    handshake = getattr(cls, name, None)
    if inspect.iscoroutinefunction(handshake):

        async def bounded_handshake(self: Any, *args: Any, **kwargs: Any) -> None:
            try:
                async with _deadline(HANDSHAKE_TIMEOUT_S):
                    await handshake(self, *args, **kwargs)
            except (TimeoutError, asyncio.TimeoutError):
                # redis-py disconnects a connection whose handshake raised.
                raise _handshake_timeout(self, _HANDSHAKE) from None

        out[name] = bounded_handshake
    check = getattr(cls, "check_health", None)
    if inspect.iscoroutinefunction(check):

        async def check_health(self: Any) -> None:
            interval = getattr(self, "health_check_interval", 0)
            if not interval or asyncio.get_running_loop().time() <= self.next_health_check:
                await check(self)  # not due: no PING, and no timer on the hot path
                return
            try:
                async with _deadline(HANDSHAKE_TIMEOUT_S):
                    await check(self)
            except (TimeoutError, asyncio.TimeoutError):
                # A PING sent and its reply unread: the connection is out of step.
                await self.disconnect(nowait=True)
                raise _handshake_timeout(self, "the health-check PING") from None

        out["check_health"] = check_health
    return out


async def hold_connections(client: Any, count: int, keep: int) -> tuple[int, BaseException | None]:
    """Have ``count`` connections of ``client``'s pool open at once (idle ones count)
    and hand them back, keeping ``keep`` of them open: whether a worker can get the
    connections it needs to run (its pump lanes' from this pool, and stand-ins for
    those it opens of its own, which are closed again to free their places). Returns
    how many were open together and, if one was refused by a limit on connections, the
    error (``ConnectLimitError``). Any other error (Redis went away) is no answer:
    ``(count, None)``, and the worker rides it out as any outage.

    After a refusal every connection this call opened is closed again (the server's
    places, the process's files): a refused start leaves things as it found them. A
    client without a redis-py pool (Cluster, ``memory://``) gives ``(count, None)``;
    never more than the pool's free ``max_connections`` are taken (no wait)."""
    pool: Any = getattr(client, "connection_pool", None)
    idle = getattr(pool, "_available_connections", None)
    in_use = getattr(pool, "_in_use_connections", None)
    if not isinstance(idle, list) or in_use is None or not hasattr(pool, "get_connection"):
        return count, None
    count = min(count, int(getattr(pool, "max_connections", count)) - len(in_use))
    was_open = {id(c) for c in idle if getattr(c, "is_connected", False)}
    held: list[Any] = []
    failed: BaseException | None = None
    try:
        while len(held) < count:
            held.append(await pool.get_connection())
    except Exception as exc:
        if limit_reached(exc) is not None:
            failed = exc
    finally:
        for i, conn in enumerate(held):
            if id(conn) not in was_open and (failed is not None or i >= keep):
                with contextlib.suppress(Exception):
                    await conn.disconnect()
            await pool.release(conn)
    return (len(held), failed) if failed is not None else (count, None)


async def blocking_wait_overran(exc: BaseException, client: Any, who: str) -> bool:
    """Whether ``exc``, a blocking wait for work that got no reply by its deadline, came
    while Redis answers at once on ``client``: Redis times a blocking command's timeout
    in wall-clock time, so a step back of the server's clock stretches the wait past
    the deadline. That is no outage: said at info level (``who``: the worker)."""
    if not isinstance(exc, RedisTimeoutError) or "no reply from Redis" not in str(exc):
        return False
    try:
        await asyncio.wait_for(client.ping(), 2.0)
    except Exception:
        return False
    log.info(
        "%s: a blocking wait for work got no reply by its deadline while Redis answers "
        "PING: its writes are paused (CLIENT PAUSE ... WRITE, as a failover does), or its "
        "clock was set back (it times blocking waits in wall-clock time); waiting again",
        who,
    )
    return True
