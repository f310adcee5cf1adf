"""Workflow ends (and other features' events) reach webhooks: end to end, against a real
Redis and a real HTTP receiver on loopback (the ``receiver`` fixture).

* ``workflow-completed`` / ``workflow-failed`` to a guaranteed endpoint: the outbox entry
  is written in the same script as the step that ends the workflow (it is there before
  any delivery process runs, one per end, and none for an event nobody subscribed to),
  then a delivery process sends it, signed, with the workflow's id and failed step.
* ``workflow-cancelled`` to a best-effort endpoint: from the in-process report (the
  ``feature_event`` hook).
* The forwarding is generic: a circuit breaker's ``breaker-state`` reaches a guaranteed
  endpoint the same way.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from helpers import wait_until
from kitium_queue import JobQueue, WebhookEventType
from kitium_queue.features.breakers import CircuitBreakerManager
from kitium_queue.features.webhooks import (
    WebhookConfig,
    WebhookManager,
    generate_secret,
    verify_webhook,
)
from kitium_queue.features.workflows import JobChainManager, WorkflowStep

pytestmark = pytest.mark.redis_only

FAST = dict(
    allow_networks=["127.0.0.0/8"], backoff_ms=20, max_backoff_ms=200, poll_ms=10, lease_ms=5_000
)


async def outbox_events(q: JobQueue) -> list[tuple[str, str]]:
    """(event, subject) of the webhook entries in the queue's outbox."""
    client = await q.client()
    rows = await client.xrange(q.keys.extra("outbox"))
    return [
        (f[b"e"].decode(), f.get(b"s", b"").decode()) for _, f in rows if f.get(b"t") == b"webhook"
    ]


async def workflow_state(chains: JobChainManager, wid: str, state: str) -> bool:
    st = await chains.get_workflow_status(wid)
    return st is not None and st.state == state and st.unfinished == 0


async def test_workflow_ends_reach_webhooks(redis_url: str, prefix: str, receiver: Any) -> None:
    q = JobQueue("wfh", redis=redis_url, prefix=prefix, worker={"concurrency": 4})
    chains = JobChainManager(q)
    # The worker delivers nothing: what reaches the receiver comes from the outbox later.
    hooks = WebhookManager(q, run_service=False, **FAST)
    gate = asyncio.Event()

    @q.process("ok")
    async def ok(job: Any) -> int:
        return 1

    @q.process("bad")
    async def bad(job: Any) -> None:
        raise RuntimeError("card declined")

    @q.process("slow")
    async def slow(job: Any) -> None:
        await gate.wait()

    try:
        await q.start()
        # Nobody subscribed yet: its end writes no outbox entry.
        await chains.execute_workflow("early", [WorkflowStep("a", "ok")])
        await wait_until(lambda: workflow_state(chains, "early", "completed"), 10)
        secret = generate_secret()
        hook = await hooks.register_webhook(
            WebhookConfig(
                url=receiver.url,
                secret=secret,
                delivery_strategy="guaranteed",
                events=[WebhookEventType.WORKFLOW_COMPLETED, "workflow-failed"],
            )
        )
        seen_cancel = await hooks.register_webhook(
            WebhookConfig(
                url=receiver.url + "/cancelled",
                secret=generate_secret(),
                delivery_strategy="best-effort",
                events=[WebhookEventType.WORKFLOW_CANCELLED],
            )
        )
        await chains.execute_workflow(
            "order-1",
            [
                WorkflowStep("validate", "ok"),
                WorkflowStep("ship", "ok", depends_on=["validate"]),
                WorkflowStep("notify", "ok", depends_on=["validate"]),
                WorkflowStep("archive", "ok", depends_on=["ship", "notify"]),
            ],
        )
        await chains.execute_workflow(
            "order-2",
            [
                WorkflowStep("validate", "ok"),
                WorkflowStep("charge", "bad", depends_on=["validate"]),
                WorkflowStep("ship", "ok", depends_on=["charge"]),
            ],
        )
        await chains.execute_workflow(
            "order-3",
            [WorkflowStep("hold", "slow"), WorkflowStep("after", "ok", depends_on=["hold"])],
        )
        await wait_until(lambda: workflow_state(chains, "order-1", "completed"), 10)
        await wait_until(lambda: workflow_state(chains, "order-2", "failed"), 10)
        # Written atomically with the step that ended each workflow, before any delivery.
        assert sorted(await outbox_events(q)) == [
            ("workflow-completed", "order-1"),
            ("workflow-failed", "order-2"),
        ]
        assert [r for r in receiver.requests if r.json()["type"] != "workflow-cancelled"] == []
        await chains.cancel_workflow("order-3")
        gate.set()
        # The best-effort endpoint hears of the cancel from the in-process report.
        await wait_until(
            lambda: any(r.json()["type"] == "workflow-cancelled" for r in receiver.requests), 10
        )
        assert q.worker is not None
        await q.worker.stop()
        # A dedicated delivery process (kitium-queue webhooks deliver) sends the rest.
        await hooks.service.start(q)
        await wait_until(lambda: len(receiver.ok()) >= 3, 15)
        await asyncio.sleep(0.2)  # nothing more arrives
        got = {r.json()["type"]: r for r in receiver.ok()}
        assert sorted(got) == ["workflow-cancelled", "workflow-completed", "workflow-failed"]
        assert len(receiver.ok()) == 3
        done, failed = got["workflow-completed"], got["workflow-failed"]
        for r in (done, failed):
            verify_webhook(r.body, r.headers, secret)
            assert r.id.startswith("evt_")
        assert done.json()["data"] == {
            "queue": "wfh",
            "subject": "order-1",
            "workflow_id": "order-1",
            "step": "",
        }
        assert failed.json()["data"] == {
            "queue": "wfh",
            "subject": "order-2",
            "workflow_id": "order-2",
            "step": "charge",
        }
        cancelled = got["workflow-cancelled"].json()["data"]
        assert (cancelled["subject"], cancelled["workflow_id"]) == ("order-3", "order-3")
        history = await hooks.get_delivery_history(hook.id)
        assert {d.event_type for d in history} == {"workflow-completed", "workflow-failed"}
        assert all(d.state == "delivered" for d in history)
        assert [d.event_type for d in await hooks.get_delivery_history(seen_cancel.id)] == [
            "workflow-cancelled"
        ]
    finally:
        await hooks.service.stop()
        await q.close()


async def test_breaker_state_reaches_a_guaranteed_webhook(
    redis_url: str, prefix: str, receiver: Any
) -> None:
    q = JobQueue("cbh", redis=redis_url, prefix=prefix)
    breakers = CircuitBreakerManager(q, events=False)
    hooks = WebhookManager(q, **FAST)
    try:
        secret = generate_secret()
        await hooks.register_webhook(
            WebhookConfig(url=receiver.url, secret=secret, events=[WebhookEventType.BREAKER_STATE])
        )
        await breakers.create_breaker({"id": "payments"})
        await breakers.force_open("payments", 60_000, "maintenance")
        assert await outbox_events(q) == [("breaker-state", "payments")]
        await hooks.service.start(q)
        await wait_until(lambda: len(receiver.ok()) == 1, 10)
        r = receiver.ok()[0]
        verify_webhook(r.body, r.headers, secret)
        data = r.json()["data"]
        assert (r.json()["type"], data["subject"], data["from"], data["to"]) == (
            "breaker-state",
            "payments",
            "closed",
            "open",
        )
        assert data["why"] == "maintenance"
    finally:
        await hooks.service.stop()
        await q.close()
