"""The SSRF guard: webhook requests go only to vetted public addresses.

A webhook URL is data an application may take from its users, so a delivery must not be
a way to reach the machines around the worker. Every connection is opened by
``GuardedBackend``: it resolves the host itself, refuses the request when *any* resolved
address is not public (private, loopback, link-local — the cloud metadata service at
169.254.169.254 included —, unspecified, multicast, reserved, shared (CGNAT) or
documentation ranges; an IPv4 address inside IPv6 — mapped, 6to4, NAT64 — is judged as
the IPv4 address), and otherwise connects to one of the addresses it checked. The TLS
handshake still names the URL's host (SNI and certificate check) and the ``Host`` header
is the URL's: there is no second DNS lookup, so no window in which the name could be
rebound to another address. Networks in ``allow`` (e.g. ``127.0.0.0/8`` in tests, or a
private network the application trusts) are let through.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any

from ...errors import ConfigurationError, KitiumQueueError

try:
    import httpcore
    import httpx
except ImportError:  # pragma: no cover - the `webhooks` extra is not installed
    httpcore = None  # type: ignore[assignment]
    httpx = None  # type: ignore[assignment]

__all__ = [
    "UNRESOLVED",
    "AddressPolicy",
    "BlockedAddressError",
    "GuardedBackend",
    "GuardedTransport",
    "Resolver",
    "require_httpx",
    "system_resolver",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: ``async resolver(host, port) -> addresses``.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
#: How the error of a host name that did not resolve starts (a text of this module's
#: own, naming the host only: the sender shows it as it is).
UNRESOLVED = "webhook host"


class BlockedAddressError(KitiumQueueError, ConnectionError):
    """A webhook target resolved to an address the SSRF guard refuses."""


def require_httpx() -> None:
    """Raise a clear error when httpx (the ``webhooks`` extra) is missing."""
    if httpx is None:  # pragma: no cover
        raise ConfigurationError(
            "webhook delivery needs httpx: pip install 'kitium-job-queue[webhooks]'"
        )


def _embedded_v4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


class AddressPolicy:
    """Which addresses webhook requests may go to: public unicast ones, plus ``allow``.

    ``allow``: networks (``"10.1.0.0/16"``, ``"127.0.0.1/32"``, ``"::1/128"``) let through
    even though they are not public. Nothing else is configurable: the refusals are on
    by default and for every endpoint.
    """

    def __init__(self, allow: Iterable[str] = ()) -> None:
        nets = []
        for n in allow:
            try:
                nets.append(ipaddress.ip_network(n, strict=False))
            except ValueError:
                raise ConfigurationError(
                    f"SSRF allow-list entry {n!r} is not a network such as '10.0.0.0/8'"
                ) from None
        self.allow = tuple(nets)

    def refusal(self, address: str) -> str | None:
        """Why ``address`` is refused, or None when a request may go there."""
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return f"{address!r} is not an IP address"
        inner = _embedded_v4(ip)
        for candidate in (ip, inner):
            if candidate is not None and any(candidate in n for n in self.allow):
                return None
        judged = inner or ip
        if judged.is_loopback:
            return f"{ip} is a loopback address"
        if judged.is_link_local:
            return f"{ip} is link-local (the cloud metadata service lives there)"
        if judged.is_unspecified:
            return f"{ip} is the unspecified address"
        if judged.is_multicast:
            return f"{ip} is a multicast address"
        if judged.is_private or not judged.is_global or judged.is_reserved:
            return f"{ip} is a private or reserved address"
        return None

    def check(self, host: str, addresses: Sequence[str]) -> list[str]:
        """The addresses of ``host``, all checked; raises BlockedAddressError if any is
        refused (a name that resolves to one private address among public ones is
        refused too: its owner controls which one a client picks)."""
        if not addresses:
            raise BlockedAddressError(f"webhook host {host!r} did not resolve to any address")
        for a in addresses:
            why = self.refusal(a)
            if why:
                raise BlockedAddressError(
                    f"webhook host {host!r} refused by the SSRF guard: {why}; allow the "
                    "network explicitly (WebhookManager(..., allow_networks=[...])) if "
                    "this target is intended"
                )
        return list(addresses)


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses of ``host`` from the system resolver (``getaddrinfo``)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    out: list[str] = []
    for info in infos:
        addr = str(info[4][0])
        if addr not in out:
            out.append(addr)
    return out


class GuardedBackend(httpcore.AsyncNetworkBackend if httpcore else object):  # type: ignore[misc]
    """An httpcore network backend that resolves, vets and then connects to the vetted
    address (``inner`` does the connecting; tests pass one that fails if it is used)."""

    def __init__(
        self, policy: AddressPolicy, resolver: Resolver | None = None, inner: Any = None
    ) -> None:
        require_httpx()
        self.policy = policy
        self.resolver = resolver or system_resolver
        self.inner = inner if inner is not None else httpcore.AnyIOBackend()

    async def vet(self, host: str, port: int) -> list[str]:
        """Resolve ``host`` (an IP literal is its own address) and check every address."""
        bare = host.strip("[]")
        try:
            ipaddress.ip_address(bare.split("%", 1)[0])
            addresses: Sequence[str] = [bare]
        except ValueError:
            try:
                addresses = await self.resolver(bare, port)
            except OSError as exc:
                # A failed lookup may pass (a DNS outage, a name not yet published): a
                # connection failure, retried like one, not a refusal.
                raise httpcore.ConnectError(
                    f"{UNRESOLVED} {host!r} did not resolve: {exc}"
                ) from None
        return self.policy.check(host, addresses)

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> Any:
        last: Exception | None = None
        for address in await self.vet(host, port):
            try:
                return await self.inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except Exception as exc:  # try the next vetted address
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> Any:
        raise BlockedAddressError("webhooks are never delivered over a unix socket")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def _mapped(exc: Exception) -> Exception:
    """httpx's exception for an httpcore one (same class names), else ``exc``."""
    if httpcore is not None and isinstance(exc, httpcore.TimeoutException):
        return getattr(httpx, type(exc).__name__, httpx.TimeoutException)(str(exc))
    if httpcore is not None and isinstance(
        exc, (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol)
    ):
        return getattr(httpx, type(exc).__name__, httpx.TransportError)(str(exc))
    return exc


