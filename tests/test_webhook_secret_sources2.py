"""Secret sources, continued (docs/webhooks.md, "Endpoints"), against a real Redis and a
receiver on loopback (the SSRF guard's opt-in for 127.0.0.0/8).

* A callable source may have a secret for any id: before it is asked, ``has(id)`` says
  so (True) and ``known(id)`` that ``keys(id)`` is not the whole answer; ``await
  check(id)`` asks it as a delivery does (cached). None of the sync reads calls it.
* A malformed secret from a callable source or a mapping (a vault mid-rotation) fails
  that attempt only: retried with the delivery's backoff and delivered once the source
  answers a good one; the error and the log line name the webhook id, never the value.
* The advanced configuration's ``webhooks`` section takes ``secret_cache_s``,
  ``secret_timeout_s`` and a callable ``secrets``, hands them to the manager, and
  refuses a bad number naming the option and its range.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
from collections.abc import AsyncIterator
from typing import Any

import pytest

from helpers import wait_until
from kitium_queue import ConfigurationError, JobQueue
from kitium_queue.features.advanced import AdvancedQueueConfig, WebhooksConfig
from kitium_queue.features.webhooks import (
    SecretSourceError,
    SecretStore,
    WebhookConfig,
    WebhookEvent,
    WebhookManager,
    generate_secret,
    verify_webhook,
)
from kitium_queue.features.webhooks.secretstore import (
    DEFAULT_SECRET_CACHE_S,
    DEFAULT_SECRET_TIMEOUT_S,
    MAX_SECRET_CACHE_S,
    MAX_SECRET_TIMEOUT_S,
)
from test_webhooks import FAST, LOOPBACK, Receiver

pytestmark = pytest.mark.redis_only


@pytest.fixture
async def queue(redis_url: str, prefix: str) -> AsyncIterator[JobQueue]:
    q = JobQueue("whsrc2", redis=redis_url, prefix=prefix)
    yield q
    await q.close()


async def _settled(m: WebhookManager, wid: str, eid: str) -> Any:
    """The delivery record of ``eid`` to ``wid`` once it is no longer pending (delivered,
    or given up: a test then fails on its state rather than waiting out a time-out)."""

    async def done() -> Any:
        recs = await m.get_delivery_history(wid, eid)
        return recs[0] if recs and recs[0].state != "pending" else None

    return await wait_until(done, 15)


async def _deliver(m: WebhookManager, queue: JobQueue, receiver: Receiver) -> Any:
    """One event to webhook ``pay`` (the receiver): its record once settled."""
    await m.register_webhook(WebhookConfig(url=receiver.url, id="pay", events=["app-ping"]))
    await m.service.start(queue)
    try:
        eid = await m.send_event(WebhookEvent("app-ping", {}))
        return await _settled(m, "pay", eid)
    finally:
        await m.service.stop()


# ---------------------------------------------------------------- has / known / check
async def test_callable_source_may_have_any_id_until_asked(
    queue: JobQueue, receiver: Receiver
) -> None:
    secret, new = generate_secret(), generate_secret()
    vault = {"pay": [secret]}
    calls: list[str] = []

    def source(webhook_id: str) -> list[str] | None:
        calls.append(webhook_id)
        if webhook_id == "boom":
            raise RuntimeError("vault down")
        return vault.get(webhook_id)

    m = WebhookManager(queue, secrets=source, **FAST)
    s = m.secrets
    # Not asked yet: it may have any id (a delivery would ask it); keys() is partial.
    assert s.has("pay") and s.has("nope") and s.has("boom")
    assert not s.known("pay") and s.keys("pay") == []
    m.rotate_secret("moving", new, keep_old_s=3600)  # the source's old one still signs
    assert s.has("moving") and not s.known("moving") and len(s.keys("moving")) == 1
    assert calls == []  # none of these asked it
    # check() asks it as a delivery does, and caches the answer.
    assert await s.check("pay") is True and await s.check("nope") is False
    assert calls == ["pay", "nope"]
    assert s.has("pay") and s.known("pay") and len(s.keys("pay")) == 1
    assert not s.has("nope") and s.known("nope")  # its empty answer, cached: surely none
    s.forget("nope")
    assert s.has("nope") and not s.known("nope")
    # A failing source: check() raises; has() stays "may have" (a failure is not cached).
    with pytest.raises(SecretSourceError, match="raised RuntimeError for webhook 'boom'"):
        await s.check("boom")
    assert s.has("boom") and not s.known("boom")
    # The delivery uses the answer check() cached: the source is not asked again.
    rec = await _deliver(m, queue, receiver)
    assert rec.state == "delivered" and calls.count("pay") == 1
    (req,) = receiver.ok()
    verify_webhook(req.body, req.headers, secret)


async def test_mapping_and_no_source_answer_for_sure(queue: JobQueue) -> None:
    secret = generate_secret()
    m = WebhookManager(queue, secrets={"pay": secret, "bad": "whsec_short"}, **FAST)
    s = m.secrets
    assert s.has("pay") and s.known("pay") and await s.check("pay")
    assert not s.has("other") and s.known("other") and not await s.check("other")
    assert not s.has("bad")  # a value that is not a secret: no usable one
    none = SecretStore()
    assert not none.has("pay") and none.known("pay") and not await none.check("pay")


# ---------------------------------------------------------------- malformed answers
def _short_secret() -> str:
    return "whsec_" + base64.b64encode(b"eight by").decode()  # 8 bytes: too short


@pytest.mark.parametrize(
    "bad",
    [
        "sk_live_not_a_webhook_secret",  # not whsec_
        "whsec_***not-base64***",
        _short_secret(),
        ["GOOD", "whsec_%%%"],  # one good one and one malformed: the answer is bad
    ],
    ids=["prefix", "base64", "length", "list"],
)
async def test_malformed_secret_from_the_source_is_retried(
    queue: JobQueue,
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
    bad: Any,
) -> None:
    secret = generate_secret()
    answer = [secret if s == "GOOD" else s for s in bad] if isinstance(bad, list) else bad
    calls: list[str] = []

    def source(webhook_id: str) -> Any:
        calls.append(webhook_id)
        return answer if len(calls) == 1 else [secret]  # mid-rotation, then the new one

    caplog.set_level(logging.WARNING)
    m = WebhookManager(queue, secrets=source, **FAST)
    rec = await _deliver(m, queue, receiver)
    assert rec.state == "delivered", rec.last_error
    assert rec.attempts == 2 and len(calls) == 2
    first = rec.history[0].error or ""
    assert "the secrets source returned a malformed secret for webhook 'pay'" in first
    assert "not sent" in first
    (req,) = receiver.ok()  # nothing went out unsigned, nor signed with the bad answer
    verify_webhook(req.body, req.headers, secret)
    lines = [r.getMessage() for r in caplog.records if "malformed secret" in r.getMessage()]
    assert lines and "'pay'" in lines[0]
    shown = [*lines, *(a.error or "" for a in rec.history), rec.last_error or ""]
    for value in answer if isinstance(answer, list) else [answer]:
        assert not any(value in text for text in shown)


async def test_malformed_secret_in_a_mapping_is_retried_until_fixed(
    queue: JobQueue, receiver: Receiver
) -> None:
    secret, broken = generate_secret(), "whsec_half-written"
    source = {"pay": broken}  # your config, mid-rotation
    m = WebhookManager(queue, secrets=source, **FAST)
    await m.register_webhook(WebhookConfig(url=receiver.url, id="pay", events=["app-ping"]))
    await m.service.start(queue)
    try:
        eid = await m.send_event(WebhookEvent("app-ping", {}))

        async def failed_twice() -> Any:
            recs = await m.get_delivery_history("pay", eid)
            return recs and (recs[0].attempts >= 2 or recs[0].state != "pending")

        await wait_until(failed_twice, 15)
        source["pay"] = secret
        rec = await _settled(m, "pay", eid)
    finally:
        await m.service.stop()
    assert rec.state == "delivered", rec.last_error
    first = rec.history[0].error or ""
    assert "the secrets mapping holds a malformed secret for webhook 'pay'" in first
    assert all(broken not in (a.error or "") for a in rec.history)
    (req,) = receiver.ok()
    verify_webhook(req.body, req.headers, secret)


# ---------------------------------------------------------------- advanced configuration
async def test_advanced_section_passes_cache_timeout_and_a_callable(
    redis_url: str, prefix: str, receiver: Receiver
) -> None:
    secret = generate_secret()
    calls: list[str] = []

    async def vault(webhook_id: str) -> list[str]:
        calls.append(webhook_id)
        if webhook_id == "slow":
            await asyncio.sleep(2)  # past the configured bound (the default is 10 s)
        return [secret]

    q = JobQueue(
        "whsrc2adv",
        redis=redis_url,
        prefix=prefix,
        advanced={
            "webhooks": {
                "enabled": True,
                "allow_networks": LOOPBACK,
                "run_service": False,
                "secrets": vault,
                "secret_cache_s": 0,
                "secret_timeout_s": 0.3,
            }
        },
    )
    try:
        m = q.advanced.webhooks
        assert (m.secrets.cache_s, m.secrets.timeout_s) == (0.0, 0.3)
        with pytest.raises(SecretSourceError, match=r"took longer than 0\.3 s for webhook 'slow'"):
            await m.secrets.fetch("slow")
        await m.register_webhook(WebhookConfig(url=receiver.url, id="pay", events=["app-ping"]))
        await m.service.start(q)
        try:
            for n in range(2):
                eid = await m.send_event(WebhookEvent("app-ping", {"n": n}))
                rec = await _settled(m, "pay", eid)
                assert rec.state == "delivered", rec.last_error
        finally:
            await m.service.stop()
        assert calls.count("pay") == 2  # secret_cache_s 0: asked at each delivery
        for req in receiver.ok():
            verify_webhook(req.body, req.headers, secret)
        shown = q.advanced.effective()["sections"]["webhooks"]
        assert (shown["secret_cache_s"], shown["secret_timeout_s"]) == (0.0, 0.3)
        assert "secrets" not in shown
    finally:
        await q.close()


def test_section_defaults_and_bounds_are_the_managers() -> None:
    cfg = WebhooksConfig()
    assert (cfg.secret_cache_s, cfg.secret_timeout_s) == (
        DEFAULT_SECRET_CACHE_S,
        DEFAULT_SECRET_TIMEOUT_S,
    )
    top = WebhooksConfig(secret_cache_s=MAX_SECRET_CACHE_S, secret_timeout_s=MAX_SECRET_TIMEOUT_S)
    assert (top.secret_cache_s, top.secret_timeout_s) == (MAX_SECRET_CACHE_S, MAX_SECRET_TIMEOUT_S)
    for option, most in (
        ("secret_cache_s", MAX_SECRET_CACHE_S),
        ("secret_timeout_s", MAX_SECRET_TIMEOUT_S),
    ):
        with pytest.raises(ConfigurationError, match=option):
            WebhooksConfig(**{option: most + 1})
    # Plain data round-trips (no secrets in it).
    cfg2 = AdvancedQueueConfig.parse({"webhooks": {"secret_cache_s": 5, "secret_timeout_s": 2}})
    again = AdvancedQueueConfig.parse({"webhooks": cfg2.to_dict()["webhooks"]})
    assert again.webhooks == cfg2.webhooks and again.webhooks.secret_timeout_s == 2.0


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("secret_cache_s", -1),
        ("secret_cache_s", math.nan),
        ("secret_cache_s", math.inf),
        ("secret_cache_s", -math.inf),
        ("secret_cache_s", 86_401),
        pytest.param("secret_cache_s", 10**400, id="secret_cache_s-10**400"),
        ("secret_cache_s", 1e300),
        ("secret_cache_s", True),
        ("secret_cache_s", "60"),
        ("secret_cache_s", None),
        ("secret_timeout_s", 0),
        ("secret_timeout_s", -0.5),
        ("secret_timeout_s", math.nan),
        ("secret_timeout_s", math.inf),
        ("secret_timeout_s", 121),
        ("secret_timeout_s", False),
        ("secret_timeout_s", "10"),
    ],
)
def test_section_refuses_bad_numbers(option: str, value: Any) -> None:
    want = rf"advanced\.webhooks\.{option} must be a finite number of seconds.*give a number"
    with pytest.raises(ConfigurationError, match=want):
        AdvancedQueueConfig.parse({"webhooks": {option: value}})
    with pytest.raises(ConfigurationError, match=want):
        WebhooksConfig(**{option: value})


def test_section_refuses_unknown_options_and_wrong_sources() -> None:
    with pytest.raises(ConfigurationError, match="did you mean 'secret_cache_s'"):
        AdvancedQueueConfig.parse({"webhooks": {"secret_cache": 5}})
    with pytest.raises(ConfigurationError, match="did you mean 'secret_timeout_s'"):
        WebhooksConfig(secret_timeout=5)  # type: ignore[call-arg]
    for wrong in (generate_secret(), 42, ["whsec_x"]):
        with pytest.raises(ConfigurationError, match=r"dict of endpoint id -> secret.*callable"):
            WebhooksConfig(secrets=wrong)  # type: ignore[arg-type]
