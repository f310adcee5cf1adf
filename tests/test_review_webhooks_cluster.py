"""Webhook delivery against a real Redis and real HTTP on loopback: an endpoint whose
requests hang holds at most its ``max_in_flight`` of a process's delivery slots, and
no more than about one request timeout of the outbox loop: a delivery that waited for
its endpoint's slot that long goes back to the retries unattempted, so the events of
other endpoints sent meanwhile are not held up behind the hanging endpoint's backlog.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from kitium_queue import JobQueue
from kitium_queue.dashboard import create_dashboard
from kitium_queue.features.webhooks import (
    WebhookConfig,
    WebhookEvent,
    WebhookManager,
    generate_secret,
)
from test_dashboard_asgi import client_for
from test_webhooks_followups import Server, _until

pytestmark = pytest.mark.redis_only


@pytest.fixture
async def queue(redis_url: str, prefix: str) -> AsyncIterator[JobQueue]:
    q = JobQueue("rvwh", redis=redis_url, prefix=prefix)
    yield q
    await q.close()


async def test_a_hanging_endpoints_backlog_does_not_hold_up_later_events(
    queue: JobQueue,
) -> None:
    """Eight deliveries to an endpoint that never answers (cap 2, 3 s timeout) fill one
    outbox batch. Waiting for the endpoint's slot, six of them held the whole batch, and
    so the outbox loop, for three rounds of timeouts (the cap made it longer than the
    process's own slots would have), with two of the four process slots free: an event
    for another endpoint sent meanwhile went out only after every hanging delivery had
    been tried. Now those still waiting after one timeout are handed back (a retry due
    now, not attempted): the other endpoint's event goes out while some of them are
    still untried."""
    release = asyncio.Event()

    async def answer(path: str, wid: str) -> int:
        if path == "/hang":
            await release.wait()
        return 200

    server = await Server(answer).start()
    # concurrency 4: the default cap is 2 requests in flight per endpoint.
    mgr = WebhookManager(queue, allow_networks=["127.0.0.0/8"], concurrency=4, poll_ms=10)
    try:
        await mgr.register_webhook(
            WebhookConfig(
                url=server.url("/hang"),
                secret=generate_secret(),
                id="hang",
                events=["slow-ev"],
                timeout_ms=3000,
            )
        )
        await mgr.register_webhook(
            WebhookConfig(
                url=server.url("/ok"), secret=generate_secret(), id="ok", events=["fast-ev"]
            )
        )
        for i in range(8):
            await mgr.send_event(WebhookEvent("slow-ev", {"i": i}))
        await mgr.service.start(queue)
        await _until(lambda: server.in_flight["/hang"] == 2)
        fast = await mgr.send_event(WebhookEvent("fast-ev", {"n": 1}))
        await _until(lambda: server.ids("/ok")[fast] == 1, timeout=60)
        recs = await mgr.get_delivery_history("hang", limit=100)
        untried = [r for r in recs if r.attempts == 0]
        assert untried, [(r.state, r.attempts) for r in recs]
        assert all(r.state == "pending" and not r.history for r in untried)
        assert server.most["/hang"] == 2  # never more than its cap meanwhile
    finally:
        release.set()
        await mgr.service.stop()
        await server.stop()


# ------------------------------------------------------------ dashboard: Host forms
@pytest.mark.parametrize("host", ["[::1].evil.example", "[::1]evil.example", "localhost:x.evil"])
async def test_an_insecure_local_dashboard_refuses_a_loopback_look_alike(
    queue: JobQueue, host: str
) -> None:
    """A Host that starts like a loopback authority and goes on with another name: the
    part after the bracket (or the port) was not looked at, and the page was served."""
    app = create_dashboard(queues=[queue], insecure_local=True, refresh_ms=0)
    c = client_for(app, host="127.0.0.1", base="http://127.0.0.1")
    page = await c.get("/q/rvwh", headers={"host": host})
    assert page.status_code == 403, page.text
    assert 'name="csrf"' not in page.text
    ok = await c.get("/q/rvwh", headers={"host": "[::1]:8080"})
    assert ok.status_code == 200, ok.text
