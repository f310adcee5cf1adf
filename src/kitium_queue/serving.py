"""Serving until stopped: what ``run_worker()`` and the CLI's long-running commands do
while their work runs elsewhere (SIGTERM and SIGINT ask for a graceful stop, a second
one forces it; the handlers the process had are chained and put back)."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from .errors import ConfigurationError
from .lifecycle import force_stops
from .limits import get_logger, printable

__all__ = ["listen_error", "listen_socket", "serve_until_stopped"]

log = get_logger("kitium_queue.worker")


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
    stopped: asyncio.Event | Callable[[], asyncio.Event],
    close: Callable[[], Awaitable[None]],
    *,
    install_signal_handlers: bool = True,
    start: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Await ``start()`` (when given), then wait for ``stopped`` (an event, or a function
    giving it once started); SIGTERM/SIGINT call ``close()`` (a graceful stop) meanwhile,
    the start's time included: a worker claims jobs as it starts (its services start
    after its loops), and a signal then, with no handler yet, ended the process at once,
    its first jobs left leased until their leases expired. ``close()`` during the start
    stops what it starts.

    The handlers the process had are kept and put back on return (an app that embeds a
    worker keeps its own), and an app's own handler (a web server's ``signal.signal``
    handler, or one it added to this loop) is still called, once the stop has finished
    (a second signal: at once): the app shuts down too. A second SIGTERM/SIGINT during
    the stop forces it (``lifecycle.force_stops``: running jobs are handed back at once,
    unflushed outcomes no longer waited for, and the log says what is left).
    ``install_signal_handlers`` False: none of this; the caller stops the worker
    (``close()``) itself."""
    loop = asyncio.get_running_loop()
    closing: list[asyncio.Future[None]] = []

    def on_signal(sig: int, chained: Callable[[int, Any], Any] | None) -> None:
        if closing and not closing[-1].done():
            force_stops(loop, _name(sig))
            if chained is not None:
                loop.call_soon(_chain, chained, sig)
            return
        log.info("%s received: stopping gracefully (send it again to stop at once)", _name(sig))
        fut = asyncio.ensure_future(close())
        closing.append(fut)
        if chained is not None:
            # Once the stop has finished: an app's handler may end the process
            # (sys.exit), which in the middle of the stop left its jobs active.
            fut.add_done_callback(lambda _: _chain(chained, sig))

    saved: list[_Saved] = []
    if install_signal_handlers:
        for sig in (signal.SIGTERM, signal.SIGINT):
            before = _Saved(loop, sig, on_signal)
            try:
                loop.add_signal_handler(sig, on_signal, int(sig), before.chained())
            except (NotImplementedError, RuntimeError, ValueError):
                continue  # not the main thread, or no signals on this platform
            before.ours = signal.getsignal(sig)
            saved.append(before)
    try:
        if start is not None:
            await start()
        await (stopped if isinstance(stopped, asyncio.Event) else stopped()).wait()
    finally:
        for before in reversed(saved):
            before.restore()


def _name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def _chain(handler: Callable[[int, Any], Any], sig: int) -> None:
    """Call the app's own handler of ``sig`` (its errors are its own: logged)."""
    try:
        handler(sig, None)
    except Exception:
        log.exception("the application's %s handler failed", _name(sig))


def _wakes_a_loop(handler: Any) -> bool:
    """Whether ``handler`` is what an event loop installs for the handlers added to it
    (it only wakes the loop): without the loop's own entry it would swallow the signal,
    so it is not put back (where the loop hides its entries: uvloop)."""
    module = getattr(handler, "__module__", None) or ""
    return module.startswith("uvloop") or getattr(handler, "__name__", "") == "_sighandler_noop"


def _loop_handlers(loop: asyncio.AbstractEventLoop) -> dict[int, asyncio.Handle]:
    """The handlers added to ``loop`` by signal number, where the loop says (asyncio's
    Unix loops do; others: none known)."""
    handlers = getattr(loop, "_signal_handlers", None)
    return handlers if isinstance(handlers, dict) else {}


class _Saved:
    """How one signal was handled before ``serve_until_stopped`` took it over: the
    Python-level handler, and the handler added to the loop (where the loop says)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sig: signal.Signals, ours: Any) -> None:
        self.loop, self.sig, self.callback = loop, sig, ours
        self.handler = signal.getsignal(sig)
        self.handle = _loop_handlers(loop).get(sig)
        self.ours: Any = None  # the Python-level handler in force once ours was added

    def chained(self) -> Callable[[int, Any], Any] | None:
        """The app's own handler, to call as well; None for the defaults, an ignored
        signal and asyncio's own handlers (``asyncio.run``'s SIGINT handler cancels its
        main task: called, it would cut the graceful stop short)."""
        cb, args = self._app_callback()
        if cb is not None:
            return lambda _sig, _frame: cb(*args)
        h = self.handler
        if not callable(h) or h is signal.default_int_handler:
            return None
        module = getattr(getattr(h, "func", h), "__module__", None) or ""
        if module.split(".")[0] in ("asyncio", "uvloop"):
            return None
        return h

    def _app_callback(self) -> tuple[Any, tuple[Any, ...]]:
        """The callback and arguments of the handler the app had added to the loop."""
        handle = self.handle
        if handle is None or handle.cancelled():
            return None, ()
        return getattr(handle, "_callback", None), tuple(getattr(handle, "_args", ()) or ())

    def restore(self) -> None:
        """Put back what was there, unless our handler was replaced meanwhile (then the
        replacement stays)."""
        loop, sig = self.loop, self.sig
        current = _loop_handlers(loop).get(sig)
        if current is not None and getattr(current, "_callback", None) is not self.callback:
            return  # another handler was added to the loop since: it stays
        now, (cb, args) = signal.getsignal(sig), self._app_callback()
        try:
            loop.remove_signal_handler(sig)
            if now is not self.ours:
                signal.signal(sig, now)  # a Python-level handler set since: it stays
            elif cb is not None:
                loop.add_signal_handler(sig, cb, *args)
            elif self.handler is not None and not _wakes_a_loop(self.handler):
                signal.signal(sig, self.handler)
        except (NotImplementedError, RuntimeError, ValueError, OSError, TypeError):
            log.warning("could not put back the previous %s handler", _name(sig))
