"""Builds Redis clients from the ``redis=`` option (URL, dict, or client): a single
server, Redis Cluster, or a primary found through Sentinel."""

from __future__ import annotations

import inspect
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, unquote

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import parse_url
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.exceptions import ClusterDownError, ReadOnlyError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .errors import ConfigurationError

__all__ = [
    "REDACTED",
    "REDACTED_PLACEHOLDER",
    "TRANSIENT_ERRORS",
    "ConnectionFactory",
    "redact_url",
]

#: Errors after which a command may succeed if retried a moment later: the server is
#: unreachable, or a Cluster/Sentinel failover is under way (CLUSTERDOWN, TRYAGAIN, a
#: demoted primary answering READONLY). Worker loops keep what they hold and retry.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    ClusterDownError,
    TryAgainError,
    ReadOnlyError,
)

_memory_servers: dict[str, Any] = {}
_memory_lock = threading.Lock()

_DICT_KEYS = {
    "host", "port", "username", "password", "db", "tls", "ssl", "url", "socket_timeout",
    "socket_connect_timeout", "max_connections", "ssl_ca_certs", "ssl_certfile",
    "ssl_keyfile", "ssl_cert_reqs", "client_name", "health_check_interval",
    "retry_strategy", "enable_ready_check", "unix_socket_path",
    # Redis Cluster
    "cluster", "startup_nodes",
    # Sentinel
    "sentinels", "service_name", "sentinel_username", "sentinel_password",
}
# Query-string options accepted by the cluster and sentinel URLs, with their types.
_QUERY_TYPES: dict[str, type] = {
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
_SENTINEL_ONLY = ("service_name", "sentinel_username", "sentinel_password")


def _memory_server(name: str) -> Any:
    import fakeredis

    with _memory_lock:
        server = _memory_servers.get(name)
        if server is None:
            server = fakeredis.FakeServer()
            _memory_servers[name] = server
        return server


def _tls_options() -> set[str]:
    """The ``ssl_*`` keyword arguments this redis-py version accepts."""
    params = inspect.signature(aioredis.Redis.__init__).parameters
    return {p for p in params if p.startswith("ssl_")}


#: What a redacted part of a URL or message is replaced with.
REDACTED = "***"
#: What ``redact_url`` returns when it cannot process its input at all.
REDACTED_PLACEHOLDER = "<redacted>"
# Option names whose values are secrets, in dicts and in URL query strings.
_SECRET_NAME = re.compile(r"pass(?:word|wd)?|pwd|secret|token|credential|auth", re.IGNORECASE)
# ``password=...`` / ``'sentinel_password': '...'`` / ``token: ...`` in free text: a
# word naming a secret, then what assigns it a value, then the value. Applied word by
# word (``_mask_params``), which keeps it linear on any input.
_SECRET_WORD = re.compile(r"pass(?:word|wd)?|pwd|secret|token|credential", re.IGNORECASE)
_WORD = re.compile(r"\w+")
_ASSIGNED = re.compile(r"(['\"]?\s*[=:]\s*)(?:'[^']*'?|\"[^\"]*\"?|[^&\s,;}'\"]*)")
# The hosts part of a URL in a text (once credentials are masked, it holds no ``@``).
_AUTHORITY = re.compile(
    r"(://(?:" + re.escape(REDACTED) + r"@)?)([^\s'\"<>/?#@]*)(?=[\s'\"<>/?#]|$)"
)
# A text that *is* a URL (as opposed to a message that mentions one).
_WHOLE_URL = re.compile(r"\s*[A-Za-z][A-Za-z0-9+.\-]*://")
# The query string or fragment of a URL inside a message: up to the next space or quote.
_QUERY_IN_TEXT = re.compile(r"(://[^\s'\"<>?#]*)[?#][^\s'\"<>]*")


def redact_url(value: object, secrets: Iterable[str] = ()) -> str:
    """``value`` (a URL, a message mentioning URLs, or a dict of connection options) with
    every credential removed, for messages, ``describe()`` and health output.

    It fails closed: anything that may be a credential goes, even if that also hides
    harmless text.

    * Credentials: whatever lies between the first ``://`` and the *last* ``@`` is
      replaced, so a password with unencoded ``/ ? # @ :`` or spaces, a user name, the
      hosts of a multi-host URL and any scheme spelling (``Redis://``, ``REDISS://``,
      ``redis+sentinel://``) are all covered. An ``@`` with no ``://`` before it (a URL
      without a scheme, a host written as ``user:pw@host``) hides everything before it.
    * Query strings and fragments (``?password=``, ``?sentinel_password=``) are dropped:
      to the end of the text when the text is a URL, to the next space or quote when a
      message mentions one; ``password=...``-like pairs are masked anywhere in the text.
    * ``secrets``: exact strings (passwords a caller knows of) masked wherever they occur,
      also inside texts that do not look like URLs (a parser's error message quoting a
      fragment of a malformed URL).
    * A mapping has the values of secret-looking keys masked and its ``url`` redacted.
    * Anything that cannot be processed (an object whose ``str()`` fails, an internal
      error) gives ``"<redacted>"``, never the input.
    """
    try:
        text = _as_text(value)
        known = {s for s in secrets if isinstance(s, str) and s}
        for secret in sorted(known, key=len, reverse=True):  # longest first: no remnants
            text = text.replace(secret, REDACTED)
        last_at = text.rfind("@")
        if last_at >= 0:
            scheme_end = text.find("://")
            start = scheme_end + 3 if 0 <= scheme_end < text.find("@") else 0
            text = text[:start] + REDACTED + text[last_at:]
        text = _AUTHORITY.sub(lambda m: m.group(1) + _mask_ports(m.group(2)), text)
        if _WHOLE_URL.match(text):
            head, sep, rest = text.partition("://")
            cut = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=-1)
            text = head + sep + (rest[:cut] if cut >= 0 else rest)
        else:
            text = _QUERY_IN_TEXT.sub(r"\1", text)
        return _mask_params(text)
    except Exception:
        return REDACTED_PLACEHOLDER


