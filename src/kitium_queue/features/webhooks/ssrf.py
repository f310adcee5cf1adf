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
import concurrent.futures
import functools
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ...errors import ConfigurationError, KitiumQueueError, install_hint

if TYPE_CHECKING:
    from .transport import GuardedBackend, GuardedTransport

__all__ = [
    "UNRESOLVED",
    "AddressPolicy",
    "BlockedAddressError",
    "GuardedBackend",
    "GuardedTransport",
    "Resolver",
    "literal_address",
    "require_httpx",
    "system_resolver",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: ``async resolver(host, port) -> addresses``.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
#: Not public, yet not private, reserved or non-global for every Python ``ipaddress``:
#: IPv6 site-local (deprecated, still routed inside some networks) and the IPv6
#: documentation range of RFC 9637.
_ALSO_REFUSED = (ipaddress.ip_network("fec0::/10"), ipaddress.ip_network("3fff::/20"))
#: How the error of a host name that did not resolve starts (a text of this module's
#: own, naming the host only: the sender shows it as it is).
UNRESOLVED = "webhook host"


def literal_address(host: str) -> str | None:
    """The IP address ``host`` (a URL's host) is, in any spelling the system resolver
    reads as one (``127.1``, ``2130706433``, ``0x7f.0.0.1``, full-width dots), or None
    for a name. No lookup: a name's addresses are judged at each connection."""
    bare = host.strip("[]").split("%", 1)[0]
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        pass
    try:
        ascii_host = bare.encode("idna").decode("ascii").removesuffix(".")
        if not ascii_host or not all(c.isalnum() or c == "." for c in ascii_host):
            return None
        return socket.inet_ntoa(socket.inet_aton(ascii_host))
    except (UnicodeError, OSError):
        return None


class BlockedAddressError(KitiumQueueError, ConnectionError):
    """A webhook target resolved to an address the SSRF guard refuses."""


def require_httpx() -> None:
    """Raise a clear error when httpx (the ``webhooks`` extra) is missing."""
    try:
        import httpcore  # noqa: F401
        import httpx  # noqa: F401
    except ImportError:  # pragma: no cover
        raise ConfigurationError(
            "webhook delivery needs httpx: " + install_hint("webhooks")
        ) from None


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
        if any(judged in n for n in _ALSO_REFUSED):
            return f"{ip} is a site-local or documentation address"
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


#: Threads that resolve webhook hosts (``system_resolver``). A look-up runs on a thread
#: until the system resolver gives up (seconds for a name whose DNS server does not
#: answer, whatever the request's timeout): on threads of their own, such look-ups
#: cannot take the event loop's default executor, which the process's own connections
#: (Redis by host name) and ``asyncio.to_thread`` need. Past these, look-ups wait (and
#: a request's timeout drops its look-up still waiting).
DNS_THREADS = 4
_dns_pool: concurrent.futures.ThreadPoolExecutor | None = None


def _dns_executor() -> concurrent.futures.ThreadPoolExecutor:
    global _dns_pool
    if _dns_pool is None:
        _dns_pool = concurrent.futures.ThreadPoolExecutor(
            DNS_THREADS, thread_name_prefix="kq-webhook-dns"
        )
    return _dns_pool


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses of ``host`` from the system resolver (``getaddrinfo``), looked up on
    ``DNS_THREADS`` threads of their own."""
    loop = asyncio.get_running_loop()
    infos = await loop.run_in_executor(
        _dns_executor(), functools.partial(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    )
    out: list[str] = []
    for info in infos:
        addr = str(info[4][0])
        if addr not in out:
            out.append(addr)
    return out


if not TYPE_CHECKING:  # a type checker sees the names above, and flags any other

    def __getattr__(name: str) -> Any:
        """``GuardedBackend`` and ``GuardedTransport``, from ``transport.py`` (loads httpx)."""
        if name in ("GuardedBackend", "GuardedTransport"):
            from . import transport

            return getattr(transport, name)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
