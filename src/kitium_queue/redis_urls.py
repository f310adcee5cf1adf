"""The addresses of the ``redis=`` option: ``host:port`` items and the multi-host URLs of
Redis Cluster and Sentinel (``redis+cluster://``, ``redis+sentinel://``), parsed without
ever quoting a password in an error."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, unquote

from .errors import ConfigurationError
from .redact import check_delimited

__all__ = ["QUERY_TYPES", "host_port", "parse_multi_host_url"]

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


def host_port(item: Any, default_port: int, what: str) -> tuple[str, int]:
    """``(host, port)`` of ``item``: a ``(host, port)`` pair or ``"host[:port]"``
    (``[v6]:port`` too); ``default_port`` when it names none."""
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
            f"{scheme}://[user:password@]host:port[,host:port...]"
        )
    if not nodes:
        raise ConfigurationError(f"{scheme}:// URL needs at least one host:port")
    for name, value in parse_qsl(query):
        cast = QUERY_TYPES.get(name)
        if cast is None:
            raise ConfigurationError(
                f"unknown option {name!r} in {scheme}:// URL; valid: {sorted(QUERY_TYPES)}"
            )
        try:
            kwargs[name] = cast(value)
        except ValueError:
            raise ConfigurationError(f"option {name}={value!r} must be {cast.__name__}") from None
    return scheme, nodes, [unquote(p) for p in path.split("/") if p], kwargs
