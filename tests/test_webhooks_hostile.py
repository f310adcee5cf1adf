"""Hostile and malformed webhook input (a review's findings, each reproduced before it
was fixed), against a real Redis and a real receiver on loopback:

* a URL no request could go to (empty or long labels, invalid IDNA, an IPv4 address in
  octal) is refused when it is given, not when a delivery fails;
* an attempt that fails in an unforeseen way is one failed attempt of its delivery:
  the other endpoints of the batch get their event once, and it is retried;
* a host name that does not resolve for a moment is retried, not dead-lettered;
* the job webhook's numbers, header values and reserved header names are checked;
* no ``repr`` shows a secret, and ``verify_webhook`` refuses a tolerance that would
  turn replay protection off.
"""

from __future__ import annotations

import asyncio
import math
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpcore
import pytest

from helpers import wait_until
from kitium_queue import ConfigurationError, JobQueue
from kitium_queue.features.webhooks import (
    JobWebhookConfig,
    WebhookConfig,
    WebhookEvent,
    WebhookManager,
    generate_secret,
    signature_header,
    verify_webhook,
)
from kitium_queue.features.webhooks.models import Webhook, check_url
from kitium_queue.features.webhooks.signing import secret_key
from test_webhooks import FAST

pytestmark = pytest.mark.redis_only


@pytest.fixture
async def queue(redis_url: str, prefix: str) -> AsyncIterator[JobQueue]:
    q = JobQueue("whh", redis=redis_url, prefix=prefix)
    yield q
    await q.close()


@pytest.mark.parametrize(
    "url",
    [
        "http://a..b/",
        "http://" + "a" * 64 + ".com/",
        "http://" + ".".join(["a" * 60] * 5) + "/",  # 304 characters
        "http://xn--/",
        "http://\u2603.com/",
        "http://\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54/",  # fullwidth
        "http://0177.0.0.1/",
    ],
)
def test_a_url_no_request_could_go_to_is_refused_when_given(url: str) -> None:
    with pytest.raises(ConfigurationError, match="host"):
        check_url(url)
    with pytest.raises(ConfigurationError, match="host"):
        Webhook.from_config(WebhookConfig(url=url), now_ms=0)


@pytest.mark.parametrize(
    "url", ["https://b\u00fccher.de/x", "http://a.b./", "http://[::1]:8080/", "http://a-b.c:1/"]
)
def test_hosts_httpx_can_send_to_are_accepted(url: str) -> None:
    assert check_url(url) == url


class BreaksOnePort:
    """A network backend that raises an unforeseen error for one port and connects
    normally otherwise."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.inner = httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, **kw: Any) -> Any:
        if port == self.port:
            raise RuntimeError("injected: a bug below the sender")
        return await self.inner.connect_tcp(host, port, **kw)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


async def test_an_unforeseen_failure_is_one_failed_attempt_not_a_failed_batch(
    queue: JobQueue, receiver: Any
) -> None:
    broken_port = receiver.port + 1 if receiver.port < 65535 else receiver.port - 1
    m = WebhookManager(queue, connector=BreaksOnePort(broken_port), **FAST)
    good = await m.register_webhook(
        WebhookConfig(url=receiver.url, secret=generate_secret(), events=["app-ping"])
    )
    bad = await m.register_webhook(
        WebhookConfig(
            url=f"http://127.0.0.1:{broken_port}/in",
            secret=generate_secret(),
            events=["app-ping"],
            max_retries=2,
        )
    )
    await queue.start()
    eid = await m.send_event(WebhookEvent("app-ping"))
    await wait_until(lambda: m.list_dlq(), 10, message="the broken endpoint's dead letter")
    (dead,) = await m.get_delivery_history(bad.id, eid)
    assert dead.state == "dead" and len(dead.history) == 3  # the first try and 2 retries
    assert dead.last_error == "RuntimeError sending to 127.0.0.1"
    (ok,) = await m.get_delivery_history(good.id, eid)
    assert ok.state == "delivered"
    assert receiver.ids() == {eid: 1}  # once: the batch was not handed out again


async def test_a_name_that_does_not_resolve_for_a_moment_is_retried(
    queue: JobQueue, receiver: Any
) -> None:
    lookups: list[str] = []

    async def flaky_dns(host: str, port: int) -> list[str]:
        lookups.append(host)
        if len(lookups) == 1:
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return ["127.0.0.1"]

    m = WebhookManager(queue, resolver=flaky_dns, **FAST)
    hook = await m.register_webhook(
        WebhookConfig(
            url=f"http://hooks.example:{receiver.port}/in",
            secret=generate_secret(),
            events=["app-ping"],
        )
    )
    await queue.start()
    eid = await m.send_event(WebhookEvent("app-ping"))
    await wait_until(lambda: receiver.ok(), 10, message="the retried delivery")
    await wait_until(lambda: _delivered(m, hook.id, eid), 5, message="the delivery recorded")
    (rec,) = await m.get_delivery_history(hook.id, eid)
    assert [a.status for a in rec.history] == [None, 200]
    assert "'hooks.example' did not resolve" in (rec.history[0].error or "")
    assert lookups == ["hooks.example", "hooks.example"]


async def _delivered(m: WebhookManager, hook_id: str, eid: str) -> bool:
    return [r.state for r in await m.get_delivery_history(hook_id, eid)] == ["delivered"]


@pytest.mark.parametrize(
    "config",
    [
        JobWebhookConfig(timeout_ms=float("nan")),  # type: ignore[arg-type]
        JobWebhookConfig(timeout_ms="10"),  # type: ignore[arg-type]
        JobWebhookConfig(timeout_ms=0),
        JobWebhookConfig(timeout_ms=10**9),
        JobWebhookConfig(max_retries=-3),
        JobWebhookConfig(max_retries=True),  # type: ignore[arg-type]
        {"timeout_ms": 100},
    ],
)
def test_the_job_webhook_numbers_are_checked(queue: JobQueue, config: Any) -> None:
    with pytest.raises(ConfigurationError, match="job_webhook"):
        WebhookManager(queue, job_webhook=config)


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Tenant": "acme "},
        {"X-Tenant": " acme"},
        {"Content-Encoding": "gzip"},
        {"Content-MD5": "x"},
        {"Webhook-Version": "2"},
        {"Expect": "100-continue"},
        {"Proxy-Authorization": "Basic x"},
        {"Upgrade": "h2c"},
    ],
)
def test_header_values_and_reserved_names_are_checked(headers: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError, match="webhook header"):
        Webhook.from_config(
            WebhookConfig(url="https://hooks.example/in", headers=headers), now_ms=0
        )


def test_no_repr_shows_a_secret_and_the_tolerance_is_bounded() -> None:
    secret = generate_secret()
    for config in (WebhookConfig(url="https://hooks.example/", secret=secret),
                   JobWebhookConfig(secret=secret)):  # fmt: skip
        assert secret not in repr(config)
        assert secret[6:20] not in repr(config)
    body, ts = b"{}", 1000
    headers = {
        "webhook-id": "evt_1",
        "webhook-timestamp": str(ts),
        "webhook-signature": signature_header([secret_key(secret)], "evt_1", ts, body),
    }
    verify_webhook(body, headers, secret, now=ts)  # a fresh one passes
    for tolerance in (math.nan, math.inf, -1, 10**9, True, "300"):
        with pytest.raises(ConfigurationError, match="tolerance_s"):
            verify_webhook(body, headers, secret, tolerance_s=tolerance, now=10**9)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="now"):
        verify_webhook(body, headers, secret, now=math.nan)
