"""Signed webhooks (kitium_queue.features.webhooks), against a real Redis and a real HTTP
receiver on loopback (``_webhook_receiver.Receiver``).

* Signatures verify with ``verify_webhook``; a tampered body, a stale or future
  timestamp, a wrong secret fail; during a rotation both secrets verify.
* The SSRF guard refuses loopback (by default), link-local / metadata, private, IPv6
  loopback, IPv4-mapped private addresses and names resolving to them, decided before a
  connection is opened: the network backend under the guard fails the test if it is ever
  asked to connect, and names resolve through a stub (no DNS, no packet leaves loopback).
* Registrations live in Redis (every process sees them); secrets never reach Redis.
* Guaranteed: a flaky endpoint (fails half the requests) receives the completion event
  of each of 2,000 jobs at least once (duplicates counted by webhook-id); a dead
  endpoint's events end in the webhook DLQ (with durable ``webhook-dlq`` entries and
  in-process ``queue.on`` events) and are delivered after a replay once it is back;
  the per-endpoint breaker sends far fewer requests than attempts to a failing endpoint.
* A name connects to the address the guard checked, with the URL's host in the request;
  a silent endpoint times out (the whole request is bounded).
* Reliable / best-effort: in-memory retries; a job's own ``webhook_url``; ``send_event``,
  ``retry_delivery``, ``get_delivery_history``; started / progress for guaranteed ones.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers import wait_until
from kitium_queue import ConfigurationError, JobQueue
from kitium_queue.features.webhooks import (
    AddressPolicy,
    BlockedAddressError,
    GuardedTransport,
    JobWebhookConfig,
    WebhookConfig,
    WebhookDeliveryStrategy,
    WebhookEvent,
    WebhookEventType,
    WebhookManager,
    WebhookVerificationError,
    generate_secret,
    signature_header,
    verify_webhook,
)
from kitium_queue.features.webhooks.signing import secret_key

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from chaos.receiver import Receiver  # noqa: E402

pytestmark = pytest.mark.redis_only

LOOPBACK = ["127.0.0.0/8"]
FAST = dict(allow_networks=LOOPBACK, backoff_ms=20, max_backoff_ms=200, poll_ms=10, lease_ms=5_000)


@pytest.fixture
async def queue(redis_url: str, prefix: str) -> AsyncIterator[JobQueue]:
    q = JobQueue("wh", redis=redis_url, prefix=prefix, worker={"concurrency": 50})

    @q.process("noop")
    async def noop(job: Any) -> int:
        return 1

    yield q
    await q.close()


# ---------------------------------------------------------------------- signing
def test_signature_verifies_and_rejects_tampering() -> None:
    s1, s2 = generate_secret(), generate_secret()
    body = b'{"type":"job-completed","data":{"job_id":"1"}}'
    now = int(time.time())
    hdr = {
        "webhook-id": "evt_1",
        "webhook-timestamp": str(now),
        "webhook-signature": signature_header([secret_key(s1)], "evt_1", now, body),
    }
    verify_webhook(body, hdr, s1)
    verify_webhook(body.decode(), {k.upper(): v for k, v in hdr.items()}, [s2, s1])
    with pytest.raises(WebhookVerificationError, match="no valid signature"):
        verify_webhook(body + b" ", hdr, s1)  # tampered body
    with pytest.raises(WebhookVerificationError, match="no valid signature"):
        verify_webhook(body, {**hdr, "webhook-id": "evt_2"}, s1)  # tampered id
    with pytest.raises(WebhookVerificationError, match="no valid signature"):
        verify_webhook(body, hdr, s2)  # wrong secret
    with pytest.raises(WebhookVerificationError, match="too old"):
        verify_webhook(body, hdr, s1, now=now + 301)
    with pytest.raises(WebhookVerificationError, match="future"):
        verify_webhook(body, hdr, s1, now=now - 301)
    with pytest.raises(WebhookVerificationError, match="missing header webhook-signature"):
        verify_webhook(body, {k: v for k, v in hdr.items() if k != "webhook-signature"}, s1)
    # A re-signed timestamp does not help an attacker without the secret.
    with pytest.raises(WebhookVerificationError):
        verify_webhook(body, {**hdr, "webhook-timestamp": str(now + 1)}, s1)
    with pytest.raises(ConfigurationError):
        verify_webhook(body, hdr, "not-a-secret")


async def test_rotation_both_secrets_accepted(queue: JobQueue, receiver: Receiver) -> None:
    old, new = generate_secret(), generate_secret()
    m = WebhookManager(queue, **FAST)
    hook = await m.register_webhook(
        WebhookConfig(url=receiver.url, secret=old, events=["app-ping"])
    )
    await queue.start()
    await m.send_event(WebhookEvent("app-ping", {"n": 1}))
    await wait_until(lambda: len(receiver.ok()) == 1, 10)
    m.rotate_secret(hook.id, new, keep_old_s=60)
    await m.send_event(WebhookEvent("app-ping", {"n": 2}))
    await wait_until(lambda: len(receiver.ok()) == 2, 10)
    first, second = receiver.ok()
    verify_webhook(first.body, first.headers, old)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(first.body, first.headers, new)
    # During the rotation the request carries both signatures: either secret verifies.
    assert len(second.headers["webhook-signature"].split()) == 2
    verify_webhook(second.body, second.headers, old)
    verify_webhook(second.body, second.headers, new)
    m.rotate_secret(hook.id, generate_secret(), keep_old_s=0)  # old ones expire at once
    await m.send_event(WebhookEvent("app-ping", {"n": 3}))
    await wait_until(lambda: len(receiver.ok()) == 3, 10)
    third = receiver.ok()[2]
    for s in (old, new):
        with pytest.raises(WebhookVerificationError):
            verify_webhook(third.body, third.headers, s)


# ---------------------------------------------------------------------- SSRF guard
class NoConnect:
    """A network backend that fails the test if a connection is ever asked for."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, int]] = []

    async def connect_tcp(self, host: str, port: int, **kw: Any) -> Any:
        self.asked.append((host, port))
        raise AssertionError(f"the SSRF guard let a connection to {host}:{port} through")


