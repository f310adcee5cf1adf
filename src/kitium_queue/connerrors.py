"""How a connection error becomes the library's error: ``ConnectionFactory.error``.

Each message says where (the connection's description, credentials redacted), what
happened and what to check; a wrong setting is a ``ConfigurationError``, anything else
a ``ConnectionUnavailableError``. A TLS setting (or server certificate) that lets no
connection open is both (``TLSConfigurationError``), and a scheme that does not match
the port (``redis://`` to a TLS port, ``rediss://`` to a plain one) is said as such.
A connection refused by a limit on connections (the server's ``maxclients``, this
process's open-files limit) is a ``ConnectionLimitError`` naming the limit, what a queue
holds, and what to change: it is no outage, and "check that the server runs" would
send the reader the wrong way. A reply that never comes ends the call (``bound_replies``).
"""

from __future__ import annotations

import asyncio
import errno
import re
from collections.abc import Callable, Mapping
from typing import Any

from redis.asyncio.connection import ConnectionPool, parse_url
from redis.asyncio.sentinel import MasterNotFoundError
from redis.exceptions import (
    AuthenticationError,
    InvalidResponse,
    MaxConnectionsError,
    NoPermissionError,
    RedisClusterException,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .clusterreplies import bound_nodes
from .errors import (
    ConfigurationError,
    ConnectionUnavailableError,
    KitiumQueueError,
    PermissionDeniedError,
)
from .redis_urls import auth_refused
from .replywaits import held_for, holds, unread
from .tlswords import (
    PLAIN_TO_TLS_PORT,
    TLSConfigurationError,
    missing_tls_files,
    no_tls_there,
    tls_failure,
    tls_files_missing,
    uses_tls,
)

__all__ = [
    "NOPERM", "PLAIN_TO_TLS_PORT", "REPLY_DEADLINE_S", "ConnectionLimitError", "ReplyCutOffError",
    "ReplyTimeoutError", "TLSConfigurationError", "bound_replies", "closed_by_server",
    "connection_options", "held_for", "limit_advice", "limit_message", "limit_reached",
    "missing_tls_files", "permission_denied", "refused", "reply_cut_off", "tls_failure",
    "tls_files_missing", "translate_error", "uses_tls",
]  # fmt: skip


class ConnectionLimitError(ConnectionUnavailableError):
    """No new connection could be opened because a limit on connections was reached:
    the server's ``maxclients`` (it refuses every new client, "max number of clients
    reached"), or this process's open-files limit (``EMFILE``, "Too many open files":
    every connection is a file descriptor; ``ENFILE``: the whole system's). Nothing of
    the call reached Redis, and connections already open go on. The message names the
    limit, what a queue holds, and what to change; retrying alone does not help while
    as many connections stay open. A ``ConnectionUnavailableError``."""


#: What one queue holds, for the messages of a limit on connections.
QUEUE_CONNECTIONS = (
    "each queue holds connections of its own: about 6 for a queue with a worker (its "
    "pool of 3-4, the waker's blocking connection, the scheduler's pub/sub), 1-2 for "
    "one that only adds or reads jobs"
)
_FEWER = (
    "run fewer queues per process, pass one shared redis.asyncio client to the queues "
    "(redis=client: they share its pool), or serve many customers from one queue with "
    "tenancy rather than a queue per customer"
)
_MAX_DEPTH = 6  # how far ``limit_reached`` follows an error's causes


def limit_reached(exc: BaseException | None) -> str | None:
    """Which limit on connections refused ``exc`` (or an error it was raised from):
    ``"maxclients"`` (the server's), ``"open-files"`` (this process's: ``EMFILE``),
    ``"system-files"`` (the system's: ``ENFILE``); None for any other error."""
    for _ in range(_MAX_DEPTH):
        if exc is None:
            return None
        code = exc.errno if isinstance(exc, OSError) else None
        if code == errno.EMFILE:
            return "open-files"
        if code == errno.ENFILE:
            return "system-files"
        text = str(exc)
        # The server's words: redis-py 8.2 raises MaxClientsReachedError with them, 8.1
        # (which has no such class) a plain ConnectionError.
        if "max number of clients reached" in text:
            return "maxclients"
        if "Too many open files in system" in text:
            return "system-files"
        if "Too many open files" in text:
            return "open-files"
        exc = exc.__cause__  # redis-py raises its own errors from the socket's
    return None


def _nofile() -> str:
    """This process's open-files limit, as ``soft N, hard M`` ("" where unknown)."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):  # not on this platform
        return ""
    shown = ["unlimited" if n == resource.RLIM_INFINITY else str(n) for n in (soft, hard)]
    return f"RLIMIT_NOFILE soft {shown[0]}, hard {shown[1]}"


def limit_refusal(limit: str, where: str, cause: str, queue: str = "") -> str:
    """What happened, for ``limit`` (``limit_reached``): ``where`` is the server
    ("Redis at host:port"), ``cause`` the error's own text, ``queue`` the queue's name
    if known."""
    of = f" of queue {queue!r}" if queue else ""
    if limit == "maxclients":
        return (
            f"{where} refused a new connection{of}: it has as many clients as its "
            f"maxclients setting allows ({cause})"
        )
    if limit == "system-files":
        return (
            f"cannot open a connection{of} to {where}: the system's table of open files "
            f"is full (ENFILE: {cause})"
        )
    limits = _nofile()
    return (
        f"cannot open a connection{of} to {where}: this process has as many files open "
        f"as its open-files limit allows (EMFILE{', ' if limits else ''}{limits}: {cause})"
    )


def limit_message(limit: str, where: str, cause: str, queue: str = "") -> str:
    """The whole message of a connection refused by ``limit``: what happened
    (``limit_refusal``), then what to do (``limit_advice``)."""
    return f"{limit_refusal(limit, where, cause, queue)}. {limit_advice(limit)}"


def limit_advice(limit: str) -> str:
    """What to do about ``limit`` (``limit_reached``), a sentence or two."""
    if limit == "maxclients":
        return (
            f"Nothing of the call reached Redis; {QUEUE_CONNECTIONS}. To go on: raise "
            "maxclients (CONFIG SET maxclients <n>, and in redis.conf; INFO clients shows "
            f"connected_clients and maxclients), {_FEWER}; or open fewer connections "
            "elsewhere (fewer processes, a lower max_connections in redis=). Connections "
            "already open go on"
        )
    if limit == "system-files":
        return (
            "Every connection is a file descriptor. To go on: raise the system's limit "
            "(sysctl fs.file-max), or find the process that holds so many files open"
        )
    return (
        f"Every connection to Redis is a file descriptor, and {QUEUE_CONNECTIONS}. To go "
        "on: raise the limit (ulimit -n <n> before the process starts; LimitNOFILE= in a "
        "systemd unit; --ulimit nofile= for a container; resource.setrlimit up to the "
        f"hard limit), {_FEWER}; and check that the process does not leak files or "
        "sockets (ls /proc/<pid>/fd). Nothing of the call reached Redis"
    )


# A timeout: redis-py's, the builtin's, and asyncio's (a class of its own before Python
# 3.11, where it is neither TimeoutError nor an OSError).
_TIMEOUTS = (RedisTimeoutError, TimeoutError, asyncio.TimeoutError)


def connection_options(url: str | None, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The options a connection of ``url`` and ``kwargs`` is made with, merged as
    redis-py's ``from_url`` merges them (the URL's win). Only to word messages: a URL
    that does not parse (checked at construction) gives ``kwargs``; never raises."""
    try:
        return {**kwargs, **(parse_url(url) if url else {})}
    except Exception:
        return dict(kwargs)


def translate_error(
    describe: str,
    redacted: str,
    exc: BaseException,
    queue: str,
    timeout_s: float | None = None,
    options: Mapping[str, Any] | None = None,
    *,
    opening: bool = False,
) -> KitiumQueueError | None:
    """The library's error for ``exc`` (see ``ConnectionFactory.error``): ``describe``
    is where the connection goes and ``redacted`` the text of ``exc``, both without
    credentials; ``options``: the setting's connection options (``connection_options``:
    its TLS files, whether it asks for TLS, its database); ``opening``: ``exc`` came
    while a connection was being opened (nothing of the call was sent). None when
    ``exc`` is not a connection problem; an error of the library's own is returned as
    it is (a ``ConnectionUnavailableError`` is an ``OSError`` too: worded again, it
    would be quoted inside another message)."""
    if isinstance(exc, KitiumQueueError):
        return exc
    limit = limit_reached(exc)
    if limit is not None:
        cause = _sentence(redacted) or type(exc).__name__
        return ConnectionLimitError(limit_message(limit, f"Redis at {describe}", cause, queue))
    options = options or {}
    missing_files, tls, db = missing_tls_files(options), uses_tls(options), options.get("db")
    where = f"Redis at {describe}"
    cause = _sentence(redacted.split(_ANY_NODE, 1)[-1]) or type(exc).__name__
    seen = exc.__cause__ if _ANY_NODE in redacted and exc.__cause__ is not None else exc
    network = isinstance(seen, (RedisConnectionError, OSError))
    if missing_files and network:
        files = tls_files_missing(missing_files, cause)
        return TLSConfigurationError(f"cannot connect to {where} for queue {queue!r}: {files}")
    said = tls_failure(cause) if network else None
    if said is not None:
        kind = TLSConfigurationError if said[1] else ConnectionUnavailableError
        return kind(f"the TLS handshake with {where} failed (queue {queue!r}: {cause}); {said[0]}")
    if isinstance(exc, MasterNotFoundError):  # its text: every Sentinel client's repr
        from .authrefused import no_primary  # it builds on this module

        return no_primary(describe, queue, redacted, options, getattr(exc, "kq_state", None))
    if isinstance(seen, AuthenticationError):
        return ConnectionUnavailableError(auth_refused(where, queue, cause, options))
    if isinstance(exc, InvalidResponse):
        return ConnectionUnavailableError(
            f"{where} does not speak the Redis protocol (queue {queue!r}: {cause}); an "
            "HTTP or other server may be listening there: check the host and port in "
            "redis=, and rediss:// if the server expects TLS"
        )
    if isinstance(exc, ResponseError) and "db index is out of range" in cause.lower():
        db = "" if db is None else f"db {db}; "
        return ConfigurationError(
            f"{where} has no such database ({db}queue {queue!r}: {cause}); a server has databases "
            "0..15 unless its 'databases' setting says otherwise: use a database number within "
            "that range in redis= (redis://host:6379/<db>, ?db=<db>, or the db key of a dict)"
        )
    if isinstance(exc, RedisClusterException):  # by its words: 8.1 has no class for most
        words, low = _ARGS.sub(r"\1 ...", cause.split("\n")[0])[:200], cause.lower()
        if isinstance(seen.__context__, NoPermissionError):  # CLUSTER SLOTS refused (ACL)
            return permission_denied(str(seen.__context__))
        if "cluster mode is not enabled" in low:
            return ConfigurationError(
                f"{where} is not a Redis Cluster (queue {queue!r}: {words}); for a "
                "single server use a redis:// URL instead of redis+cluster://"
            )
        if _ANY_NODE in redacted:
            return ConnectionUnavailableError(
                f"cannot reach any node of the Redis {describe} (queue {queue!r}: {words}); "
                "check the node addresses in redis= and that the cluster is running"
                + (no_tls_there("+cluster") if tls else "")
            )
        if "not covered" in low or "could not agree" in low:
            return ConnectionUnavailableError(
                f"the Redis {describe} does not map every hash slot to a node (queue "
                f"{queue!r}: {words}): a master down with no replica to take over, slots "
                "never assigned, a failover or resharding under way, or addresses in redis= "
                "of different clusters; check CLUSTER INFO on a node, and those addresses"
            )
        return KitiumQueueError(
            f"the Redis Cluster client refused a call of queue {queue!r} ({words}): not a "
            "connection problem, but a call a Cluster does not take as made (the keys of "
            "one command or transaction must share one hash slot, and a command must name "
            f"one: a queue's keys do, by its {{{queue}}} hash tag)"
        )
    if isinstance(exc, _TIMEOUTS) and "connecting" in cause:
        plain = (
            ", and that the port expects TLS: a port without TLS never answers the TLS "
            "handshake of rediss:// (use redis:// there)"
            if tls
            else ""
        )
        return ConnectionUnavailableError(
            f"{where} did not accept the connection in time (queue {queue!r}: "
            f"{cause}); check the host and port in redis=, a firewall that drops "
            f"packets, and socket_connect_timeout{plain}"
        )
    if isinstance(exc, RedisTimeoutError) and cause.startswith("no reply from Redis"):
        return ConnectionUnavailableError(f"{where} stopped answering ({cause}): {_SILENT}")
    if isinstance(exc, _TIMEOUTS):
        within = f" within {timeout_s:g} s" if timeout_s and cause == "TimeoutError" else ""
        scheme = (
            "whether the port expects TLS at all (a port without TLS never answers the "
            "TLS handshake of rediss://: use redis:// there)"
            if tls
            else "whether the server expects TLS (rediss://)"
        )
        return ConnectionUnavailableError(
            f"{where} accepted the connection but did not answer{within} (queue {queue!r}: "
            f"{cause}); check the port, {scheme}, whether its clients are paused (CLIENT PAUSE, as "
            "during a failover: it answers once the pause ends), and socket_timeout"
        )
    if isinstance(exc, MaxConnectionsError):
        return ConnectionUnavailableError(
            f"no free connection to {where} for queue {queue!r} ({cause}); every connection of the "
            "pool was in use: raise max_connections in redis= or run fewer calls at once"
        )
    if closed_by_server(exc) and opening:
        hint = "" if tls else PLAIN_TO_TLS_PORT
        return ConnectionUnavailableError(
            f"{where} closed the connection of queue {queue!r} while it was being opened, before "
            f"any command of the call ({cause}): {hint}the server was stopping or restarting, or "
            "closed the client: check that it runs, and its log (the next call connects again)"
        )
    if closed_by_server(exc):
        return ConnectionUnavailableError(
            f"{where} closed the connection of queue {queue!r} during a call ({cause}): it was "
            "restarted or stopped, closed the client (CLIENT KILL, its timeout setting), or cut "
            "off a reply larger than its client-output-buffer-limit; check that the server runs, "
            "and its log for which (the next call connects again)"
        )
    if isinstance(exc, (RedisConnectionError, OSError, asyncio.TimeoutError)):
        return ConnectionUnavailableError(
            f"cannot reach {where} for queue {queue!r} ({cause}); check the redis= "
            "setting and that the server is running"
        )
    return None


# redis-py's Cluster client reached no node ("... <these words> <why>"); the arguments of
# a command it quotes (job data may be among them) are never quoted here.
_ANY_NODE = "Please provide at least one reachable node: "
_ARGS = re.compile(r"((?:in command:|execute) \S+) .*")


def _sentence(text: str) -> str:
    """An error's text for use inside a sentence: without the final period or spaces
    (redis-py's messages end with one, which would double the period that follows)."""
    return text.strip().rstrip(".").strip()


# ACL refusals: "NOPERM ..." at top level; inside a script Redis 7.0 says "The user
# executing the script can't run this command ..." / "... can't access at least one of
# the keys ...", and 7.2+ says "NOPERM ...".
NOPERM = re.compile(r"NOPERM|no permissions|can't run this command|can't access at least")


def permission_denied(detail: str) -> PermissionDeniedError:
    """The error raised when the Redis ACL user lacks a command or key the queue needs."""
    return PermissionDeniedError(
        f"Redis refused the command for lack of permission ({detail.strip()}); the Redis "
        "user needs the queue's key pattern ~<prefix>:{<queue>}:* and the commands listed "
        "in docs/RELIABILITY.md (Security: Redis ACL): `kitium-queue acl redis-rules` "
        "prints them, with --feature for what optional features and tools add"
    )


def refused(exc: BaseException) -> bool:
    """Whether ``exc`` refuses a call for lack of permission: the Redis ACL refused a
    command or key (``NOPERM``: redis-py's ``NoPermissionError``, a script's refusal
    as ``PermissionDeniedError``), or a grant was missing (``AccessDeniedError``).
    Redis answered: no outage, though ``PermissionDeniedError`` is a
    ``PermissionError``, an ``OSError``, and so in every tuple of "Redis unreachable"
    errors (``connection.outage`` tells the two apart). Trying again helps only once
    the user is allowed."""
    if isinstance(exc, PermissionDeniedError):
        return True
    return isinstance(exc, ResponseError) and (
        isinstance(exc, NoPermissionError) or NOPERM.search(str(exc)) is not None
    )


class ReplyCutOffError(ConnectionUnavailableError, RedisConnectionError):
    """Redis closed a call's connection while it sent the reply, and answered a
    ``PING`` right after: the server is up, and most likely dropped a reply larger than
    its ``client-output-buffer-limit`` for normal clients. Reading the same again fails
    the same way: the message says what to change. A ``ConnectionUnavailableError`` (as
    a lost connection always was) and redis-py's ``ConnectionError``, which handlers
    written for the connection closed by the server catch."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        # The attributes redis-py's errors carry (its own code and __repr__ read them).
        self.__dict__.update(RedisConnectionError(message).__dict__)


def closed_by_server(exc: BaseException) -> bool:
    """Whether ``exc`` is redis-py's error for a connection the server closed (or
    reset) while the call waited for its reply, not one that could not be opened."""
    if not isinstance(exc, RedisConnectionError) or isinstance(exc, ConnectionUnavailableError):
        return False
    text = str(exc)
    return "closed by server" in text or "reset by peer" in text


def reply_cut_off(describe: str, queue: str, what: str) -> ReplyCutOffError:
    """The error of a reply to ``what`` (a read of queue ``queue``) that Redis at
    ``describe`` cut off by closing the connection, while it answers ``PING``."""
    return ReplyCutOffError(
        f"Redis at {describe} closed the connection of queue {queue!r} while sending the "
        f"reply to {what}, and answers again: the reply was most likely larger than the "
        "server's client-output-buffer-limit for normal clients (CONFIG GET "
        "client-output-buffer-limit; managed services often set one), not a server "
        "that went away. To go on: raise that limit (CONFIG SET "
        'client-output-buffer-limit "normal 0 0 0" lifts it), or read fewer or smaller '
        "records at a time (a smaller limit, e.g. kitium-queue jobs list --limit 5; "
        "keep large payloads out of job data)"
    )


# ------------------------------------------------------------------ reply deadlines
#: How long a command may take to be sent and answered, beyond a blocking one's wait.
REPLY_DEADLINE_S = 15.0
_SILENT = (
    "Redis may be frozen (SIGSTOP, a paused VM) or overloaded, its clients paused, or the "
    "network dropping packets; the command may or may not have run (add a job again with "
    "the same idempotency_key)"
)


class ReplyTimeoutError(ConnectionUnavailableError):
    """No reply within ``REPLY_DEADLINE_S``: not redis-py's TimeoutError (it retries)."""


