"""Builds Redis clients from the ``redis=`` option (URL, dict, or client)."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis

from .errors import ConfigurationError

__all__ = ["ConnectionFactory"]

_memory_servers: dict[str, Any] = {}
_memory_lock = threading.Lock()

_DICT_KEYS = {
    "host", "port", "username", "password", "db", "tls", "ssl", "url", "socket_timeout",
    "socket_connect_timeout", "max_connections", "ssl_ca_certs", "ssl_certfile",
    "ssl_keyfile", "ssl_cert_reqs", "client_name", "health_check_interval",
    "retry_strategy", "enable_ready_check", "unix_socket_path",
}


def _memory_server(name: str) -> Any:
    import fakeredis

    with _memory_lock:
        server = _memory_servers.get(name)
        if server is None:
            server = fakeredis.FakeServer()
            _memory_servers[name] = server
        return server


class ConnectionFactory:
    """Makes the clients a queue needs: a shared one and dedicated blocking ones.

    ``redis`` may be a URL (``redis://``, ``rediss://``, ``unix://``, ``memory://name``),
    a dict of connection options (host, port, username, password, db, tls, ...), or a
    ready ``redis.asyncio.Redis`` client (then blocking clients reuse its pool settings).
    """

    def __init__(self, redis: Any = "memory://") -> None:
        self._given_client: Any = None
        self._url: str | None = None
        self._kwargs: dict[str, Any] = {}
        self.memory_name: str | None = None
        if isinstance(redis, str):
            if redis.startswith("memory://"):
                self.memory_name = redis[len("memory://"):] or "default"
            elif redis.split("://", 1)[0] in ("redis", "rediss", "unix"):
                self._url = redis
            else:
                raise ConfigurationError(
                    f"unsupported redis URL {redis!r}: use redis://, rediss://, unix:// "
                    "or memory://"
                )
        elif isinstance(redis, Mapping):
            bad = [k for k in redis if k not in _DICT_KEYS]
            if bad:
                raise ConfigurationError(
                    f"unknown redis connection option(s) {bad}; valid: {sorted(_DICT_KEYS)}"
                )
            opts = dict(redis)
            if "url" in opts:
                self._url = opts.pop("url")
            tls = opts.pop("tls", None)
            if tls is not None or opts.pop("ssl", False):
                opts["ssl"] = True
                if isinstance(tls, Mapping):
                    for k, v in tls.items():
                        opts[k if k.startswith("ssl_") else f"ssl_{k}"] = v
            opts.pop("retry_strategy", None)  # reconnection is handled by the worker
            opts.pop("enable_ready_check", None)
            if "unix_socket_path" in opts:
                opts["path"] = opts.pop("unix_socket_path")
            self._kwargs = opts
        elif isinstance(redis, aioredis.Redis) or hasattr(redis, "execute_command"):
            self._given_client = redis
        else:
            raise ConfigurationError(
                f"redis must be a URL, a dict of connection options or a redis.asyncio "
                f"client, got {type(redis).__name__}"
            )

    @property
    def is_memory(self) -> bool:
        return self.memory_name is not None

    def describe(self) -> str:
        if self.memory_name is not None:
            return f"memory://{self.memory_name}"
        if self._url:
            return self._url.split("@")[-1]  # never show credentials
        if self._given_client is not None:
            return "<client>"
        return f"{self._kwargs.get('host', 'localhost')}:{self._kwargs.get('port', 6379)}"

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
            kwargs = dict(self._given_client.connection_pool.connection_kwargs)
            kwargs.pop("socket_timeout", None)
            kwargs.update(extra)
            pool_cls = type(self._given_client.connection_pool)
            pool = pool_cls(connection_class=self._given_client.connection_pool.connection_class,
                            **kwargs)
            return aioredis.Redis(connection_pool=pool)
        defaults: dict[str, Any] = {"socket_connect_timeout": 5, "health_check_interval": 30}
        if self._url:
            return aioredis.Redis.from_url(self._url, **{**defaults, **self._kwargs, **extra})
        return aioredis.Redis(**{**defaults, **self._kwargs, **extra})

    def owns(self, client: Any) -> bool:
        return client is not self._given_client
