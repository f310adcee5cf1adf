"""The ``/metrics`` HTTP server under malformed and hostile requests (a review's
findings, each reproduced before it was fixed), over real sockets on loopback against a
queue on a real Redis: every malformed request gets its status (400, 405, 431), the
absolute form and bare-LF heads are served, a client that does not read its answer is
dropped after the write deadline with what was buffered for it, and connections beyond
the limit get 503 instead of queuing memory."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

import kitium_queue.features.prometheus.exporter as exporter_mod
from helpers import QueueFactory
from kitium_queue.features.prometheus import PrometheusExporter
from kitium_queue.features.prometheus.exporter import MetricsServer


@pytest.fixture
async def server(redis_url: str, prefix: str) -> AsyncIterator[MetricsServer]:
    factory = QueueFactory(redis_url, prefix)
    q = factory("metrics")
    await q.add_job("t")
    srv = await PrometheusExporter(q, subscribe=False).serve(port=0)
    yield srv
    await srv.close()
    await factory.aclose()


async def _ask(srv: MetricsServer, raw: bytes) -> bytes:
    """Send ``raw`` and read the whole answer (the server closes after one)."""
    reader, writer = await asyncio.open_connection(srv.host, srv.port)
    writer.write(raw)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), 15)
    finally:
        writer.close()


@pytest.mark.parametrize(
    "raw, status",
    [
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", b"200"),
        (b"HEAD /metrics HTTP/1.1\r\n\r\n", b"200"),
        (b"GET http://x:1/metrics?a=b HTTP/1.1\r\nHost: x\r\n\r\n", b"200"),  # absolute
        (b"GET /metrics HTTP/1.1\nHost: x\n\n", b"200"),  # bare LF
        (b"\r\nGET /metrics HTTP/1.1\r\n\r\n", b"200"),  # a leading empty line
        (b"GET /metrics\r\n\r\n", b"400"),
        (b"GET  /metrics HTTP/1.1\r\n\r\n", b"400"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", b"400"),  # TLS hello
        (b"GET /metrics SPDY/3\r\n\r\n", b"400"),
        (b"POST /metrics HTTP/1.1\r\n\r\n", b"405"),
        (b"GET /nope HTTP/1.1\r\n\r\n", b"404"),
        (b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", b"431"),
        (b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", b"431"),
        (b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * 2000 + b"\r\n", b"431"),
    ],
)
async def test_every_request_gets_its_status(
    server: MetricsServer, raw: bytes, status: bytes
) -> None:
    answer = await _ask(server, raw)
    assert answer.split(b" ", 2)[1] == status, answer[:200]
    if status == b"200" and not raw.startswith(b"HEAD"):
        assert b"kitium_queue_jobs" in answer


async def test_a_client_that_does_not_read_is_dropped_after_the_deadline(
    server: MetricsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body larger than the socket buffers and a client that never reads: the handler
    must not wait on it for ever."""
    monkeypatch.setattr(exporter_mod, "_WRITE_TIMEOUT_S", 0.5)
    big = b"x" * 20_000_000

    async def render() -> bytes:
        return big

    monkeypatch.setattr(server.exporter, "render", render)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((server.host, server.port))
    sock.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
    try:
        for _ in range(400):  # the handler ends once its write deadline passed
            await asyncio.sleep(0.025)
            if server._clients == 0:
                break
        assert server._clients == 0
    finally:
        sock.close()


async def test_connections_beyond_the_limit_get_503(
    server: MetricsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(exporter_mod, "_MAX_CLIENTS", 2)
    idle = [await asyncio.open_connection(server.host, server.port) for _ in range(2)]
    try:
        for _ in range(200):  # both accepted and waiting for their request
            if server._clients == 2:
                break
            await asyncio.sleep(0.01)
        answer = await _ask(server, b"GET /metrics HTTP/1.1\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 503")
    finally:
        for _, w in idle:
            w.close()
    for _ in range(200):  # the server saw them go
        if server._clients == 0:
            break
        await asyncio.sleep(0.01)
    answer = await _ask(server, b"GET /metrics HTTP/1.1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200")
