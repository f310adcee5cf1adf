"""Webhooks reviewed as a demanding payments user would use them, against a real Redis
and receivers on loopback (the SSRF guard's opt-in ``allow_networks=["127.0.0.0/8"]``).

* A secrets source that fails (a vault down, a callable that raises or returns a
  non-string) fails that endpoint's attempt only: the other deliveries of the batch go
  on, each sent once, and the failing one is retried.
* ``rotate_secret(keep_old_s=...)`` takes a finite number of seconds from 0 to a year:
  NaN (the old secret dropped at once: receivers holding it reject everything), an
  infinite one (the old secret signs forever) or a string are ConfigurationErrors.
* A URL whose host is an IPv4 address in any spelling the system resolver accepts
  (``127.1``, ``2130706433``, ``0x7f.0.0.1``, full-width dots) is refused at
  registration like ``127.0.0.1``, not only at each delivery; a host no resolver takes
  (``%31%32%37.0.0.1``) is refused too.
* The CLI's history and DLQ views of records holding terminal escapes, newlines and
  bidi controls print them escaped.
* Two endpoints that hang at once no longer hold every delivery slot of a process (caps
  of half each): a quarter is kept for endpoints with nothing in flight
  (``ProcessSlots``).
* A replay or retry of the endpoint ``job`` closes the breakers of jobs' own URLs (one
  per host), as documented.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Any

import pytest

from helpers import wait_until
from kitium_queue import ConfigurationError, JobQueue
from kitium_queue.features.webhooks import (
    BlockedAddressError,
    WebhookConfig,
    WebhookEvent,
    WebhookManager,
    generate_secret,
    verify_webhook,
)
from test_webhooks import FAST, Receiver

pytestmark = pytest.mark.redis_only


@pytest.fixture
async def queue(redis_url: str, prefix: str) -> AsyncIterator[JobQueue]:
    q = JobQueue("wh57", redis=redis_url, prefix=prefix)
    yield q
    await q.close()


async def test_failing_secret_source_fails_only_its_endpoint(
    queue: JobQueue, receiver: Receiver
) -> None:
    good = generate_secret()
    calls = {"n": 0}

    def vault(webhook_id: str) -> Any:
        if webhook_id == "good":
            return [good]
        calls["n"] += 1
        if calls["n"] <= 2:
            raise RuntimeError("vault unreachable")
        return 12345  # a vault client returning the wrong type

    m = WebhookManager(queue, secrets=vault, **FAST)
    for wid in ("good", "flaky"):
        await m.register_webhook(WebhookConfig(url=receiver.url, id=wid, events=["app-ping"]))
    await m.service.start(queue)
    try:
        eid = await m.send_event(WebhookEvent("app-ping", {"n": 1}))
        await wait_until(lambda: len(receiver.ok()) >= 1, 15)

        # The flaky endpoint's delivery is recorded as a failed attempt, retried.
        async def flaky_recorded() -> bool:
            recs = await m.get_delivery_history("flaky", eid)
            return bool(recs) and recs[0].attempts >= 2

        await wait_until(flaky_recorded, 15)
        (rec,) = await m.get_delivery_history("flaky", eid)
        assert rec.state in ("pending", "dead")
        assert "vault unreachable" not in (rec.last_error or "")  # never its text
        (good_rec,) = await m.get_delivery_history("good", eid)
        assert good_rec.state == "delivered"
        assert receiver.ids()[eid] == 1  # sent once, not again with the batch
        verify_webhook(receiver.ok()[0].body, receiver.ok()[0].headers, good)
    finally:
        await m.service.stop()


@pytest.mark.parametrize("bad", [math.nan, math.inf, -1, "3600", True, 10**9])
async def test_rotate_secret_keep_old_s_is_checked(queue: JobQueue, bad: Any) -> None:
    m = WebhookManager(queue, **FAST)
    old = generate_secret()
    m.set_secret("pay", old)
    with pytest.raises(ConfigurationError, match="keep_old_s"):
        m.rotate_secret("pay", generate_secret(), keep_old_s=bad)
    # Nothing changed: the old secret still signs alone.
    assert len(m.secrets.keys("pay")) == 1


async def test_rotate_secret_keeps_old_for_the_overlap(queue: JobQueue) -> None:
    m = WebhookManager(queue, **FAST)
    m.set_secret("pay", generate_secret())
    m.rotate_secret("pay", generate_secret(), keep_old_s=0.0)
    assert len(m.secrets.keys("pay")) == 1  # no overlap asked: the new one only
    m.rotate_secret("pay", generate_secret(), keep_old_s=3600)
    assert len(m.secrets.keys("pay")) == 2


@pytest.mark.parametrize(
    "host",
    [
        "127.1",
        "2130706433",
        "0x7f.0.0.1",
        "0",
        "169.254.43518",
        "10.1",
        "127\u30020\u30020\u30021",
        "127.0.0.1\u3002",
        "%31%32%37.0.0.1",
        "a!b.example.com",
    ],
)
async def test_numeric_host_spellings_refused_at_registration(
    redis_url: str, prefix: str, host: str
) -> None:
    q = JobQueue("wh57n", redis=redis_url, prefix=prefix)
    try:
        m = WebhookManager(q)
        with pytest.raises((BlockedAddressError, ConfigurationError)):
            await m.register_webhook(WebhookConfig(url=f"http://{host}:8080/x"))
        assert await m.list_webhooks() == []
    finally:
        await q.close()


HOSTILE = "\x1b]52;c;cGF5\x07\x1b[2J\r\nFAKE\tROW\u202e"


async def test_cli_views_of_hostile_delivery_records(
    cli_app: str, redis_url: str, prefix: str, redis_client: Any
) -> None:
    from click.testing import CliRunner

    from kitium_queue.cli import main

    q = JobQueue("cli", redis=redis_url, prefix=prefix)
    try:
        m = WebhookManager(q, **FAST)
        await m.register_webhook(WebhookConfig(url="http://127.0.0.1:9/h", id="pay"))
        eid = "evt_" + HOSTILE
        rec = q.keys.extra(f"wh:d:pay/{eid}")
        await redis_client.hset(
            rec,
            mapping={
                "ty": HOSTILE,
                "st": "dead",
                "a": "3",
                "c": "1700000000000",
                "sg": HOSTILE,
                "e": HOSTILE,
                "sc": "500",
                "h": '[[1700000000000, 1, 500, "'
                + HOSTILE.encode("unicode_escape").decode()
                + '", 5]]',
            },
        )
        await redis_client.zadd(q.keys.extra("wh:idx:pay"), {eid: 1})
        await redis_client.zadd(q.keys.extra("wh:dlq"), {f"pay/{eid}": 1})
        await redis_client.zadd(q.keys.extra("wh:dlq:pay"), {eid: 1})
    finally:
        await q.close()
    runner = CliRunner()
    for args in (
        ["history", cli_app, "pay"],
        ["dlq", cli_app],
        ["dlq", cli_app, "--webhook", "pay"],
    ):
        out = await asyncio.to_thread(runner.invoke, main, ["webhooks", *args])
        assert out.exit_code == 0, out.output
        assert "FAKE" in out.output, (args, out.output)  # listed, escaped
        assert "\x1b" not in out.output and "\x07" not in out.output, args
        assert "\r" not in out.output and "\u202e" not in out.output, args
        assert "\nFAKE" not in out.output, args


class Hanging:
    """A receiver on loopback that reads each request and answers nothing until
    ``release`` is set (then 200)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.requests = 0
        self.port = 0
        self._server: asyncio.AbstractServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hang"

    async def start(self) -> Hanging:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                n = int(
                    next(
                        (
                            line.split(b":", 1)[1]
                            for line in head.split(b"\r\n")
                            if line.lower().startswith(b"content-length:")
                        ),
                        b"0",
                    )
                )
                await reader.readexactly(n)
                self.requests += 1
                await self.release.wait()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        self.release.set()
        if self._server is not None:
            self._server.close()