NAMES = {
    "metadata.example": ["169.254.169.254"],
    "internal.example": ["10.0.0.1"],
    "local.example": ["127.0.0.1"],
    "v6local.example": ["::1"],
    "mapped.example": ["::ffff:10.0.0.1"],
    "mixed.example": ["93.184.216.34", "10.0.0.1"],  # one private address is enough
}


async def stub_resolver(host: str, port: int) -> list[str]:
    return NAMES[host]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "http://[::1]:8080/",
        "http://[::ffff:10.0.0.1]/",
        "http://0.0.0.0/",
        "http://[fd00:ec2::254]/",
        "http://100.64.0.1/",
        *(f"https://{name}/hook" for name in NAMES),
    ],
)
async def test_ssrf_guard_refuses_before_connecting(url: str) -> None:
    inner = NoConnect()
    transport = GuardedTransport(AddressPolicy(), resolver=stub_resolver, inner=inner)
    async with httpx.AsyncClient(transport=transport, trust_env=False) as client:
        with pytest.raises(BlockedAddressError, match="SSRF guard"):
            await client.post(url, content=b"{}")
    assert inner.asked == []


def test_address_policy_allow_list() -> None:
    assert AddressPolicy().refusal("127.0.0.1")
    assert AddressPolicy(["127.0.0.0/8"]).refusal("127.0.0.1") is None
    assert AddressPolicy(["127.0.0.0/8"]).refusal("::ffff:127.0.0.1") is None
    assert AddressPolicy(["127.0.0.0/8"]).refusal("10.0.0.1")
    assert AddressPolicy().refusal("93.184.216.34") is None
    with pytest.raises(ConfigurationError):
        AddressPolicy(["not a network"])


