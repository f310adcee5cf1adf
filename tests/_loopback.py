"""Misbehaving servers on loopback for connection-error tests.

* ``SilentServer``: accepts connections and never says a word (a stalled proxy, a TLS
  port spoken to in plain text).
* ``HttpServer``: answers anything with an HTTP 400 response, as a web server on the
  Redis port would.
* ``closed_port()``: a loopback port nothing listens on.

    with SilentServer() as srv:
        url = f"redis://127.0.0.1:{srv.port}/0?socket_timeout=0.5"
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType

from _redis import free_port

__all__ = ["HttpServer", "SilentServer", "closed_port"]

HTTP_REPLY = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/html\r\nContent-Length: 13\r\n"
    b"Connection: close\r\n\r\n<html></html>"
)


def closed_port() -> int:
    """A loopback port that is free (nothing listens) right now."""
    return free_port()


class SilentServer:
    """A listening socket on 127.0.0.1 that accepts and then says nothing (or, with
    ``reply``, sends ``reply`` once after the first bytes it receives)."""

    reply: bytes | None = None

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port: int = self._sock.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self._sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            self._conns.append(conn)
            if self.reply is not None:
                threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            conn.settimeout(5)
            if conn.recv(4096):
                conn.sendall(self.reply or b"")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for conn in [*self._conns, self._sock]:
            with contextlib.suppress(OSError):
                conn.close()

    def __enter__(self) -> SilentServer:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class HttpServer(SilentServer):
    """Answers whatever it receives with an HTTP 400 response."""

    reply = HTTP_REPLY
