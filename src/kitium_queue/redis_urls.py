"""The addresses of the ``redis=`` option: ``host:port`` items and the multi-host URLs of
Redis Cluster and Sentinel (``redis+cluster://``, ``redis+sentinel://``), parsed without
ever quoting a password in an error; and the checks of the connection settings that
redis-py would only trip over at the first connection (``option_problem``,
``unknown_url_options``)."""

from __future__ import annotations

import difflib
import inspect
import math
import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote

from redis.asyncio import connection as _rc

from .errors import ConfigurationError
from .redact import check_delimited

__all__ = [
    "NO_PASSWORD",
    "QUERY_TYPES",
    "auth_refused",
    "host_port",
    "no_retry",
    "option_problem",
    "parse_multi_host_url",
    "ready_check_and_retry",
    "scheme_options",
    "sentinel_only",
    "ssl_without_tls",
    "unknown_url_options",
    "url_problem",
]

# Query-string options accepted by the cluster and sentinel URLs, with their types.
QUERY_TYPES: dict[str, type] = {
    "socket_timeout": float,
    "socket_connect_timeout": float,
    "health_check_interval": float,
    "max_connections": int,
    "client_name": str,
    "ssl_cert_reqs": str,
    "ssl_ca_certs": str,
    "ssl_certfile": str,
    "ssl_keyfile": str,
    "sentinel_username": str,
    "sentinel_password": str,
}


def _port(value: Any) -> int | None:
    """``value`` as a TCP port (1-65535), or None when it is not one."""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536:
        return value
    return None


def host_port(item: Any, default_port: int, what: str) -> tuple[str, int]:
    """``(host, port)`` of ``item``: a ``(host, port)`` pair or ``"host[:port]"``
    (``[v6]:port`` and ``[v6]`` too); ``default_port`` when it names none. The port must
    be 1-65535."""
    host: Any = None
    port: int | None = None
    if isinstance(item, (tuple, list)) and len(item) == 2:
        host, port = item[0], _port(item[1])
    elif isinstance(item, str) and item:
        if item.startswith("["):  # an IPv6 literal: [v6] or [v6]:port
            v6, bracket, rest = item[1:].partition("]")
            if bracket and v6 and (not rest or rest.startswith(":")):
                host, port = v6, _port(rest[1:]) if rest else default_port
        else:
            name, sep, text = item.rpartition(":")
            host, port = (name or "localhost", _port(text)) if sep else (item, default_port)
    if isinstance(host, str) and host and port is not None:
        return host, port
    raise ConfigurationError(
        f"invalid {what} address {item!r}: use 'host:port' (a port of 1-65535; an IPv6 "
        "address in brackets, '[::1]:6379')"
    )


def parse_multi_host_url(url: str) -> tuple[str, list[tuple[str, int]], list[str], dict[str, Any]]:
    """Split ``scheme://[user[:pass]@]h1:p1[,h2:p2...][/path...][?opts]``.

    The scheme comes back lower-cased. Errors never quote the hosts part: when it does
    not parse, the password may be in it (a forgotten ``@``).
    """
    check_delimited(url)
    scheme, rest = url.split("://", 1)
    scheme = scheme.lower()
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    kwargs: dict[str, Any] = {}
    if at:
        user, colon, password = userinfo.partition(":")
        if colon:
            kwargs["password"] = unquote(password)
            if user:
                kwargs["username"] = unquote(user)
        elif user:
            kwargs["password"] = unquote(user)  # redis://secret@host: password only
    default_port = 26379 if "sentinel" in scheme else 6379
    nodes = []
    for n, host in enumerate((h for h in hosts.split(",") if h), 1):
        try:
            nodes.append(host_port(host, default_port, "node"))
            continue
        except ConfigurationError:
            pass  # raised below, without this error (which quotes the host) as context
        raise ConfigurationError(
            f"invalid node address (host {n} of the {scheme}:// URL): use "
            f"{scheme}://[user:password@]host:port[,host:port...] with ports of 1-65535"
        )
    if not nodes:
        raise ConfigurationError(f"{scheme}:// URL needs at least one host:port")
    valid = scheme_options(scheme)
    for name, value in parse_qsl(query):
        cast = QUERY_TYPES.get(name)
        if cast is None or name not in valid:
            raise ConfigurationError(_not_taken(scheme, name, valid))
        try:
            kwargs[name] = cast(value)
        except ValueError:
            raise ConfigurationError(f"option {name}={value!r} must be {cast.__name__}") from None
    return scheme, nodes, [unquote(p) for p in path.split("/") if p], kwargs


