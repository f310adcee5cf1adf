"""How a connection error becomes the library's error: ``ConnectionFactory.error``.

Each message says where (the connection's description, credentials redacted), what
happened and what to check; a wrong setting is a ``ConfigurationError``, anything else
a ``ConnectionUnavailableError``.
"""

from __future__ import annotations

from redis.asyncio.sentinel import MasterNotFoundError
from redis.exceptions import (
    AuthenticationError,
    InvalidResponse,
    MaxConnectionsError,
    RedisClusterException,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .errors import ConfigurationError, ConnectionUnavailableError, KitiumQueueError

__all__ = ["translate_error"]


def translate_error(
    describe: str,
    redacted: str,
    exc: BaseException,
    queue: str,
    timeout_s: float | None = None,
) -> KitiumQueueError | None:
    """The library's error for ``exc`` (see ``ConnectionFactory.error``): ``describe``
    is where the connection goes and ``redacted`` the text of ``exc``, both without
    credentials; None when ``exc`` is not a connection problem."""
    where = f"Redis at {describe}"
    cause = _sentence(redacted) or type(exc).__name__
    if isinstance(exc, AuthenticationError):
        return ConnectionUnavailableError(
            f"{where} refused the credentials of queue {queue!r} ({cause}); check the "
            "username and password given in redis="
        )
    if isinstance(exc, InvalidResponse):
        return ConnectionUnavailableError(
            f"{where} does not speak the Redis protocol (queue {queue!r}: {cause}); an "
            "HTTP or other server may be listening there: check the host and port in "
            "redis=, and rediss:// if the server expects TLS"
        )
    if isinstance(exc, ResponseError) and "db index is out of range" in cause.lower():
        return ConfigurationError(
            f"{where} has no such database (queue {queue!r}: {cause}); a server has "
            "databases 0..15 unless its 'databases' setting says otherwise: use a "
            "database number within that range in redis= (redis://host:port/<db> or "
            "db=...)"
        )
    if isinstance(exc, MasterNotFoundError):
        # Its text lists every Sentinel client's repr: say it in one sentence instead.
        return ConnectionUnavailableError(
            f"no Sentinel of {describe} named a primary for queue {queue!r} "
            "(none answered, or none monitors that service name); check the sentinel "
            "addresses and the service name in redis=, and that the sentinels run"
        )
    if isinstance(exc, RedisClusterException):
        if "cluster mode is not enabled" in cause.lower():
            return ConfigurationError(
                f"{where} is not a Redis Cluster (queue {queue!r}: {cause}); for a "
                "single server use a redis:// URL instead of redis+cluster://"
            )
        return ConnectionUnavailableError(
            f"cannot reach any node of the Redis {describe} (queue {queue!r}: "
            f"{cause}); check the "
            "node addresses in redis= and that the cluster is running"
        )
    if isinstance(exc, (RedisTimeoutError, TimeoutError)) and "connecting" in cause:
        return ConnectionUnavailableError(
            f"{where} did not accept the connection in time (queue {queue!r}: "
            f"{cause}); check the host and port in redis=, a firewall that drops "
            "packets, and socket_connect_timeout"
        )
    if isinstance(exc, (RedisTimeoutError, TimeoutError)):
        within = f" within {timeout_s:g} s" if timeout_s and cause == "TimeoutError" else ""
        return ConnectionUnavailableError(
            f"{where} accepted the connection but did not answer{within} (queue "
            f"{queue!r}: {cause}); check the port, whether the server expects TLS "
            "(rediss://), and socket_timeout"
        )
    if isinstance(exc, MaxConnectionsError):
        return ConnectionUnavailableError(
            f"no free connection to {where} for queue {queue!r} ({cause}); every "
            "connection of the pool was in use: raise max_connections in redis= or run "
            "fewer calls at once"
        )
    if isinstance(exc, (RedisConnectionError, OSError)):
        return ConnectionUnavailableError(
            f"cannot reach {where} for queue {queue!r} ({cause}); check the redis= "
            "setting and that the server is running"
        )
    return None


def _sentence(text: str) -> str:
    """An error's text for use inside a sentence: without the final period or spaces
    (redis-py's messages end with one, which would double the period that follows)."""
    return text.strip().rstrip(".").strip()
