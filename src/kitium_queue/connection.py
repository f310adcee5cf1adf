"""Builds Redis clients from the ``redis=`` option (URL, dict, or client): a single
server, Redis Cluster, or a primary found through Sentinel."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import parse_url
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.exceptions import ClusterDownError, ReadOnlyError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .authrefused import SentinelPool
from .clusterconn import UNREACHABLE, ClusterClient
from .connerrors import bound_replies, connection_options, refused, translate_error
from .errors import ConfigurationError, KitiumQueueError
from .memorystore import memory_server
from .pools import ConnectFailedError, check_pool
from .redact import (
    REDACTED,
    REDACTED_PLACEHOLDER,
    check_delimited,
    client_secrets,
    mapping_secrets,
    misplaced_secrets,
    redact_url,
    url_secrets,
)
from .redis_urls import (
    NO_PASSWORD,
    host_port,
    no_retry,
    option_problem,
    parse_multi_host_url,
    ready_check_and_retry,
    sentinel_only,
    ssl_without_tls,
    url_problem,
)

__all__ = ["REDACTED", "REDACTED_PLACEHOLDER", "TRANSIENT_ERRORS", "ConnectionFactory"]
__all__ += ["outage", "redact_url"]

#: Errors after which a command may succeed if retried a moment later: the server is
#: unreachable (on a Cluster: no node answers), or a Cluster/Sentinel failover is under
#: way (CLUSTERDOWN, TRYAGAIN, a demoted primary answering READONLY). Worker loops keep
#: what they hold and retry.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    asyncio.TimeoutError,  # not an OSError before Python 3.11
    ClusterDownError,
    TryAgainError,
    ReadOnlyError,
    *UNREACHABLE,  # no node of a Cluster answers (clusterconn.py)
)


def outage(exc: BaseException) -> bool:
    """Whether ``exc`` is one of ``TRANSIENT_ERRORS`` and no refusal for lack of
    permission (``connerrors.refused``: an ``OSError`` too, but Redis answered)."""
    return isinstance(exc, TRANSIENT_ERRORS) and not refused(exc)


#: Connections per node of a Cluster client built here, unless ``max_connections`` is
#: given (redis-py's Cluster client raises rather than waits once they are all in use).
CLUSTER_MAX_CONNECTIONS = 2**31

_DICT_KEYS = {
    "host",
    "port",
    "username",
    "password",
    "db",
    "tls",
    "ssl",
    "url",
    "socket_timeout",
    "socket_connect_timeout",
    "max_connections",
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_cert_reqs",
    "client_name",
    "health_check_interval",
    "retry_strategy",
    "enable_ready_check",
    "unix_socket_path",
    "protocol",
    # Redis Cluster
    "cluster",
    "startup_nodes",
    # Sentinel
    "sentinels",
    "service_name",
    "sentinel_username",
    "sentinel_password",
}
_SENTINEL_ONLY = ("service_name", "sentinel_username", "sentinel_password")


def _settings_problem(opts: Mapping[str, Any]) -> str:
    """What Redis or redis-py would refuse only at the first connection, said now ("" if
    nothing): a client name Redis will not take, a protocol other than 2 or 3, a port,
    database, timeout or pool size out of range (``option_problem``)."""
    name = opts.get("client_name")
    if name is not None and (not isinstance(name, str) or any(not "!" <= c <= "~" for c in name)):
        return (
            "client_name may hold only visible ASCII characters, no spaces (Redis refuses others)"
        )
    if opts.get("protocol") is not None and str(opts["protocol"]) not in ("2", "3"):
        return "use protocol=2 or protocol=3 (or leave it out)"
    return option_problem(opts)


def _check_settings(opts: Mapping[str, Any]) -> None:
    problem = _settings_problem(opts)
    if problem:
        raise ConfigurationError(f"invalid redis connection setting: {problem}")


def _wording_options(url: str | None, kwargs: Mapping[str, Any], mode: str) -> dict[str, Any]:
    """``connection_options`` to word an error with, saying whether a setting of one
    server, a Cluster or Sentinel's data nodes (``mode``; not a client given) gives no
    password (redis-py then sends no AUTH): the value names the URL form that gives one."""
    opts = connection_options(url, kwargs)
    if mode in ("standalone", "cluster", "sentinel") and not (
        opts.get("password") or opts.get("credential_provider")
    ):
        opts[NO_PASSWORD] = mode
    return opts


def _tls_options() -> set[str]:
    """The ``ssl_*`` keyword arguments this redis-py version accepts."""
    params = inspect.signature(aioredis.Redis.__init__).parameters
    return {p for p in params if p.startswith("ssl_")}


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
      ``enable_ready_check=True`` is accepted (the queue always checks that the server
      answers before use); ``retry_strategy`` is refused (reconnecting is built in);
      ``{"cluster": True, "startup_nodes": ["h:p", ...]}`` for Cluster,
      ``{"sentinels": ["h:p", ...], "service_name": "mymaster"}`` for Sentinel.
    * a ready client: ``redis.asyncio.Redis`` (a Sentinel ``master_for`` client too) or
      ``redis.asyncio.RedisCluster``; blocking clients copy its connection settings.
      A plain ``ConnectionPool`` of it (a Sentinel one too) gets what the queue's own
      pools add (``pools.check_pool``: waiting for a free connection, reconnecting one
      the server closed), for every use of the client.
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
            self._secrets = url_secrets(redis)
            # URL schemes are case-insensitive (RFC 3986), as redis-py treats them.
            scheme = redis.split("://", 1)[0].lower() if "://" in redis else ""
            if scheme == "memory":
                self.memory_name = redis[len("memory://") :] or "default"
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
            self._secrets = mapping_secrets(redis)
            self._from_dict(redis)
        elif isinstance(redis, (aioredis.Redis, RedisCluster)) or hasattr(redis, "execute_command"):
            self._given_client = bound_replies(redis)  # as the clients built here
            self._secrets = client_secrets(redis)
            check_pool(getattr(redis, "connection_pool", None))
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
        check_delimited(url)
        hidden = self._secrets | misplaced_secrets(url)
        try:
            problem = _settings_problem(parse_url(url)) or url_problem(url)
            host = urlsplit(url).hostname if url[:7].lower() == "unix://" else None
            if host and not problem:  # unix://tmp/r.sock: "tmp" would be dropped silently
                problem = (
                    f"a unix:// URL takes no host ({host!r}): write the socket's absolute "
                    "path after three slashes, e.g. unix:///var/run/redis.sock"
                )
        except Exception as exc:
            problem = redact_url(exc, hidden) or type(exc).__name__
        if problem:
            # Raised outside the ``except``: the parser's exception (which may quote the
            # password) must not ride along as ``__context__`` to error trackers.
            raise ConfigurationError(f"invalid redis URL {redact_url(url, hidden)!r}: {problem}")
        return url

    def _from_cluster_url(self, url: str) -> None:
        scheme, nodes, path, kwargs = parse_multi_host_url(url)
        _check_settings(kwargs)
        if path not in ([], ["0"]):
            raise ConfigurationError(
                f"Redis Cluster has only database 0; drop '/{'/'.join(path)}' from "
                f"{redact_url(url, self._secrets)!r}"
            )
        self.mode = "cluster"
        self._nodes = nodes
        self._kwargs = kwargs
        if scheme.startswith("rediss"):
            self._kwargs["ssl"] = True

    def _from_sentinel_url(self, url: str) -> None:
        scheme, nodes, path, kwargs = parse_multi_host_url(url)
        _check_settings(kwargs)
        if not path or len(path) > 2:
            raise ConfigurationError(
                f"sentinel URL {redact_url(url, self._secrets)!r} needs the service name: "
                "redis+sentinel://host:port[,host:port]/service_name[/db]"
            )
        self.mode = "sentinel"
        self._nodes = nodes
        self._service = path[0]
        if len(path) == 2:
            if not (path[1].isascii() and path[1].isdigit()):
                raise ConfigurationError(
                    f"invalid database {path[1]!r} in {redact_url(url, self._secrets)!r}: "
                    "use a database number, 0 or more"
                )
            kwargs["db"] = int(path[1])
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
        _check_settings(opts)
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
            _check_settings(opts)  # the values the tls dict set (cert_reqs)
        elif isinstance(tls, bool):
            use_tls = tls  # tls=True: system CAs; tls=False: plain text
        elif tls is not None:  # bool("false") is True: a str is never guessed at
            raise ConfigurationError(
                f"redis option tls must be True, False or a dict of TLS options, got "
                f"{type(tls).__name__}"
            )
        if use_tls:
            if self._url is None:
                opts["ssl"] = True
            elif not self._url.lower().startswith("rediss://"):
                raise ConfigurationError(
                    "tls options given with a non-TLS url: use a rediss:// url"
                )  # with a rediss:// url the scheme selects TLS; the options configure it
        problem = ssl_without_tls(opts, use_tls or str(self._url).lower().startswith("rediss:"))
        if problem:
            raise ConfigurationError(problem)
        ready_check_and_retry(opts)
        cluster = opts.pop("cluster", False)
        startup = opts.pop("startup_nodes", None)
        sentinels = opts.pop("sentinels", None)
        if startup is not None and (
            isinstance(startup, (str, bytes)) or not isinstance(startup, Sequence)
        ):
            raise ConfigurationError("startup_nodes must be a list of 'host:port' or (host, port)")
        if startup is not None and not startup and "host" not in opts:
            raise ConfigurationError(
                "startup_nodes is empty: give at least one node of the cluster, e.g. "
                "startup_nodes=['10.0.0.1:7000']"
            )
        if cluster or startup:
            if sentinels:
                raise ConfigurationError("choose either cluster or sentinels, not both")
            sentinel_only(opts, _SENTINEL_ONLY)
            if opts.get("db"):
                raise ConfigurationError("Redis Cluster has only database 0")
            opts.pop("db", None)
            nodes = list(startup or [])
            if "host" in opts or not nodes:
                nodes.append((opts.pop("host", "localhost"), opts.pop("port", 6379)))
            self.mode = "cluster"
            self._nodes = [host_port(n, 6379, "cluster node") for n in nodes]
        elif sentinels is not None:
            if isinstance(sentinels, (str, bytes)) or not isinstance(sentinels, Sequence):
                raise ConfigurationError("sentinels must be a list of 'host:port' or (host, port)")
            if not sentinels:
                raise ConfigurationError(
                    "sentinels is empty: give at least one sentinel, e.g. "
                    "sentinels=['10.0.0.1:26379']"
                )
            service = opts.pop("service_name", None)
            if not service:
                raise ConfigurationError("sentinels=... needs service_name (e.g. 'mymaster')")
            self.mode = "sentinel"
            self._service = str(service)
            self._nodes = [host_port(n, 26379, "sentinel") for n in sentinels]
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
        db = "" if self._kwargs.get("db") is None else str(self._kwargs["db"])  # dict forms
        if "unix_socket_path" in self._kwargs:
            return f"unix:{self._kwargs['unix_socket_path']}" + (db and f"?db={db}")
        host, port = self._kwargs.get("host", "localhost"), self._kwargs.get("port", 6379)
        return f"{host}:{port}" + (db and f"/{db}")

    def redact(self, text: object) -> str:
        """``text`` (an error message, a URL) without the credentials of this setting:
        ``redact_url`` plus the passwords this factory was given, wherever they occur.
        Use it for every message that may quote the connection or a client's error."""
        return redact_url(text, self._secrets)

    def answer_timeout_s(self, default: float) -> float:
        """How long to wait for a server's first answer: the ``socket_timeout`` of this
        setting when one is given and shorter than ``default``, else ``default``."""
        given: Any = self._kwargs.get("socket_timeout")
        if given is None and self._url:
            given = parse_url(self._url).get("socket_timeout")
        if isinstance(given, (int, float)) and 0 < given < default:
            return float(given)
        return default

    # ------------------------------------------------------------------ clients
    def client(self, *, blocking: bool = False) -> Any:
        """A new client. ``blocking=True`` gives one meant for blocking commands."""
        if self.memory_name is not None:
            from fakeredis import aioredis as fake

            memory = fake.FakeRedis(server=memory_server(self.memory_name))
            check_pool(memory.connection_pool, in_memory=True)
            return memory
        extra: dict[str, Any] = {}
        if blocking:
            extra["socket_timeout"] = None
            extra["max_connections"] = 2
        if self._given_client is not None:
            if not blocking:
                return self._given_client
            return self._blocking_from_given(extra)
        # No socket_timeout by default (a timer task per command in redis-py, and a
        # blocking BZPOPMIN must wait): each reply gets a deadline of its own instead,
        # beyond the wait a blocking command asks for (connerrors.bound_replies).
        defaults: dict[str, Any] = {
            "socket_connect_timeout": 5,
            "socket_timeout": None,
            "health_check_interval": 30,
        }
        if self.mode == "cluster":
            extra.pop("max_connections", None)
            # Per node. redis-py's Cluster client cannot wait for a free connection: at
            # its default of 100 the 101st concurrent call raised MaxConnectionsError.
            # Unbounded unless the setting says otherwise, as redis-py was before 6.0.
            defaults["max_connections"] = CLUSTER_MAX_CONNECTIONS
            where = f"Redis {self.describe()}"
            cluster = ClusterClient.at(self._nodes, where, **{**defaults, **self._kwargs, **extra})
            return bound_replies(cluster)
        if self.mode == "sentinel":
            return self._sentinel_master({**defaults, **self._kwargs, **extra})
        if self._url:
            client = aioredis.Redis.from_url(self._url, **{**defaults, **self._kwargs, **extra})
        else:
            client = aioredis.Redis(**{**defaults, "retry": no_retry(), **self._kwargs, **extra})
        check_pool(client.connection_pool)
        return bound_replies(client)

    def sync_pool(self, *, reply_timeout_s: float) -> Any:
        """A blocking ``redis.ConnectionPool`` to the same server as ``client()``, for
        script calls made outside the event loop (``SyncJobQueue.add_job``), or None
        where the clients are not plain connections to one server (memory://, Cluster,
        Sentinel, a client passed in): those callers use the asyncio client instead.

        ``reply_timeout_s`` bounds each socket read and write (redis-py's
        ``socket_timeout``). Replies are not decoded (the scripts' callers read bytes).
        """
        if self.mode != "standalone" or self.memory_name is not None:
            return None
        import redis as sync_redis

        opts: dict[str, Any] = {
            "socket_connect_timeout": 5,
            "health_check_interval": 30,
            **self._kwargs,
            "socket_timeout": reply_timeout_s,
            "decode_responses": False,
        }
        try:
            if self._url:
                pool = sync_redis.ConnectionPool.from_url(self._url, **opts)
            else:
                pool = sync_redis.Redis(**{"retry": no_retry(sync=True), **opts}).connection_pool
        except TypeError:  # an option only the asyncio client takes
            return None
        check_pool(pool)  # its connections take a MISCONF refusal of PING as an answer
        return pool

    def _sentinel_master(self, kwargs: dict[str, Any]) -> Any:
        sentinel_kwargs: dict[str, Any] = {
            k: kwargs[k] for k in ("socket_connect_timeout", "ssl") if k in kwargs
        }
        sentinel_kwargs["socket_timeout"] = kwargs.get("socket_connect_timeout") or 5
        for k in ("sentinel_username", "sentinel_password"):
            if k in kwargs:
                sentinel_kwargs[k[len("sentinel_") :]] = kwargs.pop(k)
        kwargs.pop("service_name", None)
        sentinel = Sentinel(  # type: ignore[no-untyped-call,unused-ignore]
            self._nodes, sentinel_kwargs=sentinel_kwargs
        )
        master = sentinel.master_for(
            self._service,
            redis_class=_SentinelMaster,
            connection_pool_class=SentinelPool,
            **kwargs,
        )
        master.kq_sentinel = sentinel
        check_pool(master.connection_pool)
        return bound_replies(master)

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
            where, seeds = f"Redis {self.describe()}", [(n.host, n.port) for n in nodes]
            return bound_replies(ClusterClient.at(seeds, where, **kwargs))
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

    # ------------------------------------------------------------------ errors
    def error(
        self, exc: BaseException, queue: str, *, timeout_s: float | None = None
    ) -> KitiumQueueError | None:
        """The library's error for ``exc``, raised by redis-py (or the socket) while
        connecting to Redis or talking to it on behalf of ``queue``, or None when ``exc``
        is not a connection problem (the caller re-raises it as it is).

        The one place where connection errors are translated: each message says where
        (``describe()``, credentials redacted), what happened and what to check.
        ``ConfigurationError`` when the setting itself is wrong (a database number the
        server does not have, a cluster URL for a server that is not a cluster),
        ``ConnectionUnavailableError`` otherwise. ``timeout_s``: the deadline a bare
        ``asyncio.TimeoutError`` stands for, if the caller set one.
        """
        opening = isinstance(exc, ConnectFailedError) and exc.__cause__ is not None
        exc = (exc.__cause__ or exc) if opening else exc  # reworded with the queue's name
        mode = "client" if self._given_client is not None else self.mode
        opts = _wording_options(self._url, self._kwargs, mode)
        return translate_error(
            self.describe(), self.redact(exc), exc, queue, timeout_s, opts, opening=opening
        )