def scheme_options(scheme: str) -> list[str]:
    """The query options a ``redis+cluster://`` or ``redis+sentinel://`` URL takes
    (``scheme``, lower-cased): ``ssl_*`` only with TLS (``rediss+``), ``sentinel_*``
    only for Sentinel."""
    return sorted(
        name
        for name in QUERY_TYPES
        if (scheme.startswith("rediss") or not name.startswith("ssl_"))
        and ("sentinel" in scheme or not name.startswith("sentinel_"))
    )


def _not_taken(scheme: str, name: str, valid: list[str]) -> str:
    """Why a ``scheme://`` URL does not take option ``name`` (``valid``: those it takes)."""
    if name.startswith("ssl_") and name in QUERY_TYPES:
        return (
            f"option {name!r} configures TLS, which a {scheme}:// URL does not use (it "
            f"connects in plain text): use {scheme.replace('redis', 'rediss', 1)}:// for "
            "TLS, or drop the option"
        )
    if name.startswith("sentinel_") and name in QUERY_TYPES:
        return f"[{name!r}] only apply to redis+sentinel:// URLs"
    return f"unknown option {name!r} in {scheme}:// URL; valid: {valid}"


def ssl_without_tls(opts: Mapping[str, Any], tls: bool) -> str:
    """What is wrong with ``ssl_*`` options of a dict setting that does not ask for TLS
    (``tls``: ``ssl=True``, ``tls=``, a ``rediss://`` url): redis-py connected in plain
    text without a word, or refused them at the first connection ("" if nothing)."""
    given = sorted(k for k in opts if k.startswith("ssl_"))
    if not given or tls:
        return ""
    return (
        f"redis options {given} configure TLS, which this setting does not ask for (it "
        "would connect in plain text): add ssl=True (or tls=True, or tls={'ca_certs': ...}"
        "), or use a rediss:// url; drop them for a plain-text connection"
    )


def sentinel_only(opts: Mapping[str, Any], keys: tuple[str, ...]) -> None:
    """Refuse the Sentinel-only ``keys`` in a Cluster dict ``opts``."""
    bad = [k for k in keys if k in opts]
    if bad:
        raise ConfigurationError(
            f"redis options {bad} only apply to Sentinel (sentinels=[...]), not to a Redis "
            "Cluster (cluster=True / startup_nodes)"
        )


def ready_check_and_retry(opts: dict[str, Any]) -> None:
    """The ``retry_strategy`` and ``enable_ready_check`` options: honoured where the
    queue does it already, refused where it cannot (never accepted and dropped)."""
    if opts.pop("retry_strategy", None) is not None:
        raise ConfigurationError(
            "redis option 'retry_strategy' is not supported: reconnecting is built in "
            "(workers, the scheduler and leader services retry with backoff up to 5 s "
            "until Redis is back; add_job and the other calls raise "
            "ConnectionUnavailableError at once, so the caller decides). Drop it, or "
            "pass a ready redis.asyncio client built with retry=Retry(...) for "
            "per-command retries"
        )
    ready = opts.pop("enable_ready_check", True)
    if ready is not True:
        raise ConfigurationError(
            f"redis option enable_ready_check={ready!r}: the queue always checks that "
            "Redis answers (PING, with a deadline) before it first uses a connection, "
            "and that cannot be turned off; drop the option (True is accepted)"
        )


def _finite(value: Any, low: float) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= low
    )


_CERT_REQS = ("none", "optional", "required")


