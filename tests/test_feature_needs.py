"""Jobs whose end step a worker lacks go to a worker that has it.

A worker of the previous release (or a process that forgot a manager) runs beside new
ones. Two cases the feature options alone could not tell apart before:

* a registered webhook endpoint wants every job's end, and a job ended by a worker
  without ``WebhookManager`` never reached it: the feature names itself in the queue's
  ``needs`` hash while an active endpoint wants job events, and a worker without it hands
  its jobs to a live worker with it (no attempt spent);
* an option a feature declares beyond the brief's list (``idempotency_window``), or
  ``delivery_guarantee='exactly-once'`` on a worker where no feature took that option
  over: such a job goes to a live worker listing the option.

With no capable worker alive, jobs run where they are, as before.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest

from helpers import QueueFactory, wait_until
from kitium_queue import JobStatus
from kitium_queue.features.idempotency import IdempotencyManager
from kitium_queue.features.webhooks import (
    WebhookConfig,
    WebhookDeliveryStrategy,
    WebhookManager,
    generate_secret,
)
from kitium_queue.handoff import plain_options

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from chaos.receiver import Receiver  # noqa: E402

pytestmark = pytest.mark.redis_only

FAST = dict(allow_networks=["127.0.0.0/8"], backoff_ms=20, max_backoff_ms=200, poll_ms=10)


async def _all(q: Any, ids: list[str], status: JobStatus) -> bool:
    for job_id in ids:
        info = await q.get_job_status(job_id)
        if info is None or info.status is not status:
            return False
    return True


def _completed_ids(receiver: Receiver) -> set[str]:
    return {
        r.json()["data"]["job_id"] for r in receiver.ok() if r.json()["type"] == "job-completed"
    }


async def test_a_registered_endpoint_hears_every_job_a_mixed_fleet_ends(
    make_queue: QueueFactory, receiver: Receiver
) -> None:
    new = make_queue("needs-wh", worker={"concurrency": 2})
    mgr = WebhookManager(new, **FAST)  # type: ignore[arg-type]
    old = make_queue("needs-wh", worker={"concurrency": 8})  # idle, and eager to claim
    ran: dict[str, int] = {"new": 0, "old": 0}

    def proc(who: str) -> Any:
        async def n(job: Any) -> None:
            ran[who] += 1
            await asyncio.sleep(0.005)

        return n

    new.process("n", proc("new"))
    old.process("n", proc("old"))
    await mgr.register_webhook(
        WebhookConfig(
            id="ops",
            url=receiver.url,
            secret=generate_secret(),
            events=["job-completed"],
            delivery_strategy=WebhookDeliveryStrategy.GUARANTEED,
        )
    )
    client = await new.client()
    assert await client.hexists(new.keys.needs, "webhooks")
    await new.start()
    await old.start()  # both announced; the old one read the needs with its heartbeat
    assert old.worker is not None and old.worker.runner.handoff.lacking
    ids = await new.add_jobs([("n", {"i": i}, {}) for i in range(40)])
    await wait_until(lambda: _all(new, ids, JobStatus.COMPLETED), 60)
    await wait_until(lambda: _completed_ids(receiver) >= set(ids), 30)
    assert ran == {"new": 40, "old": 0}
    for job_id in ids:
        info = await new.get_job_status(job_id)
        assert info is not None and info.attempts == 1, info
    # No endpoint wants job events any more: the need is withdrawn.
    await mgr.remove_webhook("ops")
    assert not await client.hexists(new.keys.needs, "webhooks")


async def test_an_endpoint_for_application_events_only_needs_no_worker(
    make_queue: QueueFactory, receiver: Receiver
) -> None:
    q = make_queue("needs-app")
    mgr = WebhookManager(q, **FAST)  # type: ignore[arg-type]
    await mgr.register_webhook(WebhookConfig(id="app", url=receiver.url, events=["order-paid"]))
    client = await q.client()
    assert not await client.hexists(q.keys.needs, "webhooks")
    await mgr.update_webhook("app", events=["order-paid", "job-failed"])
    assert await client.hexists(q.keys.needs, "webhooks")
    await mgr.update_webhook("app", active=False)
    assert not await client.hexists(q.keys.needs, "webhooks")


async def test_a_worker_start_restores_a_lost_need(
    make_queue: QueueFactory, receiver: Receiver
) -> None:
    q = make_queue("needs-lost")
    mgr = WebhookManager(q, run_service=False, **FAST)  # type: ignore[arg-type]
    q.process("n", lambda job: None)
    await mgr.register_webhook(WebhookConfig(id="ops", url=receiver.url, events=["job-completed"]))
    client = await q.client()
    await client.delete(q.keys.needs)  # lost with Redis, or removed by hand
    await q.start()
    assert await client.hexists(q.keys.needs, "webhooks")


async def test_with_no_capable_worker_alive_jobs_run_where_they_are(
    make_queue: QueueFactory, receiver: Receiver
) -> None:
    admin = make_queue("needs-none")
    mgr = WebhookManager(admin, run_service=False, **FAST)  # type: ignore[arg-type]
    await mgr.register_webhook(WebhookConfig(id="ops", url=receiver.url, events=["job-completed"]))
    old = make_queue("needs-none")
    ran: list[int] = []

    @old.process("n")
    async def n(job: Any) -> None:
        ran.append(job.data["i"])

    await old.start()
    ids = await admin.add_jobs([("n", {"i": i}, {}) for i in range(5)])
    await wait_until(lambda: _all(admin, ids, JobStatus.COMPLETED), 10)
    assert sorted(ran) == list(range(5))


async def test_exactly_once_jobs_go_to_the_worker_keeping_their_results(
    make_queue: QueueFactory,
) -> None:
    new = make_queue("needs-eo", worker={"concurrency": 2})
    idem = IdempotencyManager(new)
    old = make_queue("needs-eo", worker={"concurrency": 8})
    ran: dict[str, list[int]] = {"new": [], "old": []}

    def proc(who: str) -> Any:
        async def n(job: Any) -> int:
            ran[who].append(job.data["i"])
            await asyncio.sleep(0.005)
            return int(job.data["i"]) * 10

        return n

    new.process("n", proc("new"))
    old.process("n", proc("old"))
    await new.start()
    await old.start()
    ids = [
        await new.add_job("n", {"i": i}, idempotency_key=f"k{i}", delivery_guarantee="exactly-once")
        for i in range(12)
    ]
    await wait_until(lambda: _all(new, ids, JobStatus.COMPLETED), 60)
    assert ran["old"] == []
    assert sorted(ran["new"]) == list(range(12))
    for i in range(12):
        kept = await idem.get_execution_result(f"k{i}")
        assert kept is not None and kept.result == i * 10, kept


def test_plain_options_leave_out_what_a_feature_takes_over(make_queue: QueueFactory) -> None:
    q = make_queue("needs-plain")
    assert "delivery_guarantee" not in plain_options(q.ctx.jobspec)
    assert {"priority", "attempts", "idempotency_key"} <= plain_options(q.ctx.jobspec)
    assert "idempotency_window" not in plain_options(q.ctx.jobspec)
    IdempotencyManager(q)
    assert {"delivery_guarantee", "idempotency_window"} <= plain_options(q.ctx.jobspec)


async def test_a_worker_standing_down_takes_jobs_again_once_the_capable_one_stops(
    make_queue: QueueFactory, receiver: Receiver
) -> None:
    """A worker lacking a feature every job needs claims nothing for a while after it
    handed a job over; when the worker with the feature stops, it runs the jobs again."""
    new = make_queue("needs-down", worker={"concurrency": 2})
    mgr = WebhookManager(new, **FAST)  # type: ignore[arg-type]
    old = make_queue("needs-down", worker={"concurrency": 4})
    ran: dict[str, int] = {"new": 0, "old": 0}
    for who, q in (("new", new), ("old", old)):
        q.process("n", lambda job, who=who: ran.__setitem__(who, ran[who] + 1))
    await mgr.register_webhook(
        WebhookConfig(id="ops", url=receiver.url, secret=generate_secret(), events=["job-failed"])
    )
    handed: list[str] = []

    class Handed:
        def finished(self, queue: str, job: Any, outcome: Any) -> None:
            if outcome.kind == "deferred":
                handed.append(job.id)

    old.subscribe(Handed())
    await new.start()
    await old.start()
    first = await new.add_jobs([("n", {"i": i}, {}) for i in range(20)])
    await wait_until(lambda: _all(new, first, JobStatus.COMPLETED), 30)
    assert ran == {"new": 20, "old": 0}
    # One claim of its 4 slots, then nothing while the capable worker runs the rest
    # (without standing down, 20 and more). A wait already under way when it stood down
    # may still take a deferred job once more.
    assert 0 < len(handed) <= 8, handed
    assert old.worker is not None
    await new.close()  # its presence record goes: no capable worker is alive
    later = await old.add_jobs([("n", {"i": i}, {}) for i in range(5)])
    await wait_until(lambda: _all(old, later, JobStatus.COMPLETED), 30)
    assert ran["old"] == 5


async def test_a_peer_without_the_jobs_processor_is_not_handed_them(
    make_queue: QueueFactory, receiver: Receiver
) -> None:
    """The capable worker must also have the job's processor: else the two handed the
    job to each other for good (0 of 5 ran in 20 s)."""
    new = make_queue("needs-proc")
    mgr = WebhookManager(new, **FAST)  # type: ignore[arg-type]
    new.process("other", lambda job: None)
    old = make_queue("needs-proc")
    ran: list[int] = []
    old.process("n", lambda job: ran.append(job.data["i"]))
    await mgr.register_webhook(
        WebhookConfig(id="ops", url=receiver.url, secret=generate_secret(), events=["job-failed"])
    )
    await new.start()
    await old.start()
    ids = await new.add_jobs([("n", {"i": i}, {}) for i in range(5)])
    await wait_until(lambda: _all(new, ids, JobStatus.COMPLETED), 20)
    assert sorted(ran) == list(range(5))


async def test_a_stopping_peer_is_handed_no_jobs(
    make_queue: QueueFactory, receiver: Receiver
) -> None:
    """A worker whose stop has begun says so in its record: the others stop handing it
    jobs (they waited for its stop, or up to 15 s after it died, while a worker idled)."""
    new = make_queue("needs-stop", worker={"shutdown_timeout": 20_000})
    mgr = WebhookManager(new, **FAST)  # type: ignore[arg-type]
    release = asyncio.Event()

    async def slow(job: Any) -> None:
        await release.wait()

    new.process("slow", slow)
    new.process("n", lambda job: None)
    old = make_queue("needs-stop")
    ran: list[int] = []
    old.process("n", lambda job: ran.append(job.data["i"]))
    old.process("slow", slow)
    await mgr.register_webhook(
        WebhookConfig(id="ops", url=receiver.url, secret=generate_secret(), events=["job-failed"])
    )
    await new.start()
    await old.start()
    await new.add_job("slow", {})
    await wait_until(lambda: new.worker is not None and bool(new.worker.leases.runs), 10)
    assert new.worker is not None
    stopping = asyncio.ensure_future(new.worker.stop(timeout_ms=20_000))
    try:
        ids = await old.add_jobs([("n", {"i": i}, {}) for i in range(5)])
        t0 = asyncio.get_running_loop().time()
        await wait_until(lambda: _all(old, ids, JobStatus.COMPLETED), 15)
        assert asyncio.get_running_loop().time() - t0 < 8
        assert sorted(ran) == list(range(5))
    finally:
        release.set()
        await stopping


async def test_a_feature_enabled_after_start_counts_at_once(make_queue: QueueFactory) -> None:
    """The options a worker runs as meant follow what its process declares, also after
    it started: a worker whose manager came after its start handed exactly-once jobs
    away (back and forth when the other did the same) instead of running them."""
    a = make_queue("needs-late", worker={"concurrency": 1})
    IdempotencyManager(a)
    b = make_queue("needs-late", worker={"concurrency": 8})
    handed: list[str] = []

    class Handed:
        def finished(self, queue: str, job: Any, outcome: Any) -> None:
            if outcome.kind == "deferred":
                handed.append(job.id)

    b.subscribe(Handed())
    for q in (a, b):
        q.process("n", lambda job: job.data["i"])
    await a.start()
    await b.start()
    IdempotencyManager(b)
    ids = [
        await b.add_job("n", {"i": i}, idempotency_key=f"k{i}", delivery_guarantee="exactly-once")
        for i in range(12)
    ]
    await wait_until(lambda: _all(a, ids, JobStatus.COMPLETED), 30)
    assert handed == []


async def test_a_damaged_needs_key_reads_as_none(
    make_queue: QueueFactory, caplog: pytest.LogCaptureFixture
) -> None:
    q = make_queue("needs-damaged")
    client = await q.client()
    await client.set(q.keys.needs, "not a hash")
    done: list[int] = []
    q.process("n", lambda job: done.append(1))
    await q.start()
    await q.add_job("n", {})
    await wait_until(lambda: len(done) == 1, 10)
    assert q.worker is not None
    assert await client.exists(q.keys.worker(q.worker.id))  # its record was written
    assert "heartbeat failed" not in caplog.text  # before: a traceback every heartbeat
