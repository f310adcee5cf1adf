"""``queue.explain(job_id)``: every reason a job does not run, as the core and the
features report it, and the live-worker records it relies on (``presence.py``).

Each test builds the situation for real (paused queue, a group's turn held by a running
job, an open breaker, ...) on the test's backend and checks the concrete reason: the
code, and the ids, keys and workers it names.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from helpers import QueueFactory, wait_for_status, wait_until
from kitium_queue import (
    CircuitBreakerManager,
    FIFOQueueManager,
    JobChainManager,
    JobQueue,
    JobStatus,
)
from kitium_queue.explain import Explanation, JobFacts, Reason
from kitium_queue.presence import HEARTBEAT_MS, Presence, live_workers


def codes(why: Explanation) -> list[str]:
    return [r.code for r in why.reasons]


def reason(why: Explanation, code: str) -> Reason:
    found = [r for r in why.reasons if r.code == code]
    assert found, f"no {code!r} reason in {[(r.code, r.message) for r in why.reasons]}"
    return found[0]


class Gate:
    """A processor that blocks until released, so a job stays active."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.started: list[str] = []

    async def __call__(self, job: Any) -> str:
        self.started.append(job.id)
        await self.open.wait()
        return "ok"


async def test_a_delayed_job_names_its_due_time(make_queue: QueueFactory) -> None:
    q = make_queue("ex-delay")
    jid = await q.add_job("a", {}, delay=60_000)
    why = await q.explain(jid)
    assert why.status is JobStatus.DELAYED
    r = reason(why, "delayed")
    assert r.until_ms is not None and r.until_ms - why.now_ms > 50_000
    assert "UTC" in r.message
    assert why.blocked


async def test_a_paused_queue_and_no_worker(make_queue: QueueFactory) -> None:
    q = make_queue("ex-pause")
    await q.pause()
    jid = await q.add_job("a", {})
    why = await q.explain(jid)
    assert why.status is JobStatus.PAUSED
    assert {"queue-paused", "no-worker"} <= set(codes(why))
    assert "ex-pause" in reason(why, "queue-paused").message


async def test_no_live_worker_with_a_processor_for_the_name(make_queue: QueueFactory) -> None:
    q = make_queue("ex-names")
    q.process("other", lambda job: None)
    await q.pause()  # keep the job waiting while a worker is alive
    await q.start(concurrency=1)
    jid = await q.add_job("orphan", {})
    why = await q.explain(jid)
    r = reason(why, "no-worker")
    assert "'orphan'" in r.message and q.worker.id in r.message
    assert ("worker", q.worker.id) in r.refs
    # A worker with a processor for the name: that reason goes.
    q.process("orphan", lambda job: None)
    await q.worker.stop()
    await q.start(concurrency=1)
    why = await q.explain(jid)
    assert "no-worker" not in codes(why)
    assert codes(why) == ["queue-paused"]


async def test_live_workers_are_listed_and_forgotten_when_they_stop(
    make_queue: QueueFactory,
) -> None:
    q = make_queue("ex-live")
    q.process("a", lambda job: None)
    q.process("b", lambda job: None)
    assert await live_workers(q) == []
    await q.start(concurrency=3)
    got = await wait_until(lambda: live_workers(q))
    (w,) = got
    assert w.id == q.worker.id and w.concurrency == 3
    assert w.processors == ("a", "b") and w.can_process("a") and not w.can_process("c")
    assert w.seen_at > 0 and HEARTBEAT_MS > 0
    await q.worker.stop()
    assert await live_workers(q) == []