def option_problem(opts: Mapping[str, Any]) -> str:
    """What is wrong with the values of a connection setting's options (from a dict or
    parsed from a URL), said before the first connection ("" if nothing): redis-py
    accepts them all and fails later, with a message that does not say which option."""
    for name in ("socket_timeout", "socket_connect_timeout"):
        value = opts.get(name)
        if value is not None and not (_finite(value, 0) and value > 0):
            return (
                f"{name}={value!r}: use a number of seconds above 0 (leave it out for the default)"
            )
    value = opts.get("health_check_interval")
    if value is not None and not _finite(value, 0):
        return f"health_check_interval={value!r}: use a number of seconds, 0 or more"
    value = opts.get("max_connections")
    if value is not None and (
        not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 2**31
    ):
        return (
            f"max_connections={value!r}: use a whole number of 1 or more (leave it out "
            "for no limit)"
        )
    if "port" in opts:
        port = opts["port"]
        if isinstance(port, str) or _port(port) is None:  # redis-py takes no str port
            return f"port={port!r}: use a whole number from 1 to 65535"
    if "host" in opts and (not isinstance(opts["host"], str) or not opts["host"]):
        return f"host={opts['host']!r}: use a host name or IP address (a non-empty str)"
    db = opts.get("db")
    if db is not None and not (
        (isinstance(db, int) and not isinstance(db, bool) and db >= 0)
        or (isinstance(db, str) and db.isascii() and db.isdigit())
    ):
        return f"db={db!r}: use a database number, 0 or more"
    reqs = opts.get("ssl_cert_reqs")
    if reqs is not None and not isinstance(reqs, ssl.VerifyMode) and reqs not in _CERT_REQS:
        return f"ssl_cert_reqs={reqs!r}: use one of {', '.join(_CERT_REQS)}"
    return ""


def _connection_options(*classes: type) -> frozenset[str]:
    names = {"max_connections"}
    for cls in (_rc.AbstractConnection, *classes):
        names |= set(inspect.signature(cls).parameters) - {"kwargs"}
    return frozenset(names)


# The options a URL's query string may set, per scheme: what the connection class redis-py
# picks for it takes (an unknown one reaches it as a keyword argument it refuses).
_URL_OPTIONS = {
    "redis": _connection_options(_rc.Connection),
    "rediss": _connection_options(_rc.Connection, _rc.SSLConnection),
    "unix": _connection_options(_rc.UnixDomainSocketConnection),
}


def unknown_url_options(url: str) -> str:
    """What is wrong with the query options of a redis://, rediss:// or unix:// URL
    ("" if nothing): an option its connection does not take, with the closest valid
    names."""
    scheme = url.split("://", 1)[0].lower()
    valid = _URL_OPTIONS.get(scheme)
    if valid is None:
        return ""
    query = url.partition("?")[2].partition("#")[0]
    for name, _ in parse_qsl(query, keep_blank_values=True):
        if name not in valid:
            close = difflib.get_close_matches(name, sorted(valid), n=3)
            hint = f"did you mean {' or '.join(close)}?" if close else "see redis-py's from_url"
            tls = " (ssl_* options need a rediss:// URL)" if name.startswith("ssl_") else ""
            return f"unknown option {name!r} in the query string{tls}; {hint}"
    return ""


def _bad_char(text: str) -> str:
    """The first control character or lone surrogate of ``text``, as "a control
    character, U+XXXX at index N" ("" if none): such a URL cannot reach a server, and
    its error message would carry the character to a terminal or a log (a surrogate
    cannot even be printed)."""
    for i, ch in enumerate(text):
        if ch < " " or ch == "\x7f":
            return f"a control character, U+{ord(ch):04X} at index {i}"
        if "\ud800" <= ch <= "\udfff":
            return f"a lone surrogate, U+{ord(ch):04X} at index {i}"
    return ""


