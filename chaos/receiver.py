"""A small HTTP/1.1 webhook receiver on loopback (webhook tests, chaos scenario, bench).

``Receiver(status=...)`` answers every POST with ``status(request) -> int`` (default
200), keeps the connections alive, and records each request's headers and body.
``stop()`` closes the listening socket and every connection (a dead endpoint: connection
refused); ``start()`` again binds the same port (it comes back).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson

__all__ = ["Receiver", "Request"]


@dataclass
class Request:
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def id(self) -> str:
        return self.headers.get("webhook-id", "")

    def json(self) -> dict:
        return orjson.loads(self.body)


@dataclass
class Receiver:
    status: Callable[[Request], int] = lambda r: 200
    host: str = "127.0.0.1"
    port: int = 0
    requests: list[Request] = field(default_factory=list)
    _server: asyncio.AbstractServer | None = None
    _conns: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/hook"

    async def start(self) -> Receiver:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in list(self._conns):
                w.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    def ok(self) -> list[Request]:
        return [r for r in self.requests if 200 <= r.status < 300]

    def ids(self, ok_only: bool = True) -> Counter[str]:
        return Counter(r.id for r in (self.ok() if ok_only else self.requests))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                req = Request(headers, body, 0)
                req.status = self.status(req)
                self.requests.append(req)
                writer.write(f"HTTP/1.1 {req.status} X\r\ncontent-length: 2\r\n"
                             "content-type: text/plain\r\n\r\nok".encode())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self._conns.discard(writer)
            writer.close()