async def test_two_hanging_endpoints_do_not_starve_a_third(
    queue: JobQueue, receiver: Receiver
) -> None:
    """The default cap is half of ``concurrency`` each: two endpoints that hang held every
    slot, and a third got nothing until their (up to 120 s) timeouts. A share of the
    slots is kept for endpoints with no request in flight."""
    h1, h2 = await Hanging().start(), await Hanging().start()
    m = WebhookManager(queue, **FAST)  # concurrency 8: caps of 4
    try:
        for wid, url in (("h1", h1.url), ("h2", h2.url), ("fast", receiver.url)):
            await m.register_webhook(
                WebhookConfig(
                    url=url, id=wid, events=["app-x"], timeout_ms=60_000, secret=generate_secret()
                )
            )
        ids = [await m.send_event(WebhookEvent("app-x", {"n": i})) for i in range(6)]
        await m.service.start(queue)
        # Every event reaches the fast endpoint while both others still hold requests.
        await wait_until(lambda: len(receiver.ok()) == 6, 30)
        assert not h1.release.is_set() and h1.requests >= 1 and h2.requests >= 1
        assert sorted(receiver.ids()) == sorted(ids)
        assert h1.requests + h2.requests <= 6  # 8 slots less the reserve of 2
    finally:
        h1.release.set()
        h2.release.set()
        await m.service.stop()
        await h1.stop()
        await h2.stop()