class _Body(httpx.AsyncByteStream if httpx else object):  # type: ignore[misc]
    def __init__(self, stream: Any) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for part in self._stream:
                yield part
        except Exception as exc:
            mapped = _mapped(exc)
            if mapped is exc:
                raise
            raise mapped from exc

    async def aclose(self) -> None:
        if hasattr(self._stream, "aclose"):
            await self._stream.aclose()


class GuardedTransport(httpx.AsyncBaseTransport if httpx else object):  # type: ignore[misc]
    """An httpx transport over a pooled httpcore connection pool whose every connection
    goes through ``GuardedBackend`` (see the module docstring)."""

    def __init__(
        self,
        policy: AddressPolicy,
        *,
        resolver: Resolver | None = None,
        inner: Any = None,
        max_connections: int = 100,
        keepalive: int = 20,
        keepalive_expiry_s: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        require_httpx()
        self.backend = GuardedBackend(policy, resolver, inner)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context or ssl.create_default_context(),
            max_connections=max_connections,
            max_keepalive_connections=max(keepalive, max_connections),
            keepalive_expiry=keepalive_expiry_s,
            network_backend=self.backend,
        )

    async def handle_async_request(self, request: Any) -> Any:
        url = request.url
        req = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        try:
            resp = await self._pool.handle_async_request(req)
        except Exception as exc:
            mapped = _mapped(exc)
            if mapped is exc:
                raise
            raise mapped from exc
        return httpx.Response(
            status_code=resp.status,
            headers=resp.headers,
            stream=_Body(resp.stream),
            extensions=resp.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()
