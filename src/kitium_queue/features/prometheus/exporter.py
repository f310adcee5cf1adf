"""``PrometheusExporter``: the subscriber and the collector in one registry, and a small
HTTP server for ``/metrics`` (what ``kitium-queue metrics`` runs).

The server is asyncio's own (no extra dependency): it answers ``GET /metrics`` with the
text exposition format after refreshing the collector, so the gauges are read from
Redis at scrape time on the loop that owns the queues' connections. Requests are
bounded: 8 KiB of headers (else 431), 10 s to send them and 30 s to take the answer
(else the connection is dropped with what was buffered for it), 16 connections at once
(else 503); a request line that is not HTTP/1.x is a 400, anything but ``GET`` and
``HEAD`` a 405.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from ...errors import ConfigurationError
from ...limits import get_logger
from ...serving import listen_error
from .collector import KitiumCollector
from .subscriber import DEFAULT_BUCKETS, PrometheusSubscriber

__all__ = ["MetricsServer", "PrometheusExporter"]

log = get_logger(__name__)

_MAX_HEAD = 8192
_HEAD_TIMEOUT_S = 10.0
#: Longest a client may take to receive an answer before its connection is dropped.
_WRITE_TIMEOUT_S = 30.0
#: Most connections served at once (beyond: 503 at once).
_MAX_CLIENTS = 16
#: How long a connection beyond them may take to send its request before its 503.
_SHED_READ_S = 1.0


class PrometheusExporter:
    """Prometheus metrics of ``queues``: counters and histograms from this process's
    lifecycle hooks, gauges read from Redis (names: docs/observability.md).

    Args:
        queues: the ``JobQueue`` objects (one, or several sharing the registry).
        registry: an existing ``CollectorRegistry`` to plug into (a new one when None).
        subscribe: subscribe the lifecycle subscriber on each queue (False in a process
            that only exports the gauges, such as ``kitium-queue metrics``).
        max_job_names: distinct ``job_name`` label values before ``other``.
        namespace: metric name prefix.
    """

    def __init__(
        self,
        queues: Any,
        *,
        registry: CollectorRegistry | None = None,
        subscribe: bool = True,
        max_job_names: int = 100,
        namespace: str = "kitium_queue",
        buckets: Iterable[float] = DEFAULT_BUCKETS,
    ) -> None:
        qs = [queues] if hasattr(queues, "subscribe") else queues
        # Everything is checked before anything is registered: a refused call leaves the
        # caller's registry as it was (a corrected one then registers cleanly).
        self.collector = KitiumCollector(qs, namespace=namespace)
        qs = self.collector.queues
        self.registry = registry if registry is not None else CollectorRegistry()
        self.subscriber = PrometheusSubscriber(
            self.registry,
            namespace=namespace,
            max_job_names=max_job_names,
            buckets=tuple(buckets),
        )
        try:
            self.registry.register(self.collector)
        except BaseException:
            self.registry.unregister(self.subscriber)
            raise
        self.queues = qs
        if subscribe:
            for q in qs:
                q.subscribe(self.subscriber)

    async def render(self) -> bytes:
        """The exposition text of the registry, the gauges read from Redis now."""
        await self.collector.refresh()
        return generate_latest(self.registry)

    async def serve(self, host: str = "127.0.0.1", port: int = 9464) -> MetricsServer:
        """Start serving ``http://host:port/metrics``; returns the running server
        (``port=0`` picks a free port: read ``server.port``). ``host`` is one address
        or name: ``0.0.0.0`` or ``::`` to listen beyond this host (an empty host is
        refused rather than read as every interface). ``ConfigurationError`` for a bad
        host or port."""
        host, port = check_listen(host, port)
        server = MetricsServer(self)
        try:
            await server.start(host, port)
        except OSError as exc:  # the port in use, a host this machine does not have
            raise listen_error(exc, host, port) from None
        return server


def check_listen(host: Any, port: Any) -> tuple[str, int]:
    """``(host, port)`` to listen on, checked (``ConfigurationError`` saying what is
    wrong): a non-empty host without spaces or control characters, a port 0..65535."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigurationError(
            f"port must be an int from 0 to 65535 (0: any free port), got {port!r:.40}"
        )
    if (
        not isinstance(host, str)
        or not host
        or len(host) > 255
        or any(c.isspace() or not c.isprintable() for c in host)
    ):
        raise ConfigurationError(
            "host must be one address or host name, such as 127.0.0.1 (this host only) or "
            f"0.0.0.0 / :: (every interface), got {host!r:.80}"
        )
    return host, port


