"""A callable secrets source (a team's vault) never runs on the event loop, against a
real Redis and a receiver on loopback (the SSRF guard's opt-in for 127.0.0.0/8).

* A plain callable that blocks (``time.sleep``, as an HTTP call to a secrets manager
  does) runs on a thread: the loop goes on ticking while it sleeps, and deliveries are
  signed with its secret and verify. An ``async def`` source, or a callable returning an
  awaitable, is awaited.
* Its answer is cached per webhook id (``secret_cache_s``): a burst of deliveries to one
  endpoint asks it once, and lookups wanted at once share one call; a secret set here
  still takes precedence at once.
* A source that raises, takes longer than ``secret_timeout_s`` or answers something that
  is not a secret or a list of them: the delivery is not sent, is retried, and is
  delivered once the source answers; the log line names the webhook id and the problem,
  never a secret nor the source's exception text.
* ``keys()`` / ``has()`` and ``rotate_secret`` never call a callable source.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import pytest

from helpers import wait_until
from kitium_queue import ConfigurationError, JobQueue
from kitium_queue.features.webhooks import (
    SecretStore,
    WebhookConfig,
    WebhookEvent,
    WebhookManager,
    WebhookVerificationError,
    generate_secret,
    verify_webhook,
)
from test_webhooks import FAST, Receiver

pytestmark = pytest.mark.redis_only

#: A tick later than this means the loop was held. Each source call below blocks for
#: VAULT_S, so one run on the loop's thread stalls it at least that long; the gap between
#: the two leaves room for a machine busy with other work (a tick ~0.4 s late was seen in
#: a full-suite run on two cores).
LATE_TICK_S = 0.8
VAULT_S = 1.5


@pytest.fixture
async def queue(redis_url: str, prefix: str) -> AsyncIterator[JobQueue]:
    q = JobQueue("whsrc", redis=redis_url, prefix=prefix)
    yield q
    await q.close()


class Ticker:
    """A task ticking every 10 ms; ``worst`` is the longest gap between two ticks."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.ticks = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            self.worst, last = max(self.worst, now - last), now
            self.ticks += 1

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def _delivered(m: WebhookManager, wid: str, eid: str, timeout: float = 15) -> Any:
    async def done() -> Any:
        recs = await m.get_delivery_history(wid, eid)
        return recs[0] if recs and recs[0].state == "delivered" else None

    return await wait_until(done, timeout)


async def _one_delivery(queue: JobQueue, receiver: Receiver, source: Any, **kw: Any) -> Any:
    """One event to webhook ``pay`` (the receiver) with ``source`` for its secrets: its
    delivery record once delivered."""
    m = WebhookManager(queue, secrets=source, **kw, **FAST)
    await m.register_webhook(WebhookConfig(url=receiver.url, id="pay", events=["app-ping"]))
    await m.service.start(queue)
    try:
        eid = await m.send_event(WebhookEvent("app-ping", {}))
        return await _delivered(m, "pay", eid)
    finally:
        await m.service.stop()


async def test_blocking_source_runs_off_the_loop(queue: JobQueue, receiver: Receiver) -> None:
    secret = generate_secret()
    loop_thread = threading.get_ident()
    threads: list[int] = []

    def vault(webhook_id: str) -> list[str]:
        threads.append(threading.get_ident())
        time.sleep(VAULT_S)  # a blocking HTTP call to a secrets manager
        return [secret]

    # Three endpoints: the source is asked for each (each call stalled the loop before).
    m = WebhookManager(queue, secrets=vault, **FAST)
    wids = ["pay0", "pay1", "pay2"]
    for wid in wids:
        await m.register_webhook(WebhookConfig(url=receiver.url, id=wid, events=["app-ping"]))
    ticker = Ticker()
    await m.service.start(queue)
    ticker.start()
    try:
        eid = await m.send_event(WebhookEvent("app-ping", {}))
        for wid in wids:
            await _delivered(m, wid, eid)
    finally:
        await ticker.stop()
        await m.service.stop()
    assert len(threads) == 3 and loop_thread not in threads  # never on the loop's thread
    assert ticker.ticks > 0 and ticker.worst < LATE_TICK_S, ticker.worst
    assert len(receiver.ok()) == 3
    for req in receiver.ok():
        verify_webhook(req.body, req.headers, secret)


