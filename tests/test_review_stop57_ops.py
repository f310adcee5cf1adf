"""The operations surface under an SRE's review (each finding reproduced before it was
fixed), against real Redis servers:

* a Redis that stops answering (frozen: it keeps its connections and says nothing) must
  not hold a Prometheus scrape past the collector's ``timeout``, nor the dashboard's
  overview for the reply deadline once per queue;
* an ``Authorization`` header of another scheme (a reverse proxy's ``Basic`` sign-in,
  which browsers send along) is no failed sign-in, and a signed-in session is not
  refused because others from the same address tried wrong bearer tokens;
* the schedules page reads one page of schedules, not every schedule of the queue;
* a page whose read finds Redis unreachable is a 503 saying so (credentials redacted);
* the publish span of an add that found its job there already (the same ``job_id``)
  ends at once, marked a duplicate, instead of staying open until a later add.
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from _redis import RedisServer, frozen
from helpers import QueueFactory
from kitium_queue import JobQueue
from kitium_queue.dashboard import create_dashboard, data
from kitium_queue.features.prometheus import PrometheusExporter
from kitium_queue.features.tracing import OpenTelemetryTracing
from test_dashboard_asgi import MANAGER, TOKENS, VIEWER, client_for

#: Far more than any bound under test, far less than the 15 s a reply may take.
PATIENCE_S = 12.0


@pytest.fixture
async def frozen_queues(server: RedisServer, prefix: str) -> AsyncIterator[list[JobQueue]]:
    queues = [JobQueue(n, redis=server.url, prefix=prefix) for n in ("ops-a", "ops-b", "ops-c")]
    try:
        for q in queues:
            await q.add_job("w", {})
        yield queues
    finally:
        for q in queues:
            await q.close()


async def _scrape(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\n\r\n")
        await writer.drain()
        return await reader.read()
    finally:
        writer.close()


async def test_a_scrape_answers_within_the_collector_timeout_while_redis_is_frozen(
    server: RedisServer, frozen_queues: list[JobQueue]
) -> None:
    exporter = PrometheusExporter(frozen_queues)
    exporter.collector.timeout = 1.0
    metrics = await exporter.serve(port=0)
    try:
        assert b'kitium_queue_up{queue="ops-a"} 1.0' in await _scrape(metrics.port)
        with frozen(server):
            # Before: the scrape waited for the reply deadline (15 s), past the
            # scraper's own timeout (Prometheus: 10 s), which then saw no gauge at all.
            body = await asyncio.wait_for(_scrape(metrics.port), PATIENCE_S)
        assert body.startswith(b"HTTP/1.1 200 ")
        for q in frozen_queues:
            assert f'kitium_queue_up{{queue="{q.name}"}} 0.0'.encode() in body
            flag = f'kitium_queue_read_error{{part="stats",queue="{q.name}"}} 1.0'
            assert flag.encode() in body
        for _ in range(100):  # thawed: the next scrapes read Redis again
            if b'kitium_queue_up{queue="ops-c"} 1.0' in await _scrape(metrics.port):
                break
            await asyncio.sleep(0.2)
        else:
            pytest.fail("the queues never read as up after Redis answered again")
    finally:
        await metrics.close()


async def test_the_overview_answers_within_a_bound_while_redis_is_frozen(
    server: RedisServer, frozen_queues: list[JobQueue], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(data, "ROW_TIMEOUT_S", 1.0, raising=False)
    app = create_dashboard(queues=frozen_queues, tokens=TOKENS, refresh_ms=0)
    c = client_for(app)
    auth = {"authorization": f"Bearer {VIEWER}"}
    assert (await c.get("/api/stats", headers=auth)).status_code == 200
    with frozen(server):
        # Before: one queue after the other, each waiting for the reply deadline (15 s):
        # three queues, 45 s for a page that refreshes every 2 s.
        r = await asyncio.wait_for(c.get("/api/stats", headers=auth), PATIENCE_S)
        page = await asyncio.wait_for(c.get("/", headers=auth), PATIENCE_S)
    assert r.status_code == 200 and page.status_code == 200
    rows = r.json()["queues"]
    assert [row["name"] for row in rows] == ["ops-a", "ops-b", "ops-c"]
    for row in rows:
        assert row["stats"] is None and "no answer from Redis" in row["error"]
    assert "no answer from Redis" in page.text


@pytest.fixture
def shop(make_queue: QueueFactory) -> JobQueue:
    return make_queue("shop")


BASIC = {"authorization": "Basic " + base64.b64encode(b"proxy-user:proxy-pass").decode()}


async def test_a_proxy_basic_authorization_header_is_no_failed_sign_in(shop: JobQueue) -> None:
    app = create_dashboard(queues=[shop], tokens=TOKENS, refresh_ms=0)
    # A browser behind a reverse proxy with its own Basic sign-in sends the header on
    # every request: visits before signing in are no wrong dashboard tokens.
    c = client_for(app)
    for _ in range(25):
        r = await c.get("/api/stats", headers=BASIC)
        assert r.status_code == 401, r.text  # before: 429 from the 21st on
    r = await c.post("/login", data={"token": VIEWER, "next": "/"}, headers=BASIC)
    assert r.status_code == 303, r.text  # before: 429, nobody at that address could sign in
    # The scheme's name is case-insensitive (RFC 9110).
    r = await client_for(app).get("/api/stats", headers={"authorization": f"bearer {VIEWER}"})
    assert r.status_code == 200


async def test_a_session_is_kept_when_others_at_its_address_try_wrong_tokens(
    shop: JobQueue,
) -> None:
    app = create_dashboard(queues=[shop], tokens=TOKENS, refresh_ms=0)
    signed = client_for(app)  # the same client address as the others (a proxy's)
    r = await signed.post("/login", data={"token": MANAGER, "next": "/"})
    assert r.status_code == 303
    other = client_for(app)
    for _ in range(25):
        await other.get("/api/stats", headers={"authorization": "Bearer " + "x" * 32})
    r = await other.get("/api/stats", headers={"authorization": f"Bearer {VIEWER}"})
    assert r.status_code == 429  # the limit still holds for bearer tokens
    # A signed-in browser whose proxy adds a bearer header of its own keeps its session.
    r = await signed.get("/api/stats", headers={"authorization": "Bearer " + "y" * 32})
    assert r.status_code == 200, r.text  # before: 429


async def test_the_schedules_page_reads_one_page_of_schedules(
    shop: JobQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(230):
        await shop.schedule_every("tick", {}, 60_000, schedule_id=f"s{i:03d}")
    app = create_dashboard(queues=[shop], tokens=TOKENS, refresh_ms=0)

    async def every_schedule(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the page read every schedule of the queue")

    monkeypatch.setattr(shop, "get_schedules", every_schedule)
    c = client_for(app)
    auth = {"authorization": f"Bearer {VIEWER}"}
    r = await c.get("/q/shop/schedules", headers=auth)
    assert r.status_code == 200, r.text
    ids = re.findall(r"<code>(s\d{3})</code>", r.text)
    assert ids == [f"s{i:03d}" for i in range(data.SCHEDULE_PAGE)]
    assert "of 230" in r.text and 'id="schedules-next"' in r.text
    r = await c.get("/q/shop/schedules?offset=200", headers=auth)
    assert re.findall(r"<code>(s\d{3})</code>", r.text) == [f"s{i}" for i in range(200, 230)]
    assert 'id="schedules-next"' not in r.text and 'id="schedules-prev"' in r.text
    for bad in ("-5", "abc", "9" * 30):
        assert (await c.get(f"/q/shop/schedules?offset={bad}", headers=auth)).status_code == 200


async def test_pages_of_an_unreachable_redis_are_503_saying_so_without_credentials() -> None:
    from _redis import free_port

    q = JobQueue("down", redis=f"redis://:s3cret-pw@127.0.0.1:{free_port()}/0")
    try:
        app = create_dashboard(queues=[q], tokens=TOKENS, refresh_ms=0)
        c = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
            base_url="http://dash",
        )
        auth = {"authorization": f"Bearer {VIEWER}"}
        for path in ("/q/down", "/q/down/jobs/j1", "/q/down/schedules", "/q/down/workers"):
            r = await c.get(path, headers=auth)
            # Before: Starlette's bare "Internal Server Error" (and a traceback logged
            # per request): nothing told the operator that Redis is the problem.
            assert r.status_code == 503, (path, r.status_code, r.text[:200])
            assert "Redis is unavailable" in r.text and "s3cret-pw" not in r.text, path
            assert "content-security-policy" in r.headers
        r = await c.get("/api/q/down/explain/j1", headers=auth)
        assert r.status_code == 503 and "Redis is unavailable" in r.json()["error"]
        assert "s3cret-pw" not in r.text
    finally:
        await q.close()


async def test_a_duplicate_adds_publish_span_ends_at_once_marked(make_queue: QueueFactory) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    q = make_queue("traced")
    tracing = OpenTelemetryTracing(q, tracer_provider=provider)
    first = await q.add_job("a", {"secret": "payload"}, job_id="same")
    again = await q.add_job("a", {"secret": "payload"}, job_id="same")
    assert first == again == "same"
    spans = [s for s in exporter.get_finished_spans() if s.name == "traced publish"]
    # Before: the second span stayed open (ended, as an add that failed, only by an add
    # made pending_timeout later; never, if none came).
    assert len(spans) == 2 and not tracing._pending
    attrs = [dict(s.attributes or {}) for s in spans]
    assert "kitium_queue.enqueue.duplicate" not in attrs[0]
    assert attrs[1]["kitium_queue.enqueue.duplicate"] is True
    assert "kitium_queue.enqueue.confirmed" not in attrs[1]
    assert all("payload" not in str(a) for a in attrs)  # no payload in span attributes