def url_problem(url: str) -> str:
    """What is wrong with a redis://, rediss:// or unix:// URL that redis-py parses
    without a word ("" if nothing): a control character or lone surrogate (percent-encoded
    ones in the host too); a path that is not one database number (redis-py reads
    ``/x`` as database 0 and ``/1/2`` as database 12, so the queue would use another
    database than the one meant); a path database and ``?db=`` that differ (redis-py
    takes the query's, ``/0?db=5`` is database 5), or ``db=`` given twice with different
    numbers (it takes the first); a ``#fragment``, which redis-py ignores (a ``#`` in
    a password must be written ``%23``: unencoded, the rest of the URL is dropped and
    the default host is used); an unknown query option (``unknown_url_options``)."""
    where = _bad_char(url)
    if where:
        return f"it holds {where}: remove it (a URL is printable text)"
    if "#" in url:  # never quoted: what follows it may be the rest of a password
        return (
            "it holds a '#' (a fragment, which a Redis URL does not use): remove it, or "
            "write a '#' of a password as %23"
        )
    scheme, _, rest = url.partition("://")
    rest, _, query = rest.partition("?")
    authority, slash, path = rest.partition("/")
    host = unquote(authority.rpartition("@")[2])
    if _bad_char(host):
        return "its host holds a percent-encoded control character; remove it"
    dbs = {int(v) for k, v in parse_qsl(query) if k == "db" and v.isascii() and v.isdigit()}
    if scheme.lower() in ("redis", "rediss") and slash:
        db = unquote(path)
        db = db[:-1] if len(db) > 1 and db.endswith("/") else db  # "/3/" is database 3
        if db and not (db.isascii() and db.isdigit()):
            return (
                "the path after the host must be one database number (redis://host:6379/0), "
                "got another path: fix it, or leave it out for database 0"
            )
        dbs |= {int(db)} if db else set()
    if len(dbs) > 1:
        return (
            f"its path and ?db= name different databases ({', '.join(map(str, sorted(dbs)))};"
            " redis-py would take the first ?db=): give the database once, e.g. "
            "redis://host:6379/0"
        )
    return unknown_url_options(url)


#: Set in the options a connection error is worded from when the setting is known to give
#: no password (one server, set up here: not a client given, nor Sentinel's).
NO_PASSWORD = "kq_no_password"


def auth_refused(where: str, queue: str, cause: str, options: Mapping[str, Any]) -> str:
    """The message of an ``AuthenticationError`` from Redis at ``where``: a password is
    needed when none was given (``options[NO_PASSWORD]``: "cluster" for a Cluster,
    "sentinel" for the data nodes found through Sentinel), else
    the credentials given are wrong (never shown). ``queue``: the queue's name ("" when
    the connection serves no queue known: a client passed in)."""
    of, named = (f" of queue {queue!r}", f"queue {queue!r}: ") if queue else ("", "")
    if options.get(NO_PASSWORD):
        # The form that gives one: the username given kept, the socket's, TLS's or a
        # Cluster's scheme.
        user, s = "USERNAME" if options.get("username") else "", "s" if _tls(options) else ""
        if options.get(NO_PASSWORD) == "cluster":
            form = f"redis{s}+cluster://{user}:PASSWORD@host:port,host:port"
        elif options.get(NO_PASSWORD) == "sentinel":  # the data nodes' (not the sentinels')
            form = f"redis{s}+sentinel://{user}:PASSWORD@host:port,host:port/service"
        elif options.get("path"):
            form = f"unix://{user}:PASSWORD@/path/to/socket"
        else:
            form = f"redis{s}://{user}:PASSWORD@host:port/db"
        return f"{where} requires a password and none was given ({named}{cause}); use {form}"
    return (
        f"{where} refused the credentials{of} ({cause}); check the username and password "
        "given in redis="
    )


def _tls(options: Mapping[str, Any]) -> bool:
    """Whether connection ``options`` speak TLS (``ssl=True`` or an SSL connection class)."""
    kind = options.get("connection_class")
    return bool(options.get("ssl")) or (kind is not None and "SSL" in kind.__name__)


def no_retry(*, sync: bool = False) -> Any:
    """The ``retry`` of a client built from a URL, for one built from keyword options.

    redis-py's connections from a URL try a command once; ``Redis(**options)`` gives them
    a retry with backoff (in 8.2: up to 10 times) on connection errors and timeouts. So a
    queue configured with a dict made up to 29 connection attempts over 10 s against a
    server that closed each one, and then blamed the server's silence, where the URL form
    failed at once naming the cause; and a script call whose reply was lost could be
    sent again and applied twice. kitium-queue retries where that is safe (the worker's
    loops, the services) and nowhere else.
    """
    from redis.backoff import NoBackoff

    if sync:
        from redis.retry import Retry as SyncRetry

        return SyncRetry(NoBackoff(), 0)
    from redis.asyncio.retry import Retry

    return Retry(NoBackoff(), 0)