async def test_ssrf_guard_in_delivery(queue: JobQueue) -> None:
    inner = NoConnect()
    m = WebhookManager(queue, resolver=stub_resolver, connector=inner, backoff_ms=10, poll_ms=10)
    for url in (
        "http://127.0.0.1:9/h",
        "http://169.254.169.254/",
        "http://10.0.0.1/",
        "http://[::1]/",
        "http://[::ffff:10.0.0.1]/",
    ):
        with pytest.raises(BlockedAddressError):
            await m.register_webhook(WebhookConfig(url=url, secret=generate_secret()))
    hook = await m.register_webhook(
        WebhookConfig(
            url="https://metadata.example/hook", secret=generate_secret(), events=["job-completed"]
        )
    )
    await queue.start()
    job_id = await queue.add_job("noop", {})
    await wait_until(lambda: m.list_dlq(), 10)
    (dead,) = await m.list_dlq()
    assert dead.webhook_id == hook.id and dead.state == "dead"
    assert "SSRF guard" in (dead.last_error or "") and dead.attempts == 1  # no retries
    assert inner.asked == []
    assert (await queue.get_job_status(job_id)).status == "completed"


async def test_redirects_not_followed(queue: JobQueue) -> None:
    rec = await Receiver(status=lambda r: 302).start()
    try:
        m = WebhookManager(queue, **FAST)
        hook = await m.register_webhook(
            WebhookConfig(url=rec.url, secret=generate_secret(), events=["app-ping"], max_retries=0)
        )
        await queue.start()
        eid = await m.send_event(WebhookEvent("app-ping"))
        await wait_until(lambda: m.list_dlq(), 10)
        (rec1,) = await m.get_delivery_history(hook.id, eid)
        assert rec1.last_status == 302 and "redirects are not followed" in rec1.last_error
        assert len(rec.requests) == 1
    finally:
        await rec.stop()


# ---------------------------------------------------------------------- registrations
async def test_registrations_shared_and_secrets_not_stored(
    redis_url: str, prefix: str, queue: JobQueue, receiver: Receiver, redis_client: Any
) -> None:
    secret = generate_secret()
    m = WebhookManager(queue, **FAST)
    hook = await m.register_webhook(
        WebhookConfig(
            url=receiver.url,
            secret=secret,
            id="orders",
            headers={"x-team": "a"},
            events=[WebhookEventType.JOB_COMPLETED, "job-dlq"],
            max_retries=3,
        )
    )
    with pytest.raises(ConfigurationError, match="exists"):
        await m.register_webhook(WebhookConfig(url=receiver.url, id="orders"))
    with pytest.raises(ConfigurationError, match="reserved"):
        await m.register_webhook(WebhookConfig(url=receiver.url, id="job"))
    for bad, match in (
        ({"url": "ftp://x/"}, "https"),
        ({"url": "http://u:p@x.io/"}, "credentials"),
        ({"url": receiver.url, "events": []}, "1-64"),
        ({"url": receiver.url, "headers": {"webhook-id": "x"}}, "sender"),
        ({"url": receiver.url, "delivery_strategy": "sometimes"}, "strategy"),
        ({"url": receiver.url, "max_retries": -1}, "max_retries"),
    ):
        with pytest.raises(ConfigurationError, match=match):
            await m.register_webhook(WebhookConfig(**bad))
    # Another process (another queue object) sees the registration, without the secret.
    other_q = JobQueue("wh", redis=redis_url, prefix=prefix)
    try:
        other = WebhookManager(other_q, allow_networks=LOOPBACK, run_service=False)
        (seen,) = await other.list_webhooks()
        assert seen.id == "orders" and seen.events == ("job-completed", "job-dlq")
        assert seen.headers == {"x-team": "a"} and seen.max_retries == 3
        assert not other.secrets.has("orders") and m.secrets.has("orders")
        updated = await other.update_webhook("orders", active=False, max_retries=5)
        assert (await m.get_webhook("orders")) == updated
        with pytest.raises(ConfigurationError, match="cannot update secret"):
            await other.update_webhook("orders", secret=secret)
        assert await other.remove_webhook(hook.id) is True
        assert await m.list_webhooks() == []
    finally:
        await other_q.close()
    # The secret (or its key bytes) appears nowhere in Redis.
    key_b64 = secret.split("_", 1)[1].encode()
    async for key in redis_client.scan_iter(match=f"{prefix}*"):
        kind = (await redis_client.type(key)).decode()
        dump = await redis_client.dump(key) if kind != "none" else b""
        assert key_b64 not in (dump or b"") and secret.encode() not in (dump or b"")


