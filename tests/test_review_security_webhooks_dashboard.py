"""Security findings in the webhooks feature and the dashboard, each reproduced before it
was fixed, against a real Redis and real HTTP requests:

* an ``insecure_local`` dashboard answered any ``Host``: a web page whose name was made
  to resolve to 127.0.0.1 (DNS rebinding) was the admin of the queues, reading the CSRF
  token from a page and posting actions (``Host`` and ``Origin`` both its own);
* slow DNS look-ups of webhook hosts ran on the event loop's default executor and kept
  its threads after the request timed out: a handful of endpoints whose DNS server does
  not answer left nothing to ``asyncio.to_thread`` (nor to a connection by host name);
* IPv6 site-local (``fec0::/10``) and documentation (``3fff::/20``) addresses passed the
  SSRF guard.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from kitium_queue import JobQueue
from kitium_queue.dashboard import create_dashboard
from kitium_queue.features.webhooks import WebhookConfig, WebhookManager, generate_secret
from kitium_queue.features.webhooks.delivery import SecretStore, Sender, Target
from kitium_queue.features.webhooks.ssrf import AddressPolicy, BlockedAddressError
from test_dashboard_asgi import client_for, csrf_of

pytestmark = pytest.mark.redis_only

FORM = {"content-type": "application/x-www-form-urlencoded"}


@pytest.fixture
async def queue(redis_url: str, prefix: str) -> AsyncIterator[JobQueue]:
    q = JobQueue("sec", redis=redis_url, prefix=prefix)
    yield q
    await q.close()


# ------------------------------------------------------------ dashboard: DNS rebinding
@pytest.mark.parametrize(
    "base", ["http://rebind.example:8080", "http://127.0.0.1.nip.io", "http://dash"]
)
async def test_an_insecure_local_dashboard_refuses_another_sites_name(
    queue: JobQueue, base: str
) -> None:
    await queue.add_job("charge", {"n": 1})
    app = create_dashboard(queues=[queue], insecure_local=True, refresh_ms=0)
    # The browser's request comes from 127.0.0.1, its Host and Origin the attacker's.
    c = client_for(app, host="127.0.0.1", base=base)
    page = await c.get("/q/sec")
    assert page.status_code == 403, page.text
    assert 'name="csrf"' not in page.text
    assert (await c.get("/api/stats")).status_code == 403
    r = await c.post(
        "/q/sec/action/pause", content="csrf=x&confirm=yes", headers={**FORM, "origin": base}
    )
    assert r.status_code == 403
    assert not (await queue.get_stats()).is_paused


@pytest.mark.parametrize(
    "base",
    ["http://localhost:8080", "http://127.0.0.1:9", "http://[::1]:8080", "http://app.localhost"],
)
async def test_an_insecure_local_dashboard_serves_this_machines_names(
    queue: JobQueue, base: str
) -> None:
    app = create_dashboard(queues=[queue], insecure_local=True, refresh_ms=0)
    c = client_for(app, host="127.0.0.1", base=base)
    page = await c.get("/q/sec")
    assert page.status_code == 200, page.text
    r = await c.post(
        "/q/sec/action/pause",
        content=f"csrf={csrf_of(page.text)}",
        headers={**FORM, "origin": base},
    )
    assert r.status_code == 303, r.text
    assert (await queue.get_stats()).is_paused


# ------------------------------------------------------------ webhooks: slow DNS
SLOW = ".slow.test"


@pytest.fixture
def slow_dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """``getaddrinfo`` of names under ``.slow.test`` hangs (a DNS server that does not
    answer) until the test ends; other names resolve as usual."""
    release = threading.Event()
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host.endswith(SLOW):
            release.wait(30)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield release
    release.set()


async def test_slow_webhook_dns_leaves_the_default_executor_free(
    queue: JobQueue, slow_dns: threading.Event
) -> None:
    hooks = [f"w{i}" for i in range(40)]
    sender = Sender(SecretStore({h: generate_secret() for h in hooks}), policy=AddressPolicy())
    try:
        results = await asyncio.gather(
            *(
                sender.attempt(Target(h, f"https://{h}{SLOW}/in", {}, 200, h), "evt_1", b"{}")
                for h in hooks
            )
        )
        assert all(not r.ok and r.error == "timed out after 200 ms" for r in results)
        # Every attempt is over; the loop's own threads must still serve the process.
        assert await asyncio.wait_for(asyncio.to_thread(lambda: 7), 5) == 7
        # And the queue still reaches Redis.
        assert (await queue.get_stats()).waiting == 0
    finally:
        slow_dns.set()
        await sender.close()


# ------------------------------------------------------------ webhooks: SSRF ranges
@pytest.mark.parametrize("address", ["fec0::1", "feff::1", "3fff::1", "3fff:fff::1"])
async def test_site_local_and_documentation_ipv6_are_refused(queue: JobQueue, address: str) -> None:
    assert AddressPolicy().refusal(address) is not None
    m = WebhookManager(queue)
    with pytest.raises(BlockedAddressError):
        await m.register_webhook(
            WebhookConfig(url=f"https://[{address}]/in", secret=generate_secret(), events=["x"])
        )

    async def resolver(host: str, port: int) -> list[str]:
        return [address]

    sender = Sender(
        SecretStore({"w": generate_secret()}), policy=AddressPolicy(), resolver=resolver
    )
    try:
        r = await sender.attempt(Target("w", "https://hooks.example/in", {}, 2000, "w"), "e", b"{}")
    finally:
        await sender.close()
    assert not r.ok and r.permanent and not r.sent and "site-local" in (r.error or "")
    assert await m.list_webhooks() == []


def test_public_ipv6_still_passes() -> None:
    for address in ("2606:4700::1111", "2001:4860:4860::8888", "3fff:1000::1"):
        assert AddressPolicy().refusal(address) is None, address


# ------------------------------------------------------------ dashboard: a job's webhook_url
async def test_a_jobs_webhook_url_token_is_not_shown_to_a_viewer(queue: JobQueue) -> None:
    from kitium_queue.features.webhooks import JobWebhookConfig
    from test_dashboard_asgi import TOKENS, VIEWER

    WebhookManager(queue, job_webhook=JobWebhookConfig(secret=generate_secret()))
    jid = await queue.add_job(
        "charge", {}, webhook_url="https://cb.example/hook?token=Q-SECRET-1#frag"
    )
    app = create_dashboard(queues=[queue], tokens=TOKENS, refresh_ms=0)
    c = client_for(app)
    assert (await c.post("/login", data={"token": VIEWER, "next": "/"})).status_code == 303
    page = await c.get(f"/q/sec/jobs/{jid}")
    assert page.status_code == 200
    assert "https://cb.example/…" in page.text  # the endpoint's host is still named
    assert "/hook" not in page.text  # its path too may be a credential (viewers)
    assert "Q-SECRET-1" not in page.text and "token=" not in page.text