def _mask_params(text: str) -> str:
    """``text`` with the value after every secret-naming word (``password=x``,
    ``'password': 'x'``, ``token: x``) replaced."""
    out: list[str] = []
    pos = 0
    for word in _WORD.finditer(text):
        if word.start() < pos or not _SECRET_WORD.search(word.group()):
            continue
        value = _ASSIGNED.match(text, word.end())
        if value is None:
            continue
        # Keep the quote and separator, drop the value (and a quoted value's quotes).
        out += [text[pos:word.end()], value.group(1), REDACTED]
        pos = value.end()
    out.append(text[pos:])
    return "".join(out)


def _mask_ports(authority: str) -> str:
    """The hosts of a URL with every port that is not a plain number masked:
    ``redis://:secret`` (the ``@`` forgotten) puts the password where the port goes."""
    items = []
    for item in authority.split(","):
        end = item.find("]") + 1 if item.startswith("[") else 0  # [IPv6]:port
        if item.startswith("[") and end == 0:
            items.append(REDACTED)
            continue
        colon = item.find(":", end)
        port = item[colon + 1:]
        if colon >= 0 and not (port.isascii() and port.isdigit()):
            item = item[: colon + 1] + REDACTED
        items.append(item)
    return ",".join(items)


def _as_text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, Mapping):
        shown = (
            f"{str(k)!r}: "
            + (REDACTED if _SECRET_NAME.search(str(k)) else
               _as_text(v) if isinstance(v, Mapping) else repr(redact_url(v)))
            for k, v in value.items()
        )
        return "{" + ", ".join(shown) + "}"
    return str(value)


def _url_secrets(url: str) -> set[str]:
    """Every string of ``url`` that may be a credential, raw and percent-decoded: the
    whole userinfo, its password part (or the lone ``secret`` of ``scheme://secret@``)
    and the values of secret-looking query options."""
    found: set[str] = set()
    rest = url.partition("://")[2] if "://" in url else url
    userinfo, at, _ = rest.rpartition("@")
    if at:
        user, colon, password = userinfo.partition(":")
        found |= {userinfo, password if colon else user}
    for name, value in parse_qsl(url.partition("?")[2], keep_blank_values=True):
        if _SECRET_NAME.search(name):
            found.add(value)
    found |= {unquote(s) for s in found}
    return {s for s in found if s}


def _mapping_secrets(options: Mapping[str, Any]) -> set[str]:
    """Secret values of a dict of connection options (nested ``tls`` dict included)."""
    found: set[str] = set()
    for key, value in options.items():
        if isinstance(value, Mapping):
            found |= _mapping_secrets(value)
        elif isinstance(value, str) and value:
            if _SECRET_NAME.search(str(key)):
                found.add(value)
            elif key == "url":
                found |= _url_secrets(value)
    return found


