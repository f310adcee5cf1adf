"""Serving until stopped: what ``run_worker()`` and the CLI's long-running commands do
while their work runs elsewhere (SIGTERM and SIGINT ask for a graceful stop)."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Awaitable, Callable

from .errors import ConfigurationError
from .limits import printable

__all__ = ["listen_error", "listen_socket", "serve_until_stopped"]


def listen_error(exc: OSError, host: str, port: int) -> ConfigurationError:
    """The error for a server that cannot listen on ``host:port`` (port in use, an
    address this machine does not have, a host name that does not resolve): says which
    and what to change, rather than letting the socket's error pass for a Redis one."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    return ConfigurationError(
        f"cannot listen on {printable(host)}:{port} ({printable(reason)}); choose another "
        "--port (0 picks a free one) or a --host address of this machine"
    )


def listen_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` and listening, for a server to take over
    (``uvicorn.Server.serve(sockets=...)``); ``listen_error`` when that fails."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise listen_error(exc, host, port) from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise listen_error(exc, host, port) from None
    return sock


async def serve_until_stopped(
    stopped: asyncio.Event,
    close: Callable[[], Awaitable[None]],
    *,
    install_signal_handlers: bool = True,
) -> None:
    """Wait for ``stopped``; SIGTERM/SIGINT call ``close()`` (a graceful stop) meanwhile."""
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    if install_signal_handlers:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, lambda: asyncio.ensure_future(close()))
                installed.append(sig)
            except (NotImplementedError, RuntimeError):
                pass
    try:
        await stopped.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