# ---------------------------------------------------------------------- guaranteed
@pytest.mark.timeout(240)
async def test_flaky_endpoint_gets_every_event_of_2000_jobs(queue: JobQueue) -> None:
    rnd = random.Random(15)
    rec = await Receiver(status=lambda r: 200 if rnd.random() < 0.5 else 503).start()
    try:
        m = WebhookManager(queue, breaker_threshold=1000, **FAST)
        secret = generate_secret()
        await m.register_webhook(
            WebhookConfig(url=rec.url, secret=secret, max_retries=40, events=["job-completed"])
        )
        await queue.start()
        n = 2000
        ids = set()
        for i in range(0, n, 500):
            ids |= set(await queue.add_jobs([("noop", {"i": j}) for j in range(i, i + 500)]))

        seen: set[str] = set()
        read = [0]

        def seen_jobs() -> set[str]:
            # Parse only the requests that arrived since the last look: parsing all of
            # them every poll starved the event loop the deliveries run on.
            ok = rec.ok()
            seen.update(r.json()["data"]["job_id"] for r in ok[read[0] :])
            read[0] = len(ok)
            return seen

        await wait_until(lambda: len(seen_jobs()) == n, 200, interval=0.1)
        assert seen_jobs() == ids
        ok_ids = rec.ids()
        assert all(r.json()["type"] == "job-completed" for r in rec.ok())
        failed = len(rec.requests) - len(rec.ok())
        print(
            f"\n{n} jobs: {len(rec.requests)} requests, {failed} answered 503, "
            f"{sum(ok_ids.values()) - len(ok_ids)} duplicate deliveries"
        )
        assert failed > n / 3  # the endpoint really was flaky
        for r in rec.requests[:50]:
            verify_webhook(r.body, r.headers, secret)
        st = await m.stats()
        assert st["dlq"] == 0
    finally:
        await rec.stop()


async def test_delivery_gives_way_to_running_jobs_only(queue: JobQueue) -> None:
    # An idle worker keeps slots reserved for the claim riding on its wake-up wait: those
    # must not pace delivery (they capped it at `batch` per second while nothing ran).
    release = asyncio.Event()

    @queue.process("hold")
    async def hold(job: Any) -> None:
        await release.wait()

    m = WebhookManager(queue, **FAST)
    await queue.start()
    worker = queue.worker
    assert worker is not None
    # Idle: nothing runs, nothing is being claimed, the wake-up wait holds its slots.
    await wait_until(lambda: worker.slots_taken() > 0 and not worker.busy(), 5)
    assert m.service.pause_after(0.5) == 0.0, "an idle worker paced delivery"
    await queue.add_job("hold")
    try:
        await wait_until(lambda: bool(worker.leases.runs), 5)
        # A job runs: 0.5 s spent at busy_share 0.2 asks for 2 s, capped at 1 s.
        assert m.service.pause_after(0.5) == 1.0
        assert m.service.pause_after(0.05) == pytest.approx(0.2)
    finally:
        release.set()


async def test_dead_endpoint_dlq_then_replay(
    queue: JobQueue, receiver: Receiver, redis_client: Any
) -> None:
    await receiver.stop()  # dead: connection refused
    seen: list[Any] = []
    queue.on("webhook-dlq", seen.append)  # in-process notification
    m = WebhookManager(queue, **FAST)
    hook = await m.register_webhook(
        WebhookConfig(
            url=receiver.url, secret=generate_secret(), max_retries=2, events=["job-completed"]
        )
    )
    await queue.start()
    ids = await queue.add_jobs([("noop", {}) for _ in range(20)])
    await wait_until(lambda: _count(m.list_dlq(limit=100), 20), 20)
    dead = await m.list_dlq(limit=100)
    assert {d.state for d in dead} == {"dead"} and all(d.attempts == 3 for d in dead)
    assert all(len(d.history) == 3 for d in dead)
    events = await redis_client.xrange(queue.keys.events)
    assert sum(1 for _, f in events if f[b"e"] == b"webhook-dlq") == 20
    assert receiver.requests == []
    assert len(seen) == 20 and {e.extra["webhook_id"] for e in seen} == {hook.id}
    assert {e.extra["event_type"] for e in seen} == {"job-completed"}
    await receiver.start()  # it comes back
    assert await m.replay_dlq(webhook_id=hook.id) == 20
    await wait_until(lambda: len(receiver.ok()) >= 20, 20)
    assert {r.json()["data"]["job_id"] for r in receiver.ok()} == set(ids)
    assert await m.list_dlq() == []
    eid = receiver.ok()[0].id

    async def delivered() -> Any:
        (rec,) = await m.get_delivery_history(hook.id, eid)
        return rec if rec.state == "delivered" else None

    rec = await wait_until(delivered, 10)
    assert rec.attempts == 1 and len(rec.history) == 4