def _misplaced_secrets(url: str) -> set[str]:
    """For messages about a URL that did not parse: when it has no ``@``, whatever sits
    where a port goes may be a password whose ``@`` was forgotten (``redis://:secret``),
    so none of it is shown. (With an ``@`` the credentials are delimited and known.)"""
    rest = url.partition("://")[2]
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if "@" in authority:
        return set()
    found: set[str] = set()
    for item in authority.split(","):
        tail = item.partition("]")[2] if item.startswith("[") else item.partition(":")[2]
        found |= {tail, *tail.split(":")}
    return {t for t in found if t}


def _check_delimited(url: str) -> None:
    """Refuse a URL whose credentials are not delimited unambiguously.

    An ``@`` after the first ``/``, ``?`` or ``#`` of the authority means a password (or
    an option value) holds one of those characters unencoded: the URL then parses to a
    different host, port or path, and the password would end up in error messages as a
    "port" or "database". Percent-encoding it is the fix. A URL whose authority is empty
    (``unix:///path/with@sign``) has no credentials to misplace.
    """
    rest = url.partition("://")[2]
    if rest.startswith("/"):
        return
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    if "@" in rest[end:]:
        raise ConfigurationError(
            f"redis URL {redact_url(url)!r} has an '@' after the host part: a password or "
            "option value containing '/', '?', '#' or '@' must be percent-encoded, e.g. "
            "urllib.parse.quote(password, safe='')"
        )


def _client_secrets(client: Any) -> set[str]:
    """Passwords a ready-made client carries (best effort: only to mask them)."""
    found: set[str] = set()
    try:
        if isinstance(client, RedisCluster):
            kwargs = client.get_connection_kwargs()
        else:
            kwargs = client.connection_pool.connection_kwargs
        found |= _mapping_secrets({k: v for k, v in kwargs.items() if isinstance(v, str)})
    except Exception:  # not a redis-py client: nothing known to mask
        pass
    return found


def _host_port(item: Any, default_port: int, what: str) -> tuple[str, int]:
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return str(item[0]), int(item[1])
    if isinstance(item, str) and item:
        host, sep, port = item.rpartition(":")
        if not sep:
            return item, default_port
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        try:
            return host or "localhost", int(port)
        except ValueError:
            pass
    raise ConfigurationError(f"invalid {what} address {item!r}: use 'host:port'")


def _parse_multi_host_url(url: str) -> tuple[str, list[tuple[str, int]], list[str], dict[str, Any]]:
    """Split ``scheme://[user[:pass]@]h1:p1[,h2:p2...][/path...][?opts]``.

    The scheme comes back lower-cased. Errors never quote the hosts part: when it does
    not parse, the password may be in it (a forgotten ``@``).
    """
    _check_delimited(url)
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
            nodes.append(_host_port(host, default_port, "node"))
            continue
        except ConfigurationError:
            pass  # raised below, without this error (which quotes the host) as context
        raise ConfigurationError(
            f"invalid node address (host {n} of the {scheme}:// URL): use "
            f"{scheme}://[user:password@]host:port[,host:port...]"
        )
    if not nodes:
        raise ConfigurationError(f"{scheme}:// URL needs at least one host:port")
    for name, value in parse_qsl(query):
        cast = _QUERY_TYPES.get(name)
        if cast is None:
            raise ConfigurationError(
                f"unknown option {name!r} in {scheme}:// URL; valid: {sorted(_QUERY_TYPES)}"
            )
        try:
            kwargs[name] = cast(value)
        except ValueError:
            raise ConfigurationError(f"option {name}={value!r} must be {cast.__name__}") from None
    return scheme, nodes, [unquote(p) for p in path.split("/") if p], kwargs


class _SentinelMaster(aioredis.Redis):
    """The primary of a Sentinel service; closing it also closes its sentinel links."""

    kq_sentinel: Any = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        try:
            await super().aclose(close_connection_pool)
        finally:
            sentinel, self.kq_sentinel = self.kq_sentinel, None
            if sentinel is not None:
                await sentinel.aclose()


