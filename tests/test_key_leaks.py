"""Keys that must not grow with the life of a queue: what a long run leaves is bounded.

* Guaranteed webhooks: every job event goes to the outbox stream; the queue's workers
  trim what the delivery group acknowledged (before, nothing trimmed it: the stream kept
  every event ever written, about 90 bytes each).
* Workflows: the index of workflows (``wfs``) forgets those whose records ended with
  their retention (before, it kept one entry per workflow ever created, and the id of an
  ended workflow could never be used again).
"""

from __future__ import annotations

from typing import Any

from helpers import QueueFactory, wait_until
from kitium_queue import JobQueue
from kitium_queue.features.webhooks import WebhookConfig, WebhookManager, generate_secret
from kitium_queue.features.workflows import JobChainManager, WorkflowStep


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