async def test_a_started_worker_is_listed_alive_at_once(
    make_queue: QueueFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``start()`` returns once the worker's first heartbeat is written, even when the
    server is slow to take it: ``explain`` right after it never says "no live worker".
    A heartbeat the server does not take within the bound does not hold start up."""
    real_beat = Presence.beat

    async def slow_beat(self: Presence) -> None:
        await asyncio.sleep(0.3)
        await real_beat(self)

    monkeypatch.setattr(Presence, "beat", slow_beat)
    q = make_queue("ex-at-once")
    q.process("a", lambda job: None)
    await q.pause()
    await q.start(concurrency=1)
    assert [w.id for w in await live_workers(q)] == [q.worker.id]
    why = await q.explain(await q.add_job("a", {}))
    assert "no-worker" not in codes(why)
    await q.worker.stop()

    async def stuck_beat(self: Presence) -> None:
        await asyncio.sleep(60)

    monkeypatch.setattr(Presence, "beat", stuck_beat)
    monkeypatch.setattr(Presence.announce, "__defaults__", (0.2,))
    q2 = make_queue("ex-stuck")
    q2.process("a", lambda job: None)
    await asyncio.wait_for(q2.start(concurrency=1), 5)  # bounded: start goes on
    assert await live_workers(q2) == []
    await q2.worker.stop()


async def test_a_running_job_names_its_worker_and_lease(make_queue: QueueFactory) -> None:
    q = make_queue("ex-lease")
    gate = Gate()
    q.process("slow", gate)
    await q.start(concurrency=1)
    jid = await q.add_job("slow", {})
    await wait_until(lambda: gate.started)
    why = await q.explain(jid)
    r = reason(why, "lease-held")
    assert not r.blocking and q.worker.id in r.message
    assert r.until_ms is not None and r.until_ms > why.now_ms
    # The worker's record is gone (as when it dies): the lease still holds the job.
    client = await q.client()
    await client.delete(q.keys.worker(q.worker.id))
    why = await q.explain(jid)
    r = reason(why, "lease-held")
    assert r.blocking and "no heartbeat" in r.message and r.until_ms is not None
    gate.open.set()


async def test_a_group_turn_names_the_job_holding_it(make_queue: QueueFactory) -> None:
    q = make_queue("ex-group")
    groups = FIFOQueueManager(q)
    gate = Gate()
    q.process("g", gate)
    await q.start(concurrency=2)
    first = await q.add_job("g", {}, message_group_id="cust-1")
    await wait_until(lambda: gate.started)
    second = await q.add_job("g", {}, message_group_id="cust-1")
    await wait_for_status(q, second, "pending")
    why = await q.explain(second)
    r = reason(why, "group-turn")
    assert first in r.message and q.worker.id in r.message and "cust-1" in r.message
    assert ("job", first) in r.refs and ("group", "cust-1") in r.refs
    # Paused group: said so for a new job of it.
    await groups.pause_group("cust-1")
    third = await q.add_job("g", {}, message_group_id="cust-1")
    why = await q.explain(third)
    assert "group-paused" in codes(why)
    gate.open.set()


async def test_unfinished_dependencies_are_named(make_queue: QueueFactory) -> None:
    q = make_queue("ex-deps")
    JobChainManager(q)
    parent = await q.add_job("p", {}, delay=60_000)
    done = await q.add_job("p2", {})
    child = await q.add_job("c", {}, depends_on=[parent, done])
    why = await q.explain(child)
    assert why.status is JobStatus.PENDING
    r = reason(why, "dependencies")
    assert parent in r.message and "delayed" in r.message and ("job", parent) in r.refs
    assert r.source == "workflows"


async def test_an_open_breaker_says_until_when(make_queue: QueueFactory) -> None:
    q = make_queue("ex-breaker")
    breakers = CircuitBreakerManager(q)
    await breakers.create_breaker({"id": "pay", "job_name": "charge", "timeout": 60_000})
    await breakers.force_open("pay", reason="upstream down")
    q.process("charge", lambda job: None)
    await q.start(concurrency=1)
    jid = await q.add_job("charge", {})
    await wait_for_status(q, jid, "pending")
    why = await q.explain(jid)
    r = reason(why, "breaker-open")
    assert "'pay'" in r.message and "upstream down" in r.message
    assert r.until_ms is not None and r.until_ms > why.now_ms + 50_000
    assert ("breaker", "pay") in r.refs


async def test_a_concurrency_cap_names_its_key(make_queue: QueueFactory) -> None:
    q = make_queue("ex-cap")
    q.set_concurrency_limit("tenant-*", 1)
    gate = Gate()
    q.process("w", gate)
    await q.start(concurrency=2)
    first = await q.add_job("w", {}, concurrency_key="tenant-7")
    await wait_until(lambda: gate.started)
    second = await q.add_job("w", {}, concurrency_key="tenant-7")
    await wait_for_status(q, second, "pending")
    r = reason(await q.explain(second), "concurrency-cap")
    assert "'tenant-7'" in r.message and "1 of 1" in r.message and ("job", first) in r.refs
    gate.open.set()


async def test_a_full_rate_window_names_its_key_and_end(make_queue: QueueFactory) -> None:
    q = make_queue("ex-rate")
    q.set_rate_limit("api", max=1, duration=60_000)
    done: list[str] = []
    q.process("r", lambda job: done.append(job.id))
    await q.start(concurrency=1)
    await q.add_job("r", {}, rate_limit_key="api")
    await wait_until(lambda: done)
    second = await q.add_job("r", {}, rate_limit_key="api")
    why = await q.explain(second)
    assert why.status is JobStatus.WAITING
    r = reason(why, "rate-limit")
    assert "'api'" in r.message and r.until_ms is not None and r.until_ms > why.now_ms


async def test_a_feature_explainer_and_a_failing_one(make_queue: QueueFactory) -> None:
    q = make_queue("ex-custom")
    seen: list[JobFacts] = []

    def mine(facts: JobFacts) -> list[Reason]:
        seen.append(facts)
        return [Reason("custom", "because", source="mine")]

    def broken(facts: JobFacts) -> list[Reason]:
        raise RuntimeError("boom")

    q.add_explainer(mine)
    q.add_explainer(mine)  # once
    q.add_explainer(broken)
    jid = await q.add_job("a", {"secret": "x"})
    why = await q.explain(jid)
    assert codes(why)[-2:] == ["custom", "explainer-failed"]
    assert len(seen) == 1 and seen[0].job.id == jid and seen[0].fields.get("n") == "a"
    assert "boom" in why.reasons[-1].message and not why.reasons[-1].blocking
    assert why.to_dict()["reasons"][-2]["code"] == "custom"


async def test_a_missing_job_and_a_finished_one(make_queue: QueueFactory) -> None:
    q = make_queue("ex-done")
    why = await q.explain("nope")
    assert why.status is None and why.reasons == [] and not why.blocked
    q.process("a", lambda job: 1)
    await q.start(concurrency=1)
    jid = await q.add_job("a", {})
    await wait_for_status(q, jid, "completed")
    assert codes(await q.explain(jid)) == ["finished"]


def test_add_explainer_refuses_what_cannot_be_called() -> None:
    from kitium_queue import ConfigurationError

    q = JobQueue("ex-bad")
    with pytest.raises(ConfigurationError, match="callable"):
        q.add_explainer("not a function")  # type: ignore[arg-type]