@pytest.mark.parametrize("kind", ["async def", "returns an awaitable"])
async def test_async_source_is_awaited(queue: JobQueue, receiver: Receiver, kind: str) -> None:
    secret = generate_secret()
    calls: list[str] = []

    async def vault(webhook_id: str) -> list[str]:
        calls.append(webhook_id)
        await asyncio.sleep(0.05)  # an async vault client
        return [secret]

    def wrapped(webhook_id: str) -> Awaitable[list[str]]:
        return vault(webhook_id)

    source = vault if kind == "async def" else wrapped
    rec = await _one_delivery(queue, receiver, source)
    assert rec.attempts == 1 and calls == ["pay"]
    (req,) = receiver.ok()
    verify_webhook(req.body, req.headers, secret)


async def test_burst_to_one_endpoint_asks_the_source_once(
    queue: JobQueue, receiver: Receiver
) -> None:
    secret, own = generate_secret(), generate_secret()
    calls: list[str] = []

    def vault(webhook_id: str) -> str:
        calls.append(webhook_id)
        time.sleep(0.05)
        return secret

    m = WebhookManager(queue, secrets=vault, **FAST)  # cached for 60 s by default
    await m.register_webhook(WebhookConfig(url=receiver.url, id="pay", events=["app-ping"]))
    await m.service.start(queue)
    try:
        ids = [await m.send_event(WebhookEvent("app-ping", {"n": n})) for n in range(20)]
        for eid in ids:
            await _delivered(m, "pay", eid)
        assert calls == ["pay"]
        for req in receiver.ok():
            verify_webhook(req.body, req.headers, secret)
        # A secret set in this process takes precedence at once, over the cached one.
        m.set_secret("pay", own)
        last = await m.send_event(WebhookEvent("app-ping", {"n": "own"}))
        await _delivered(m, "pay", last)
    finally:
        await m.service.stop()
    req = next(r for r in receiver.ok() if r.id == last)
    verify_webhook(req.body, req.headers, own)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(req.body, req.headers, secret)
    assert calls == ["pay"]


async def test_lookups_at_once_share_one_call_and_the_cache_expires() -> None:
    secret = generate_secret()
    calls: list[str] = []

    def vault(webhook_id: str) -> list[str]:
        calls.append(webhook_id)
        time.sleep(0.2)
        return [secret]

    store = SecretStore(vault, cache_s=0)
    got = await asyncio.gather(*(store.fetch("a") for _ in range(10)))
    assert calls == ["a"] and all(g == got[0] and len(g) == 1 for g in got)
    await store.fetch("a")  # no cache: asked again
    assert calls == ["a", "a"]

    cached = SecretStore(vault, cache_s=0.3)
    await cached.fetch("b")
    await cached.fetch("b")
    assert calls.count("b") == 1
    await asyncio.sleep(0.4)
    await cached.fetch("b")
    assert calls.count("b") == 2
    cached.forget("b")
    await cached.fetch("b")
    assert calls.count("b") == 3


async def test_sync_reads_and_rotation_never_call_the_source(
    queue: JobQueue, receiver: Receiver
) -> None:
    old, new = generate_secret(), generate_secret()
    calls: list[str] = []

    def vault(webhook_id: str) -> list[str]:
        calls.append(webhook_id)
        time.sleep(0.05)
        return [old]

    m = WebhookManager(queue, secrets=vault, **FAST)
    # Not asked yet: it may have one (has), and keys() is not the whole answer (known).
    assert m.secrets.has("pay") and not m.secrets.known("pay") and m.secrets.keys("pay") == []
    m.rotate_secret("pay", new, keep_old_s=3600)
    assert calls == []  # nothing asked on the loop
    assert len(m.secrets.keys("pay")) == 1  # the source's are not known yet: the new one
    await m.register_webhook(WebhookConfig(url=receiver.url, id="pay", events=["app-ping"]))
    await m.service.start(queue)
    try:
        eid = await m.send_event(WebhookEvent("app-ping", {}))
        await _delivered(m, "pay", eid)
    finally:
        await m.service.stop()
    assert calls == ["pay"]  # asked by the delivery, off the loop
    # During the overlap both sign: the source's (old) secret and the new one.
    (req,) = receiver.ok()
    assert len(req.headers["webhook-signature"].split()) == 2
    verify_webhook(req.body, req.headers, old)
    verify_webhook(req.body, req.headers, new)
    assert m.secrets.has("pay") and len(m.secrets.keys("pay")) == 2  # now from the cache
    assert calls == ["pay"]


