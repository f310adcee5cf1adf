"""Serving until stopped: what ``run_worker()`` and the CLI's long-running commands do
while their work runs elsewhere (SIGTERM and SIGINT ask for a graceful stop)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

__all__ = ["serve_until_stopped"]


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