def _cut(conn: Any, what: str) -> ReplyTimeoutError:
    exc = ReplyTimeoutError(
        f"no reply from Redis at {conn._host_error()}: it did not {what} within "
        f"{REPLY_DEADLINE_S:g} s; {_SILENT} (socket_timeout in redis= sets another bound)"
    )
    exc.__suppress_context__ = True  # redis-py's error for the cut says nothing more
    return exc


def _bound_connection(conn: Any, on_cut: Callable[[Any], None] | None = None) -> Any:
    """``conn`` cut unless its replies owed are in ``REPLY_DEADLINE_S`` (plus the longest
    wait asked) after its last send, then ``on_cut(conn)``; no subclass: the hot path
    knows redis-py's classes."""
    if "_kq_owed" in conn.__dict__:
        return conn
    cls, st = type(conn), dict[str, Any](packed=0, hold=0.0, owed=0, timer=None, cut=False)
    st.update(reading=0, loop=None)  # read_response calls under way; the timer's loop

    def expire() -> None:
        st["timer"], due, writer = None, st["due"], conn._writer
        if st["owed"] > 0 and due is not None and writer is not None:
            loop = asyncio.get_running_loop()
            if not st["reading"] and unread(conn):  # answered, not read yet (pub/sub)
                st["due"] = due = max(due, loop.time() + REPLY_DEADLINE_S)
            if loop.time() < due:  # a later send moved the deadline on
                st["timer"] = loop.call_at(due, expire)
            else:  # the read, or a send stuck on a full buffer, fails
                st["cut"] = True
                writer.transport.abort()
                if on_cut is not None:
                    on_cut(conn)

    def pack_command(*args: Any) -> Any:
        try:
            if args and holds(args[0]):
                hold, held = held_for(args), st["hold"]
                st["hold"] = None if hold is None or held is None else max(hold, held)
            packed = cls.pack_command(conn, *args)
        except BaseException:  # nothing packed is sent (a pipeline's whole batch): no reply
            st.update(packed=0, hold=0.0)
            raise
        st["packed"] += 1
        return packed

    async def send_packed_command(command: Any, check_health: bool = True) -> None:
        packed, hold, owed = st["packed"], st["hold"], st["owed"] if conn.is_connected else 0
        st.update(packed=0, hold=0.0, owed=owed, cut=False)
        if packed and not conn.socket_timeout:
            loop, st["owed"] = asyncio.get_running_loop(), owed + packed
            st["due"] = None if hold is None else loop.time() + REPLY_DEADLINE_S + hold
            # One timer at a time, of this loop (one of a loop that ended never fires).
            if st["due"] is not None and (st["timer"] is None or st["loop"] is not loop):
                st["timer"], st["loop"] = loop.call_at(st["due"], expire), loop
        try:
            await cls.send_packed_command(conn, command, check_health)
        except Exception as exc:
            raise _cut(conn, "take the command") if st["cut"] else exc  # noqa: B904

    async def read_response(*args: Any, **kwargs: Any) -> Any:
        st["reading"] += 1
        try:
            return await cls.read_response(conn, *args, **kwargs)
        except Exception as exc:  # an error reply (ResponseError) is a reply
            cut = st["cut"] and not isinstance(exc, ResponseError)
            raise _cut(conn, "answer") if cut else exc  # noqa: B904 - _cut hides the context
        finally:
            st["reading"] -= 1
            st["owed"] = max(0, st["owed"] - 1)

    conn.__dict__.update(_kq_owed=st, pack_command=pack_command, read_response=read_response)
    conn.__dict__["send_packed_command"] = send_packed_command
    return conn


def bound_replies(client: Any) -> Any:
    """``client``, whose pool's connections (a Cluster's nodes', ``clusterreplies``)
    keep reply deadlines: without, a silent server held a call for ever."""
    pool: Any = getattr(client, "connection_pool", None)
    if ConnectionPool in type(pool).__mro__ and "make_connection" not in vars(pool):
        for conn in [*pool._available_connections, *pool._in_use_connections]:
            _bound_connection(conn)
        pool.make_connection = lambda: _bound_connection(type(pool).make_connection(pool))
    return bound_nodes(client, _bound_connection) if pool is None else client