async def _count(aw: Any, n: int) -> bool:
    return len(await aw) >= n


async def test_breaker_spares_a_failing_endpoint(queue: JobQueue) -> None:
    rec = await Receiver(status=lambda r: 500).start()
    try:
        m = WebhookManager(queue, breaker_threshold=3, breaker_cooldown_ms=1_000, **FAST)
        await m.register_webhook(
            WebhookConfig(
                url=rec.url, secret=generate_secret(), max_retries=3, events=["job-completed"]
            )
        )
        await queue.start()
        await queue.add_jobs([("noop", {}) for _ in range(50)])
        # 50 deliveries of 4 attempts with backoff: a bound for a loaded machine.
        await wait_until(lambda: _count(m.list_dlq(limit=100), 50), 60)
        attempts = sum(d.attempts for d in await m.list_dlq(limit=100))
        assert attempts == 200
        # Requests in flight when the breaker opened still went out; the rest did not.
        assert len(rec.requests) < 80, len(rec.requests)
        errors = {a.error for d in await m.list_dlq(limit=100) for a in d.history}
        assert any(e and "circuit open" in e for e in errors)
    finally:
        await rec.stop()


async def test_job_webhook_url_and_added_event(queue: JobQueue, receiver: Receiver) -> None:
    with pytest.raises(ConfigurationError, match="webhook_url"):
        await queue.add_job("noop", {}, webhook_url=receiver.url)  # feature not enabled
    secret = generate_secret()
    m = WebhookManager(
        queue,
        job_webhook=JobWebhookConfig(secret=secret, events=["job-added", "job-completed"]),
        **FAST,
    )
    with pytest.raises(ConfigurationError, match="webhook_url"):
        await queue.add_job("noop", {}, webhook_url="file:///etc/passwd")
    await queue.start()
    job_id = await queue.add_job("noop", {}, webhook_url=receiver.url)
    await queue.add_job("noop", {})  # no URL: nothing sent
    await wait_until(lambda: len(receiver.ok()) == 2, 10)
    await asyncio.sleep(0.2)
    assert [r.json()["type"] for r in receiver.ok()] == ["job-added", "job-completed"]
    for r in receiver.ok():
        verify_webhook(r.body, r.headers, secret)
        assert r.json()["data"]["job_id"] == job_id
    (record,) = await m.get_delivery_history("job", receiver.ok()[1].id)
    assert record.state == "delivered"


async def test_send_event_retry_and_history(queue: JobQueue, receiver: Receiver) -> None:
    m = WebhookManager(queue, **FAST)
    hook = await m.register_webhook(
        WebhookConfig(url=receiver.url, secret=generate_secret(), events=["invoice-paid"])
    )
    await queue.start()
    eid = await m.send_event(WebhookEvent("invoice-paid", {"invoice": 7}, id="evt_inv7"))
    assert eid == "evt_inv7"
    await wait_until(lambda: len(receiver.ok()) == 1, 10)
    assert receiver.ok()[0].json()["data"] == {"invoice": 7}
    await wait_until(lambda: m.get_delivery_history(hook.id, eid), 5)
    assert await m.retry_delivery(hook.id, eid) is True  # a manual re-send
    await wait_until(lambda: len(receiver.ok()) == 2, 10)
    assert receiver.ids() == {"evt_inv7": 2}
    assert await m.retry_delivery(hook.id, "evt_nope") is False
    latest = await m.get_delivery_history(hook.id)
    assert [r.event_id for r in latest] == ["evt_inv7"]
    with pytest.raises(ConfigurationError):
        await m.send_event(WebhookEvent("invoice-paid", {"x": object()}))


