"""A connection that speaks RESP3 (``redis://...?protocol=3``, or a redis-py client made
with ``protocol=3``): the same replies come in other shapes (``XREAD`` a dict of streams
where RESP2 has a list of pairs). Every stream reader of the library goes through
``events.stream_entries``; under RESP3 ``queue.events()`` used to raise a bare
``ValueError``, and the breaker and workflow event leaders failed every term, so their
hooks never fired.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from helpers import QueueFactory, wait_until
from kitium_queue import (
    CircuitBreakerManager,
    ConfigurationError,
    JobChainManager,
    WorkflowStep,
)
from kitium_queue.events import stream_entries
from kitium_queue.hooks import FeatureEvent, Subscriber

pytestmark = pytest.mark.redis_only


@pytest.fixture
def resp3_url(redis_url: str) -> str:
    return redis_url + ("&" if "?" in redis_url else "?") + "protocol=3"


class Seen(Subscriber):
    def __init__(self) -> None:
        self.events: list[FeatureEvent] = []

    def feature_event(self, event: FeatureEvent) -> None:
        self.events.append(event)


def test_stream_entries_reads_both_shapes() -> None:
    entries = [(b"1-0", {b"a": b"1"}), (b"1-1", {b"b": b"2"})]
    assert stream_entries([[b"s", entries]]) == entries  # RESP2
    assert stream_entries({b"s": [entries]}) == entries  # RESP3
    assert stream_entries(None) == [] and stream_entries({}) == []


async def test_events_and_the_worker_under_resp3(make_queue: QueueFactory, resp3_url: str) -> None:
    q = make_queue("r3", redis=resp3_url)

    @q.process("n")
    async def n(job: Any) -> int:
        if job.data.get("fail"):
            raise RuntimeError("boom")
        return 1

    ok = await q.add_job("n", {})
    bad = await q.add_job("n", {"fail": True}, attempts=1)
    await q.start()
    await wait_until(lambda: _status(q, ok, "completed"), 10)
    await wait_until(lambda: _status(q, bad, "dlq"), 10)
    seen = [(e.event, e.job_id) async for e in q.events(last_id="0", follow=False, block_ms=50)]
    assert ("job-completed", ok) in seen and ("job-dlq", bad) in seen, seen
    assert await q.replay_dlq() == 1


async def _status(q: Any, jid: str, status: str) -> bool:
    info = await q.get_job_status(jid)
    return info is not None and info.status.value == status


async def test_breaker_transitions_reach_subscribers_under_resp3(
    make_queue: QueueFactory, resp3_url: str
) -> None:
    q = make_queue("r3b", redis=resp3_url, worker={"concurrency": 2, "scheduler": False})
    m = CircuitBreakerManager(q)
    assert m.events is not None
    m.events.interval_s = 0.02
    seen = Seen()
    q.subscribe(seen)
    await m.create_breaker({"id": "dep"})
    await q.start()
    await wait_until(lambda: m.events is not None and m.events.is_leader, timeout=5)
    await asyncio.sleep(0.1)
    await m.force_open("dep", 60_000, reason="drill")
    await m.reset("dep")
    await wait_until(lambda: len(seen.events) == 2, timeout=5)
    assert [(e.fields["from"], e.fields["to"]) for e in seen.events] == [
        ("closed", "open"),
        ("open", "closed"),
    ]


async def test_workflow_events_reach_subscribers_under_resp3(
    make_queue: QueueFactory, resp3_url: str
) -> None:
    q = make_queue("r3w", redis=resp3_url, worker={"concurrency": 4})
    chains = JobChainManager(q)
    seen = Seen()
    q.subscribe(seen)

    @q.process("n")
    async def n(job: Any) -> None:
        return None

    await chains.execute_workflow(
        "w", [WorkflowStep("a", "n"), WorkflowStep("b", "n", depends_on=["a"])]
    )
    await q.start()
    await wait_until(lambda: any(e.name == "workflow-completed" for e in seen.events), 15)


async def test_the_dict_form_asks_for_resp3(make_queue: QueueFactory, redis_url: str) -> None:
    """``{"protocol": 3}`` was refused as an unknown option although a URL could ask."""
    from urllib.parse import urlsplit

    u = urlsplit(redis_url)
    cfg = {"host": u.hostname, "port": u.port, "protocol": 3}
    q = make_queue("r3d", redis=cfg)
    jid = await q.add_job("n", {})
    client = await q.client()
    assert (await client.execute_command("HELLO"))[b"proto"] == 3
    seen = [e.job_id async for e in q.events(last_id="0", follow=False, block_ms=50)]
    assert jid in seen
    with pytest.raises(ConfigurationError, match="protocol=2 or protocol=3"):
        make_queue("r3x", redis={**cfg, "protocol": 4})
