"""Keys that must not grow with the life of a queue: what a long run leaves is bounded.

* Guaranteed webhooks: every job event goes to the outbox stream; the queue's workers
  trim what the delivery group acknowledged (before, nothing trimmed it: the stream kept
  every event ever written, about 90 bytes each).
* Workflows: the index of workflows (``wfs``) forgets those whose records ended with
  their retention (before, it kept one entry per workflow ever created, and the id of an
  ended workflow could never be used again).
* Outbox consumers: each worker process reads under a name of its own, and Redis keeps a
  consumer until it is deleted; the housekeeping forgets those that hold nothing and
  have not read for an hour (before, one was left per process ever started).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
import redis as redis_sync

import kitium_queue.outbox as outbox_module
from _redis import RedisServer
from helpers import QueueFactory, wait_until
from kitium_queue import JobQueue
from kitium_queue.features.access.redisacl import redis_acl_rules
from kitium_queue.features.webhooks import WebhookConfig, WebhookManager, generate_secret
from kitium_queue.features.workflows import JobChainManager, WorkflowStep
from kitium_queue.outbox import Outbox


async def test_guaranteed_webhook_events_leave_the_outbox_once_delivered(
    redis_url: str, prefix: str, receiver: Any, redis_client: Any
) -> None:
    q = JobQueue("whleak", redis=redis_url, prefix=prefix, worker={"concurrency": 20})
    q.process("noop", lambda job: 1)
    hooks = WebhookManager(
        q, allow_networks=["127.0.0.0/8"], backoff_ms=20, max_backoff_ms=200, poll_ms=10
    )
    await hooks.register_webhook(
        WebhookConfig(
            url=receiver.url,
            secret=generate_secret(),
            events=["job-completed"],
            delivery_strategy="guaranteed",
        )
    )
    outbox = q.keys.extra("outbox")
    await q.add_jobs([("noop", {"n": n}) for n in range(40)])
    await q.start()
    try:
        await wait_until(lambda: len(receiver.ok()) >= 40, 20)

        async def trimmed() -> bool:
            return int(await redis_client.xlen(outbox)) == 0

        await wait_until(trimmed, 20, interval=0.1, message="delivered events stayed in the outbox")
    finally:
        await q.close()


async def test_ended_workflows_leave_the_index_and_free_their_ids(
    make_queue: QueueFactory,
) -> None:
    def build() -> tuple[JobQueue, JobChainManager]:
        q = make_queue("wfleak", worker={"concurrency": 8})
        q.process("s", lambda job: "ok")
        return q, JobChainManager(q, retention_ms=1000)

    def steps() -> list[WorkflowStep]:
        done = {"remove_on_complete": True}  # the jobs go at once: only the index is left
        return [
            WorkflowStep("a", "s", options=done),
            WorkflowStep("b", "s", depends_on=["a"], options=done),
        ]

    q, chains = build()
    client = await q.client()
    index, ids = q.keys.extra("wfs"), [f"w{i}" for i in range(5)]
    await q.start()
    for wid in ids:
        await chains.execute_workflow(wid, steps())
    for wid in ids:

        async def ended(wid: str = wid) -> bool:
            st = await chains.get_workflow_status(wid)
            return st is not None and st.state == "completed" and st.unfinished == 0

        await wait_until(ended, 15)
    await q.close()

    async def records_gone() -> bool:
        return not any([await client.exists(q.keys.extra(f"wf:{w}")) for w in ids])

    await wait_until(records_gone, 10, interval=0.1)  # retention_ms ended
    assert await client.zcard(index) == len(ids)  # still listed: the workers forget them

    # A worker that starts leading the queue's workflow heal drops them at once.
    q2, chains2 = build()
    await q2.start()

    async def forgotten() -> bool:
        return int(await client.zcard(index)) == 0

    await wait_until(forgotten, 20, interval=0.1, message="ended workflows stayed indexed")
    assert (await chains2.execute_workflow("w0", steps()))["a"]  # the id is free again


async def test_consumers_of_processes_gone_are_forgotten_unless_they_hold_entries(
    make_queue: QueueFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Consumers left by processes that stopped (five read and acknowledged, one was
    handed an entry and never acknowledged it): the housekeeping deletes the five once
    idle, and keeps the one an entry is pending on (deleting it would lose the entry's
    place in the group; XAUTOCLAIM hands it on)."""
    monkeypatch.setattr(outbox_module, "CONSUMER_IDLE_MS", 200)
    monkeypatch.setattr(outbox_module, "CONSUMERS_EVERY_S", 0.05)
    q = make_queue("obleak")
    client = await q.client()
    outbox = Outbox(q)
    await outbox.create_group("g")
    for n in range(6):
        await outbox.add("t", f"p{n}".encode())
    for n in range(6):
        consumer = outbox.consumer("g", f"host:{n}:gone")
        got = await consumer.read(count=1, block_ms=0)
        assert len(got) == 1
        if n != 3:
            await consumer.ack(got[0].id)

    async def names() -> dict[str, int]:
        return {
            (c["name"].decode() if isinstance(c["name"], bytes) else c["name"]): int(c["pending"])
            for c in await client.xinfo_consumers(outbox.key, "g")
        }

    assert len(await names()) == 6
    await asyncio.sleep(0.3)
    q.add_service(outbox.housekeeping(interval_ms=50))
    q.process("noop", lambda job: None)
    await q.start()
    try:

        async def forgotten() -> bool:
            return await names() == {"host:3:gone": 1}

        await wait_until(forgotten, 10, interval=0.05, message="idle consumers stayed")
    finally:
        await q.close()
    assert await outbox.forget_idle_consumers(0) == 0  # the one holding an entry stays


async def test_a_user_without_the_right_to_forget_consumers_is_told_and_trims_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """ACL rules made before the consumer forget lack ``xgroup|delconsumer``: the
    housekeeping says so once, naming the rule to add, and its trim goes on."""
    monkeypatch.setattr(outbox_module, "CONSUMER_IDLE_MS", 0)
    monkeypatch.setattr(outbox_module, "CONSUMERS_EVERY_S", 0.05)
    caplog.set_level(logging.WARNING, logger="kitium_queue")
    with RedisServer() as server:
        admin = redis_sync.Redis(host="127.0.0.1", port=server.port)
        rules = redis_acl_rules("old-rules", ["oldacl"], features=["webhooks"])
        admin.execute_command(
            "ACL", "SETUSER", *rules.setuser_args("pw-old-rules"), "-xgroup|delconsumer"
        )
        q = JobQueue("oldacl", redis=f"redis://old-rules:pw-old-rules@127.0.0.1:{server.port}/0")
        outbox = Outbox(q)
        await outbox.create_group("g")
        for n in range(5):
            await outbox.add("t", f"p{n}".encode())
        consumer = outbox.consumer("g", "host:1:gone")
        for entry in await consumer.read(count=5, block_ms=0):
            await consumer.ack(entry.id)
        q.add_service(outbox.housekeeping(interval_ms=50))
        q.process("noop", lambda job: None)
        await q.start()
        try:

            async def trimmed() -> bool:
                return int(admin.xlen(outbox.key)) == 0

            await wait_until(trimmed, 10, interval=0.05, message="the trim stopped")
            await asyncio.sleep(0.3)  # several more housekeeping rounds
        finally:
            await q.close()
            admin.close()
    told = [r for r in caplog.records if "xgroup|delconsumer" in r.getMessage()]
    assert len(told) == 1, [r.getMessage() for r in told]