async def test_reliable_and_best_effort(queue: JobQueue, redis_client: Any) -> None:
    tries: dict[str, int] = {}

    def flaky_twice(r: Any) -> int:
        tries[r.id] = tries.get(r.id, 0) + 1
        return 200 if tries[r.id] > 2 else 500

    good = await Receiver(status=flaky_twice).start()
    bad = await Receiver(status=lambda r: 500).start()
    try:
        m = WebhookManager(queue, breaker_threshold=100, **FAST)
        await m.register_webhook(
            WebhookConfig(
                url=good.url,
                secret=generate_secret(),
                events=["job-completed"],
                delivery_strategy=WebhookDeliveryStrategy.RELIABLE,
                max_retries=3,
            )
        )
        once = await m.register_webhook(
            WebhookConfig(
                url=bad.url,
                secret=generate_secret(),
                events=["job-completed"],
                delivery_strategy="best-effort",
                max_retries=5,
            )
        )
        await queue.start()
        ids = await queue.add_jobs([("noop", {}) for _ in range(10)])
        await wait_until(lambda: len(good.ok()) == 10, 10)
        assert {r.json()["data"]["job_id"] for r in good.ok()} == set(ids)
        await wait_until(lambda: _count(m.get_delivery_history(once.id), 10), 10)
        assert len(bad.requests) == 10  # one try each
        hist = await m.get_delivery_history(once.id)
        assert {h.state for h in hist} == {"failed"}
        events = await redis_client.xrange(queue.keys.events)
        assert sum(1 for _, f in events if f[b"e"] == b"webhook-failed") == 10
        assert await m.list_dlq() == []  # the DLQ is for guaranteed deliveries
    finally:
        await good.stop()
        await bad.stop()


async def test_started_and_progress_for_guaranteed(queue: JobQueue, receiver: Receiver) -> None:
    @queue.process("report")
    async def report(job: Any) -> None:
        await job.update_progress({"pct": 50})

    m = WebhookManager(queue, **FAST)
    await m.register_webhook(
        WebhookConfig(
            url=receiver.url, secret=generate_secret(), events=["job-started", "job-progress"]
        )
    )
    await queue.start()
    job_id = await queue.add_job("report", {})
    await wait_until(lambda: len(receiver.ok()) == 2, 10)
    got = {r.json()["type"]: r.json()["data"] for r in receiver.ok()}
    assert got["job-started"]["job_id"] == job_id
    assert got["job-progress"]["progress"] == {"pct": 50}


async def test_a_silent_endpoint_times_out(queue: JobQueue) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        await asyncio.sleep(30)  # never answers

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        m = WebhookManager(queue, **FAST)
        hook = await m.register_webhook(
            WebhookConfig(
                url=f"http://127.0.0.1:{port}/",
                secret=generate_secret(),
                events=["app-ping"],
                timeout_ms=300,
                max_retries=0,
            )
        )
        await queue.start()
        eid = await m.send_event(WebhookEvent("app-ping"))
        await wait_until(lambda: m.list_dlq(), 10)
        (rec,) = await m.get_delivery_history(hook.id, eid)
        assert rec.state == "dead" and rec.last_error == "timed out after 300 ms"
        assert 250 <= rec.history[0].duration_ms < 3000
    finally:
        server.close()


async def test_a_name_connects_to_its_vetted_address_with_its_host(
    queue: JobQueue, receiver: Receiver
) -> None:
    """The guard resolves the name itself and connects to the address it checked; the
    request still names the URL's host (no second lookup, nothing to rebind)."""
    asked: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        asked.append(host)
        return ["127.0.0.1"]

    m = WebhookManager(queue, resolver=resolver, **FAST)
    await m.register_webhook(
        WebhookConfig(
            url=f"http://hooks.example:{receiver.port}/in",
            secret=generate_secret(),
            events=["app-ping"],
        )
    )
    await queue.start()
    await m.send_event(WebhookEvent("app-ping"))
    await wait_until(lambda: receiver.ok(), 10)
    assert receiver.ok()[0].headers["host"] == f"hooks.example:{receiver.port}"
    assert asked == ["hooks.example"]