async def test_process_slots_keep_a_share_for_idle_endpoints() -> None:
    from kitium_queue.features.webhooks.delivery import ProcessSlots, Target

    def target(wid: str) -> Target:
        return Target(wid, "http://127.0.0.1:1/", {}, 1000, wid)

    slots = ProcessSlots(8)
    held: list[Any] = []
    for _ in range(6):  # a busy endpoint takes all but the reserve
        cm = slots.hold(target("a"))
        await cm.__aenter__()
        held.append(cm)
    seventh = asyncio.ensure_future(slots.hold(target("a")).__aenter__())
    await asyncio.sleep(0.05)
    assert not seventh.done() and slots.free == 2
    # An endpoint with nothing in flight passes the waiting busy one.
    for wid in ("b", "c"):
        cm = slots.hold(target(wid))
        await asyncio.wait_for(cm.__aenter__(), 5)
        held.append(cm)
    assert slots.free == 0
    await held.pop().__aexit__(None, None, None)  # c's ends: 1 free, still the reserve
    await asyncio.sleep(0.05)
    assert not seventh.done()
    for cm in held[:2]:
        await cm.__aexit__(None, None, None)
    await asyncio.wait_for(seventh, 5)  # once more than the reserve is free
    seventh.cancel()


async def test_replay_and_retry_close_the_breaker_of_jobs_own_urls(
    redis_url: str, prefix: str
) -> None:
    """Deliveries to jobs' own ``webhook_url``s have one breaker per host
    (``job:<host>``); a replay or retry of the endpoint ``job`` closed the breaker of a
    key no delivery uses (``job``), so the replayed deliveries failed at once again,
    without a request, while the breaker stayed open (up to a minute)."""
    from kitium_queue.features.webhooks import JobWebhookConfig

    q = JobQueue("wh57j", redis=redis_url, prefix=prefix)

    @q.process("charge")
    async def charge(job: Any) -> int:
        return 1

    m = WebhookManager(
        q,
        job_webhook=JobWebhookConfig(secret=generate_secret(), max_retries=0),
        breaker_threshold=1,
        breaker_cooldown_ms=60_000,
        **FAST,
    )
    try:
        await q.start()
        await q.add_job("charge", {}, webhook_url="http://127.0.0.1:9/closed")
        await wait_until(lambda: m.list_dlq(), 20)
        key = "job:127.0.0.1"
        assert m.sender.breaker.is_open(key)
        assert await m.replay_dlq(webhook_id="job") == 1
        assert not m.sender.breaker.is_open(key)
        await wait_until(lambda: m.list_dlq(), 20)  # closed port: dead again, after a try
        (dead,) = await m.list_dlq()
        assert dead.history[-1].error and "circuit open" not in dead.history[-1].error
        assert m.sender.breaker.is_open(key)
        assert await m.retry_delivery("job", dead.event_id) is True
        assert not m.sender.breaker.is_open(key)
    finally:
        await q.close()
