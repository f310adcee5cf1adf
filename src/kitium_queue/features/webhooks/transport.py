"""The SSRF guard's connections (``ssrf.py`` says what it refuses): ``GuardedBackend``
resolves, vets and connects to a vetted address; ``GuardedTransport`` is the httpx
transport over a pool of such connections. Apart from ``ssrf.py`` so that the webhooks
feature loads httpx only when it sends.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from collections.abc import AsyncIterator, Sequence
from typing import Any

from .ssrf import (
    UNRESOLVED,
    AddressPolicy,
    BlockedAddressError,
    Resolver,
    require_httpx,
    system_resolver,
)

try:
    import httpcore
    import httpx
except ImportError:  # pragma: no cover - the `webhooks` extra is not installed
    httpcore = None  # type: ignore[assignment]
    httpx = None  # type: ignore[assignment]

__all__ = ["GuardedBackend", "GuardedTransport"]


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