class ConnectionFactory:
    """Makes the clients a queue needs: a shared one and dedicated blocking ones.

    ``redis`` may be

    * a URL: ``redis://``, ``rediss://``, ``unix://``, ``memory://name``;
      ``redis+cluster://[user:pass@]host:port[,host:port...]`` (``rediss+cluster://`` for
      TLS) for Redis Cluster, given one or more seed nodes;
      ``redis+sentinel://[user:pass@]host:port[,host:port...]/service_name[/db]``
      (``rediss+sentinel://``) for the primary of a Sentinel service. Both accept
      ``?socket_timeout=..&socket_connect_timeout=..&max_connections=..&client_name=..``
      and, for Sentinel, ``sentinel_username`` / ``sentinel_password`` (credentials of
      the sentinels themselves; the URL's credentials are the data nodes').
    * a dict of connection options (host, port, username, password, db, tls, ...);
      ``{"cluster": True, "startup_nodes": ["h:p", ...]}`` for Cluster,
      ``{"sentinels": ["h:p", ...], "service_name": "mymaster"}`` for Sentinel.
    * a ready client: ``redis.asyncio.Redis`` (a Sentinel ``master_for`` client too) or
      ``redis.asyncio.RedisCluster``; blocking clients copy its connection settings.
    """

    def __init__(self, redis: Any = "memory://") -> None:
        self._given_client: Any = None
        self._url: str | None = None
        self._kwargs: dict[str, Any] = {}
        self._nodes: list[tuple[str, int]] = []
        self._service: str = ""
        self.mode = "standalone"
        self.memory_name: str | None = None
        # Strings that must never appear in a message: the passwords of this setting.
        self._secrets: set[str] = set()
        if isinstance(redis, str):
            self._secrets = _url_secrets(redis)
            # URL schemes are case-insensitive (RFC 3986), as redis-py treats them.
            scheme = redis.split("://", 1)[0].lower() if "://" in redis else ""
            if scheme == "memory":
                self.memory_name = redis[len("memory://"):] or "default"
                self.mode = "memory"
            elif scheme in ("redis", "rediss", "unix"):
                self._url = self._checked_url(redis)
            elif scheme in ("redis+cluster", "rediss+cluster"):
                self._from_cluster_url(redis)
            elif scheme in ("redis+sentinel", "rediss+sentinel"):
                self._from_sentinel_url(redis)
            else:
                raise ConfigurationError(
                    f"unsupported redis URL {redact_url(redis, self._secrets)!r}: use "
                    "redis://, rediss://, unix://, redis+cluster://, redis+sentinel:// or "
                    "memory://"
                )
        elif isinstance(redis, Mapping):
            self._secrets = _mapping_secrets(redis)
            self._from_dict(redis)
        elif isinstance(redis, (aioredis.Redis, RedisCluster)) or hasattr(
            redis, "execute_command"
        ):
            self._given_client = redis
            self._secrets = _client_secrets(redis)
            self.mode = "cluster" if isinstance(redis, RedisCluster) else "client"
        else:
            raise ConfigurationError(
                f"redis must be a URL, a dict of connection options or a redis.asyncio "
                f"client, got {type(redis).__name__}"
            )

    # ------------------------------------------------------------------ parsing
    def _checked_url(self, url: str) -> str:
        """``url`` (redis://, rediss://, unix://) once redis-py can parse it.

        Parsing here, not at the first connection, turns a malformed URL into a
        ``ConfigurationError`` whose text is redacted: redis-py's own message may quote a
        piece of the URL ("Port could not be cast to integer value as '<password>'").
        """
        _check_delimited(url)
        hidden = self._secrets | _misplaced_secrets(url)
        try:
            parse_url(url)
            problem = ""
        except Exception as exc:
            problem = redact_url(exc, hidden) or type(exc).__name__
        if problem:
            # Raised outside the ``except``: the parser's exception (which may quote the
            # password) must not ride along as ``__context__`` to error trackers.
            raise ConfigurationError(f"invalid redis URL {redact_url(url, hidden)!r}: {problem}")
        return url

    def _from_cluster_url(self, url: str) -> None:
        scheme, nodes, path, kwargs = _parse_multi_host_url(url)
        if path not in ([], ["0"]):
            raise ConfigurationError(
                f"Redis Cluster has only database 0; drop '/{'/'.join(path)}' from "
                f"{redact_url(url, self._secrets)!r}"
            )
        bad = [k for k in kwargs if k.startswith("sentinel_")]
        if bad:
            raise ConfigurationError(f"{bad} only apply to redis+sentinel:// URLs")
        self.mode = "cluster"
        self._nodes = nodes
        self._kwargs = kwargs
        if scheme.startswith("rediss"):
            self._kwargs["ssl"] = True

    def _from_sentinel_url(self, url: str) -> None:
        scheme, nodes, path, kwargs = _parse_multi_host_url(url)
        if not path or len(path) > 2:
            raise ConfigurationError(
                f"sentinel URL {redact_url(url, self._secrets)!r} needs the service name: "
                "redis+sentinel://host:port[,host:port]/service_name[/db]"
            )
        self.mode = "sentinel"
        self._nodes = nodes
        self._service = path[0]
        if len(path) == 2:
            try:
                kwargs["db"] = int(path[1])
            except ValueError:
                raise ConfigurationError(
                    f"invalid database {path[1]!r} in {redact_url(url, self._secrets)!r}"
                ) from None
        self._kwargs = kwargs
        if scheme.startswith("rediss"):
            self._kwargs["ssl"] = True

    def _from_dict(self, redis: Mapping[str, Any]) -> None:
        bad = [k for k in redis if k not in _DICT_KEYS]
        if bad:
            raise ConfigurationError(
                f"unknown redis connection option(s) {bad}; valid: {sorted(_DICT_KEYS)}"
            )
        opts = dict(redis)
        if "url" in opts:
            url = opts.pop("url")
            scheme = url.split("://", 1)[0].lower() if isinstance(url, str) else ""
            if scheme not in ("redis", "rediss", "unix"):
                raise ConfigurationError(
                    f"redis option 'url' must be a redis://, rediss:// or unix:// URL, got "
                    f"{redact_url(url, self._secrets)!r}"
                )
            self._url = self._checked_url(url)
        tls = opts.pop("tls", None)
        use_tls = bool(opts.pop("ssl", False))
        if isinstance(tls, Mapping):
            # {"tls": {"ca_certs": ..., "certfile": ..., "check_hostname": ...}}
            use_tls = True
            valid = _tls_options()
            for k, v in tls.items():
                name = k if k.startswith("ssl_") else f"ssl_{k}"
                if name not in valid:
                    raise ConfigurationError(
                        f"unknown tls option {k!r}; valid: {sorted(n[4:] for n in valid)}"
                    )
                opts[name] = v
        elif tls is not None:
            use_tls = bool(tls)  # tls=True: system CAs; tls=False: plain text
        if use_tls:
            if self._url is None:
                opts["ssl"] = True
            elif not self._url.lower().startswith("rediss://"):
                raise ConfigurationError(
                    "tls options given with a non-TLS url: use a rediss:// url"
                )  # with a rediss:// url the scheme selects TLS; the options configure it
        opts.pop("retry_strategy", None)  # reconnection is handled by the worker
        opts.pop("enable_ready_check", None)
        if "unix_socket_path" in opts:
            opts["path"] = opts.pop("unix_socket_path")
        cluster = opts.pop("cluster", False)
        startup = opts.pop("startup_nodes", None)
        sentinels = opts.pop("sentinels", None)
        if cluster or startup:
            if sentinels:
                raise ConfigurationError("choose either cluster or sentinels, not both")
            if opts.get("db"):
                raise ConfigurationError("Redis Cluster has only database 0")
            opts.pop("db", None)
            nodes = list(startup or [])
            if "host" in opts or not nodes:
                nodes.append((opts.pop("host", "localhost"), opts.pop("port", 6379)))
            self.mode = "cluster"
            self._nodes = [_host_port(n, 6379, "cluster node") for n in nodes]
        elif sentinels:
            if isinstance(sentinels, (str, bytes)) or not isinstance(sentinels, Sequence):
                raise ConfigurationError("sentinels must be a list of 'host:port' or (host, port)")
            service = opts.pop("service_name", None)
            if not service:
                raise ConfigurationError("sentinels=... needs service_name (e.g. 'mymaster')")
            self.mode = "sentinel"
            self._service = str(service)
            self._nodes = [_host_port(n, 26379, "sentinel") for n in sentinels]
        elif any(k in opts for k in _SENTINEL_ONLY):
            raise ConfigurationError(f"{list(_SENTINEL_ONLY)} need sentinels=[...]")
        self._kwargs = opts

    # ------------------------------------------------------------------ info
    @property
    def is_memory(self) -> bool:
        return self.memory_name is not None

    @property
    def is_cluster(self) -> bool:
        """True when the clients talk to a Redis Cluster."""
        return self.mode == "cluster"

    def describe(self) -> str:
        """Where the clients connect, for messages and health output: never a
        credential (every form goes through ``redact``)."""
        return self.redact(self._describe())

    def _describe(self) -> str:
        if self.memory_name is not None:
            return f"memory://{self.memory_name}"
        nodes = ",".join(f"{h}:{p}" for h, p in self._nodes)
        if self.mode == "sentinel":
            return f"sentinel {nodes}/{self._service}"
        if self._nodes:
            return f"cluster {nodes}"
        if self._url:
            return self._url
        if self._given_client is not None:
            return "<cluster client>" if self.mode == "cluster" else "<client>"
        if "path" in self._kwargs:
            return f"unix:{self._kwargs['path']}"
        return f"{self._kwargs.get('host', 'localhost')}:{self._kwargs.get('port', 6379)}"

    def redact(self, text: object) -> str:
        """``text`` (an error message, a URL) without the credentials of this setting:
        ``redact_url`` plus the passwords this factory was given, wherever they occur.
        Use it for every message that may quote the connection or a client's error."""
        return redact_url(text, self._secrets)

    # ------------------------------------------------------------------ clients
    def client(self, *, blocking: bool = False) -> Any:
        """A new client. ``blocking=True`` gives one meant for blocking commands."""
        if self.memory_name is not None:
            from fakeredis import aioredis as fake

            return fake.FakeRedis(server=_memory_server(self.memory_name))
        extra: dict[str, Any] = {}
        if blocking:
            extra["socket_timeout"] = None
            extra["max_connections"] = 2
        if self._given_client is not None:
            if not blocking:
                return self._given_client
            return self._blocking_from_given(extra)
        # No socket_timeout by default: it costs a timer task per command in redis-py.
        # The worker's script exchanges carry their own deadline (scripts.REPLY_TIMEOUT_S)
        # and JobQueue.client() bounds the first PING, so a silent server still fails fast.
        defaults: dict[str, Any] = {
            "socket_connect_timeout": 5,
            "socket_timeout": None,
            "health_check_interval": 30,
        }
        if self.mode == "cluster":
            extra.pop("max_connections", None)  # per node in a cluster; keep the default
            return RedisCluster(
                startup_nodes=[ClusterNode(h, p) for h, p in self._nodes],
                **{**defaults, **self._kwargs, **extra},
            )
        if self.mode == "sentinel":
            return self._sentinel_master({**defaults, **self._kwargs, **extra})
        if self._url:
            return aioredis.Redis.from_url(self._url, **{**defaults, **self._kwargs, **extra})
        return aioredis.Redis(**{**defaults, **self._kwargs, **extra})

    def _sentinel_master(self, kwargs: dict[str, Any]) -> Any:
        sentinel_kwargs: dict[str, Any] = {
            k: kwargs[k] for k in ("socket_connect_timeout", "ssl") if k in kwargs
        }
        sentinel_kwargs["socket_timeout"] = kwargs.get("socket_connect_timeout") or 5
        for k in ("sentinel_username", "sentinel_password"):
            if k in kwargs:
                sentinel_kwargs[k[len("sentinel_"):]] = kwargs.pop(k)
        kwargs.pop("service_name", None)
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            self._nodes, sentinel_kwargs=sentinel_kwargs
        )
        master = sentinel.master_for(self._service, redis_class=_SentinelMaster, **kwargs)
        master.kq_sentinel = sentinel
        return master

    def _blocking_from_given(self, extra: dict[str, Any]) -> Any:
        given = self._given_client
        if isinstance(given, RedisCluster):
            params = inspect.signature(RedisCluster.__init__).parameters
            conn = given.get_connection_kwargs()
            kwargs: dict[str, Any] = {
                k: v for k, v in conn.items() if k in params and k != "max_connections"
            }
            conn_class = conn.get("connection_class")
            if conn_class is not None and "SSL" in conn_class.__name__:
                kwargs["ssl"] = True
            nodes = given.get_nodes() or given.startup_nodes
            kwargs["socket_timeout"] = None
            return RedisCluster(
                startup_nodes=[ClusterNode(n.host, n.port) for n in nodes], **kwargs
            )
        pool = given.connection_pool
        kwargs = dict(pool.connection_kwargs)
        kwargs.pop("socket_timeout", None)
        kwargs.update(extra)
        if isinstance(pool, SentinelConnectionPool):
            kwargs.pop("connection_pool", None)
            kwargs.pop("connection_class", None)
            kwargs.pop("is_master", None)
            return pool.sentinel_manager.master_for(pool.service_name, **kwargs)
        pool_cls = type(pool)
        new_pool = pool_cls(connection_class=pool.connection_class, **kwargs)
        return aioredis.Redis(connection_pool=new_pool)

    def owns(self, client: Any) -> bool:
        return client is not self._given_client
