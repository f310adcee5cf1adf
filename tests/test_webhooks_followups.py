"""Three webhook defects, each reproduced against a real Redis and real HTTP requests on
loopback before it was fixed:

* the dashboard showed an endpoint's URL path to every role: for Slack- or Discord-style
  URLs the path *is* the credential (``https://hooks.slack.com/services/T0/B0/SECRET``);
  non-admins now see the scheme and host only (``https://hooks.slack.com/…``);
* ``retry_delivery`` rescheduled a delivery that a delivery worker held under its lease
  (its attempt in flight): the event went out twice although nothing had failed. It is
  refused now, atomically with the state it reads, and the dashboard and the CLI say so;
* one endpoint that hangs held every delivery slot of a process until its requests
  timed out: other endpoints got nothing meanwhile. Each endpoint now has at most
  ``max_in_flight`` requests in flight per process (default: half of ``concurrency``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from helpers import app_module
from kitium_queue import JobQueue
from kitium_queue.cli import main
from kitium_queue.dashboard import create_dashboard
from kitium_queue.errors import ConfigurationError
from kitium_queue.features.webhooks import (
    DeliveryInFlightError,
    WebhookConfig,
    WebhookEvent,
    WebhookManager,
    generate_secret,
)
from kitium_queue.features.webhooks.models import shown_url
from test_dashboard_asgi import ADMIN, MANAGER, OPERATOR, TOKENS, VIEWER, csrf_of, signed_in

pytestmark = pytest.mark.redis_only

SLACK = "https://hooks.slack.com/services/T0/B0/SECRETPATH"


class Server:
    """A bare HTTP/1.1 server on loopback: ``answer(path, webhook_id)`` gives each POST's
    status, and may take as long as it likes (an endpoint that hangs). Records every
    request as ``(path, webhook-id)`` and the most requests in flight per path."""

    def __init__(self, answer: Callable[[str, str], Awaitable[int]]) -> None:
        self.answer = answer
        self.requests: list[tuple[str, str]] = []
        self.in_flight: Counter[str] = Counter()
        self.most: Counter[str] = Counter()
        self._server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def ids(self, path: str) -> Counter[str]:
        return Counter(i for p, i in self.requests if p == path)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            path = lines[0].split(" ")[1]
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            await reader.readexactly(int(headers.get("content-length", "0")))
            wid = headers.get("webhook-id", "")
            self.requests.append((path, wid))
            self.in_flight[path] += 1
            self.most[path] = max(self.most[path], self.in_flight[path])
            try:
                status = await self.answer(path, wid)
            finally:
                self.in_flight[path] -= 1
            writer.write(
                f"HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".encode()
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def _until(check: Callable[[], Any], timeout: float = 30.0) -> None:
    """Wait until ``check()`` is true (a bound for a broken build, not a speed claim)."""
    for _ in range(int(timeout / 0.02)):
        if await check() if asyncio.iscoroutinefunction(check) else check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not reached within {timeout} s")


@pytest.fixture
async def queue(redis_url: str, prefix: str) -> AsyncIterator[JobQueue]:
    q = JobQueue("fups", redis=redis_url, prefix=prefix)
    yield q
    await q.close()


# ------------------------------------------------------------ 1. URLs shown to viewers
def test_shown_url_keeps_scheme_host_and_port_only() -> None:
    assert shown_url(SLACK) == "https://hooks.slack.com/…"
    assert shown_url("http://127.0.0.1:8080/a/b?token=x") == "http://127.0.0.1:8080/…"
    assert shown_url("https://[::1]:9/x") == "https://[::1]:9/…"
    assert shown_url("https://u:pw@example.com/x") == "https://example.com/…"
    assert shown_url("https://example.com") == "https://example.com/…"
    assert shown_url("not a url") == "<redacted>"
    assert shown_url("https://example.com:notaport/x") == "<redacted>"


async def test_non_admins_see_no_url_path(queue: JobQueue) -> None:
    mgr = WebhookManager(queue, allow_networks=["127.0.0.0/8"], run_service=False)
    await mgr.register_webhook(WebhookConfig(url=SLACK, secret=generate_secret(), id="slack"))
    jid = await queue.add_job(
        "charge", {"n": 1}, webhook_url="https://discord.com/api/webhooks/1/JOBSECRET"
    )
    app = create_dashboard(queues=[queue], tokens=TOKENS, refresh_ms=0)
    for token in (VIEWER, OPERATOR, MANAGER):
        c = await signed_in(app, token)
        page = await c.get("/q/fups/webhooks")
        assert page.status_code == 200, page.text
        assert "SECRETPATH" not in page.text and "/services/" not in page.text
        assert "https://hooks.slack.com/…" in page.text
        job = await c.get(f"/q/fups/jobs/{jid}")
        assert job.status_code == 200, job.text
        assert "JOBSECRET" not in job.text and "/api/webhooks" not in job.text
        assert "https://discord.com/…" in job.text
    # An admin sees what it saw before: the URL without credentials or query.
    c = await signed_in(app, ADMIN)
    assert SLACK in (await c.get("/q/fups/webhooks")).text
    assert (
        "https://discord.com/api/webhooks/1/JOBSECRET" in (await c.get(f"/q/fups/jobs/{jid}")).text
    )


# ------------------------------------------------------------ 2. retry of a leased delivery
@pytest.fixture
def app(tmp_path: Path, redis_url: str, prefix: str) -> Iterator[str]:
    source = (
        "from kitium_queue import JobQueue\n"
        f"queue = JobQueue('fups', redis={redis_url!r}, prefix={prefix!r})\n"
    )
    with app_module(tmp_path, source, "kq_fups_wh") as module:
        yield f"{module}:queue"


async def test_a_leased_delivery_is_not_retried(
    queue: JobQueue, app: str, redis_url: str, prefix: str
) -> None:
    """Two delivery workers: the one holding the retry hangs on it; had it been
    scheduled again, the other would have sent it meanwhile (3 requests, measured)."""
    release = asyncio.Event()
    calls: Counter[str] = Counter()

    async def answer(path: str, wid: str) -> int:
        calls[wid] += 1
        if calls[wid] == 1:
            return 500  # the first attempt fails: a retry is scheduled
        if calls[wid] == 2:
            await release.wait()  # the retry hangs, held under its lease
        return 200

    server = await Server(answer).start()
    secrets = {"billing": generate_secret()}
    opts: dict[str, Any] = {"allow_networks": ["127.0.0.0/8"], "backoff_ms": 10, "poll_ms": 10}
    mgr = WebhookManager(queue, secrets=secrets, **opts)
    other = JobQueue("fups", redis=redis_url, prefix=prefix)
    mgr2 = WebhookManager(other, secrets=secrets, **opts)
    try:
        await mgr.register_webhook(
            WebhookConfig(
                url=server.url("/in"),
                id="billing",
                events=["invoice-paid"],
                timeout_ms=60_000,
            )
        )
        await mgr.service.start(queue)
        await mgr2.service.start(other)
        eid = await mgr.send_event(WebhookEvent("invoice-paid", {"n": 1}, id="evt_lease1"))
        await _until(lambda: server.in_flight["/in"] == 1 and calls[eid] == 2)
        (rec,) = await mgr.get_delivery_history("billing", eid)
        assert rec.state == "pending"

        with pytest.raises(DeliveryInFlightError, match=r"pending.*lease.*twice"):
            await mgr.retry_delivery("billing", eid)
        # The dashboard's form says so (400, the message), not a 500.
        dash = create_dashboard(queues=[queue], tokens=TOKENS, refresh_ms=0)
        c = await signed_in(dash, OPERATOR)
        page = await c.get("/q/fups/webhooks")
        r = await c.post(
            "/q/fups/action/retry-delivery",
            data={"csrf": csrf_of(page.text), "webhook_id": "billing", "event_id": eid},
        )
        assert r.status_code == 400, r.text
        assert "being attempted" in r.text and "twice" in r.text
        # So does the CLI: one line, a non-zero exit, no traceback.
        out = await asyncio.to_thread(
            CliRunner().invoke,
            main,
            ["webhooks", "replay", app, "--webhook", "billing", "--event", eid],
        )
        assert out.exit_code == 1, out.output
        assert "being attempted" in out.output and "Traceback" not in out.output

        release.set()
        await _until(lambda: server.in_flight["/in"] == 0)

        async def delivered() -> bool:
            (r,) = await mgr.get_delivery_history("billing", eid)
            return r.state == "delivered"

        await _until(delivered)
        await asyncio.sleep(0.3)  # a retry scheduled by mistake would be due by now
        assert calls[eid] == 2  # the failed attempt and its retry: never sent twice
        # A delivered one may be sent again on purpose (the docstring's promise).
        assert await mgr.retry_delivery("billing", eid) is True
        await _until(lambda: calls[eid] == 3)
    finally:
        release.set()
        await mgr.service.stop()
        await mgr2.service.stop()
        await other.close()
        await server.stop()


async def test_a_pending_delivery_waiting_for_its_backoff_is_retried_now(
    queue: JobQueue,
) -> None:
    calls: Counter[str] = Counter()

    async def answer(path: str, wid: str) -> int:
        calls[wid] += 1
        return 500 if calls[wid] == 1 else 200

    server = await Server(answer).start()
    mgr = WebhookManager(queue, allow_networks=["127.0.0.0/8"], backoff_ms=600_000)
    try:
        await mgr.register_webhook(
            WebhookConfig(
                url=server.url("/in"), secret=generate_secret(), id="crm", events=["lead"]
            )
        )
        await mgr.service.start(queue)
        eid = await mgr.send_event(WebhookEvent("lead", {"n": 1}))

        async def pending() -> bool:
            got = await mgr.get_delivery_history("crm", eid)
            return bool(got) and got[0].state == "pending"

        await _until(pending)
        assert await mgr.retry_delivery("crm", eid) is True  # not leased: now, not in 10 min
        await _until(lambda: calls[eid] == 2)
    finally:
        await mgr.service.stop()
        await server.stop()


# ------------------------------------------------------------ 3. a hanging endpoint's cap
def test_max_in_flight_is_validated() -> None:
    from kitium_queue.features.webhooks.models import Webhook

    for bad in (0, -1, 1001, True, 2.0, "4"):
        with pytest.raises(ConfigurationError, match="max_in_flight"):
            Webhook.from_config(WebhookConfig(url=SLACK, max_in_flight=bad), 0)  # type: ignore[arg-type]
    hook = Webhook.from_config(WebhookConfig(url=SLACK, max_in_flight=3), 0)
    assert Webhook.from_json(hook.to_json()).max_in_flight == 3
    assert Webhook.from_config(WebhookConfig(url=SLACK), 0).max_in_flight is None


@pytest.mark.parametrize("cap", [None, 1])
async def test_a_hanging_endpoint_leaves_the_others_their_slots(
    queue: JobQueue, cap: int | None
) -> None:
    release = asyncio.Event()

    async def answer(path: str, wid: str) -> int:
        if path == "/slow":
            await release.wait()
        return 200

    server = await Server(answer).start()
    # concurrency 4: the default cap is 2 requests in flight per endpoint.
    mgr = WebhookManager(queue, allow_networks=["127.0.0.0/8"], concurrency=4, poll_ms=10)
    n = 12
    try:
        await mgr.register_webhook(
            WebhookConfig(
                url=server.url("/slow"),
                secret=generate_secret(),
                id="slow",
                events=["ping"],
                timeout_ms=60_000,
                max_in_flight=cap,
            )
        )
        await mgr.register_webhook(
            WebhookConfig(
                url=server.url("/fast"), secret=generate_secret(), id="fast", events=["ping"]
            )
        )
        ids = [await mgr.send_event(WebhookEvent("ping", {"i": i})) for i in range(n)]
        await mgr.service.start(queue)
        # Every fast delivery goes out while the slow endpoint still hangs.
        await _until(
            lambda: len(server.ids("/fast")) == n and server.in_flight["/slow"] == (cap or 2)
        )
        assert server.most["/slow"] == (cap or 2)  # never more than its cap
        assert not release.is_set()
        release.set()
        await _until(lambda: len(server.ids("/slow")) == n)

        async def recorded() -> bool:
            for wid in ("slow", "fast"):
                recs = await mgr.get_delivery_history(wid, limit=100)
                if len(recs) != n or any(r.state != "delivered" for r in recs):
                    return False
            return True

        await _until(recorded)
        assert server.most["/slow"] == (cap or 2)
        for path in ("/slow", "/fast"):  # none lost, none sent twice
            assert server.ids(path) == Counter(ids), path
        assert await mgr.list_dlq() == []
    finally:
        release.set()
        await mgr.service.stop()
        await server.stop()


async def test_max_in_flight_can_be_updated(queue: JobQueue) -> None:
    mgr = WebhookManager(queue, run_service=False)
    await mgr.register_webhook(WebhookConfig(url=SLACK, id="s"))
    assert (await mgr.update_webhook("s", max_in_flight=5)).max_in_flight == 5
    assert (await mgr.get_webhook("s")).max_in_flight == 5  # type: ignore[union-attr]
    with pytest.raises(ConfigurationError, match="max_in_flight"):
        await mgr.update_webhook("s", max_in_flight=0)