def _source_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("kitium_queue") and "secrets source" in r.getMessage()
    ]


async def test_raising_source_is_retried_until_it_recovers(
    queue: JobQueue, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    secret = generate_secret()
    calls: list[str] = []

    def vault(webhook_id: str) -> list[str]:
        calls.append(webhook_id)
        if len(calls) <= 2:
            raise RuntimeError(f"vault down, token {secret}")
        return [secret]

    caplog.set_level(logging.WARNING)
    rec = await _one_delivery(queue, receiver, vault)
    assert rec.attempts == 3 and len(calls) == 3
    first = rec.history[0].error or ""
    assert "raised RuntimeError for webhook 'pay'" in first and "not sent" in first
    (req,) = receiver.ok()  # nothing went out unsigned
    verify_webhook(req.body, req.headers, secret)
    lines = _source_lines(caplog)
    assert lines and "'pay'" in lines[0] and "RuntimeError" in lines[0]
    assert not any(secret in line or "vault down" in line for line in lines)
    assert all(secret not in (a.error or "") for a in rec.history)


@pytest.mark.parametrize(
    "bad, named",
    [
        (12345, "returned int"),
        (b"whsec_bytes", "returned bytes"),
        ({"pay": "x"}, "returned dict"),
        (["whsec_x", 7], "returned a sequence holding int"),
    ],
)
async def test_bad_answer_is_a_clear_error_and_retried(
    queue: JobQueue,
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
    bad: Any,
    named: str,
) -> None:
    secret = generate_secret()
    calls: list[str] = []

    def vault(webhook_id: str) -> Any:
        calls.append(webhook_id)
        return bad if len(calls) == 1 else [secret]

    caplog.set_level(logging.WARNING)
    rec = await _one_delivery(queue, receiver, vault)
    assert rec.attempts == 2
    first = rec.history[0].error or ""
    assert f"{named} for webhook 'pay', not a secret (str) or a list of them" in first
    lines = _source_lines(caplog)
    assert lines and named in lines[0] and "'pay'" in lines[0]
    (req,) = receiver.ok()
    verify_webhook(req.body, req.headers, secret)


async def test_slow_source_times_out_and_is_retried(queue: JobQueue, receiver: Receiver) -> None:
    secret = generate_secret()
    calls: list[str] = []

    def vault(webhook_id: str) -> list[str]:
        calls.append(webhook_id)
        if len(calls) == 1:
            time.sleep(1.0)  # hangs past the bound
        return [secret]

    rec = await _one_delivery(queue, receiver, vault, secret_timeout_s=0.2)
    assert rec.attempts >= 2
    assert "took longer than 0.2 s for webhook 'pay'" in (rec.history[0].error or "")
    (req,) = receiver.ok()
    verify_webhook(req.body, req.headers, secret)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"secret_cache_s": -1}, "secret_cache_s"),
        ({"secret_cache_s": float("nan")}, "secret_cache_s"),
        ({"secret_timeout_s": 0}, "secret_timeout_s"),
        ({"secret_timeout_s": "10"}, "secret_timeout_s"),
    ],
)
async def test_bad_cache_and_timeout_settings_are_refused(
    queue: JobQueue, options: dict[str, Any], match: str
) -> None:
    with pytest.raises(ConfigurationError, match=match):
        WebhookManager(queue, **options)