class MetricsServer:
    """The HTTP server of one exporter (``PrometheusExporter.serve``)."""

    def __init__(self, exporter: PrometheusExporter) -> None:
        self.exporter = exporter
        self._server: asyncio.base_events.Server | None = None
        self.host = ""
        self.port = 0
        self._clients = 0

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._handle, host, port)
        sock = self._server.sockets[0].getsockname()
        self.host, self.port = str(sock[0]), int(sock[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def serve_forever(self) -> None:
        assert self._server is not None, "start() first"
        await self._server.serve_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients += 1
        try:
            if self._clients > _MAX_CLIENTS:
                # Read the request first (briefly): a socket closed with unread data
                # sends a reset, which can destroy the answer before the client reads it.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(_read_head(reader), _SHED_READ_S)
                await self._reply(writer, 503, b"too many scrapes at once\n", "text/plain")
                return
            head = await asyncio.wait_for(_read_head(reader), _HEAD_TIMEOUT_S)
            if head is None:
                await self._reply(writer, 431, b"request head too large\n", "text/plain")
                return
            parts = head[0].split(b" ")
            if len(parts) != 3 or not parts[0] or not parts[2].startswith(b"HTTP/1."):
                await self._reply(writer, 400, b"bad request: GET /metrics\n", "text/plain")
                return
            method, target = parts[0], parts[1]
            if target.startswith((b"http://", b"https://")):  # absolute form (RFC 9112)
                target = urlsplit(target).path or b"/"
            path = target.split(b"?", 1)[0]
            if method not in (b"GET", b"HEAD"):
                await self._reply(writer, 405, b"method not allowed\n", "text/plain")
            elif path == b"/metrics":
                body = await self.exporter.render()
                await self._reply(writer, 200, body, CONTENT_TYPE_LATEST, method == b"HEAD")
            elif path == b"/":
                await self._reply(
                    writer, 200, b"kitium-queue metrics: GET /metrics\n", "text/plain"
                )
            else:
                await self._reply(writer, 404, b"not found: GET /metrics\n", "text/plain")
        except (asyncio.IncompleteReadError, TimeoutError, asyncio.TimeoutError, ConnectionError):
            # A client that went away, or too slow to send its request or take the
            # answer: drop the connection and what was buffered for it.
            writer.transport.abort()
        except Exception:
            log.exception("metrics: serving a request failed")
            with contextlib.suppress(Exception):  # the client may be gone; logged above
                await self._reply(writer, 500, b"internal error\n", "text/plain")
        finally:
            self._clients -= 1
            writer.close()
            with contextlib.suppress(Exception):  # closing a dead socket
                await asyncio.wait_for(writer.wait_closed(), _WRITE_TIMEOUT_S)

    @staticmethod
    async def _reply(
        writer: asyncio.StreamWriter, status: int, body: bytes, ctype: str, head_only: bool = False
    ) -> None:
        writer.write(
            f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        )
        if not head_only:
            writer.write(body)
        await asyncio.wait_for(writer.drain(), _WRITE_TIMEOUT_S)


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


async def _read_head(reader: asyncio.StreamReader) -> list[bytes] | None:
    """The lines of a request head (CRLF or bare LF), without the empty line that ends
    it; None when it is larger than ``_MAX_HEAD``. ``IncompleteReadError`` when the
    client closes first."""
    lines: list[bytes] = []
    size = 0
    while True:
        try:
            line = await reader.readline()
        except ValueError:  # one line beyond the stream's own limit (64 KiB)
            return None
        if not line.endswith(b"\n"):
            raise asyncio.IncompleteReadError(line, None)
        size += len(line)
        if size > _MAX_HEAD:
            return None
        line = line.rstrip(b"\r\n")
        if line:
            lines.append(line)
        elif lines:
            return lines
