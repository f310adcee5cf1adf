"""A webhook batch under way at a worker's stop, the prune of the index of workflows, and
schedules stored with a windowless lifo flag.

* A graceful stop lets the webhook batch under way end, up to its endpoints' timeout +
  5 s, taken out of ``shutdown_timeout``: the wait stays within what is left of
  ``shutdown_timeout``, and a forced stop (a second SIGTERM, ``Worker.force``) does not
  wait at all. Before, a stop with an endpoint that did not answer took the endpoint's
  whole timeout whatever ``shutdown_timeout`` was, forced or not (10 s with a 2 s
  ``shutdown_timeout``, 10 s after ``force()``).
* The workflow heal's prune of ``wfs`` went no further than a first page of workflows
  still running: ``INDEX_PAGE`` workflows running at the head of the index kept every
  ended one behind them indexed, their ids refused for ever. Each walk now goes on from
  where the last one stopped.
* A schedule whose stored lifo flag is ``'1n'`` (written before schedules stored
  ``'1'`` | ``'0'`` only) fires its ticks lifo.
* A batch's record refused by the Redis ACL (``PermissionDeniedError``, an ``OSError``)
  is not taken for Redis unreachable: it is reported, as before the record was tried
  again through outages. Before, the batch tried it again for ever, silently, and its
  worker delivered nothing more.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis as redis_sync

import kitium_queue.features.workflows.heal as heal
from _redis import RedisServer
from helpers import QueueFactory, wait_until
from kitium_queue import (
    JobChainManager,
    JobQueue,
    WebhookConfig,
    WebhookEvent,
    WebhookManager,
    WorkflowStep,
    generate_secret,
)
from kitium_queue.features.access.redisacl import redis_acl_rules
from kitium_queue.features.scheduler import Scheduler

SECRET = generate_secret()
T0 = 4_102_444_800_000  # far ahead: ticks fire only when run_due() says so


class Silent:
    """An endpoint that reads each request and never answers."""

    def __init__(self) -> None:
        self.seen = 0
        self.server: asyncio.AbstractServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/hook"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            self.seen += 1
            await reader.read()  # until the client goes
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def silent() -> AsyncIterator[Silent]:
    s = Silent()
    s.server = await asyncio.start_server(s._serve, "127.0.0.1", 0)
    try:
        yield s
    finally:
        s.server.close()


async def _in_flight(make_queue: QueueFactory, silent: Silent, grace_ms: int) -> JobQueue:
    """A worker whose webhook batch waits on an endpoint that answers in 8 s at best."""
    q = make_queue("whstop", worker={"concurrency": 2, "shutdown_timeout": grace_ms})
    q.process("noop", lambda job: None)
    hooks = WebhookManager(q, allow_networks=["127.0.0.0/8"], secrets={"h": SECRET}, poll_ms=10)
    await hooks.register_webhook(
        WebhookConfig(id="h", url=silent.url, secret=SECRET, events=["app-ping"], timeout_ms=8000)
    )
    await hooks.send_event(WebhookEvent("app-ping", {"n": 1}))
    await q.start()
    await wait_until(lambda: silent.seen >= 1, 10)
    return q


@pytest.mark.redis_only
async def test_a_forced_stop_does_not_wait_for_the_webhook_batch(
    make_queue: QueueFactory, silent: Silent
) -> None:
    q = await _in_flight(make_queue, silent, 30_000)
    worker = q.worker
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    stop = asyncio.ensure_future(worker.stop())
    await asyncio.sleep(0.2)
    worker.force()  # a second SIGTERM
    await asyncio.wait_for(stop, 20)
    took = loop.time() - t0
    assert took < 2.5, took  # was the endpoint's 8 s


@pytest.mark.redis_only
async def test_the_webhook_batch_waits_within_shutdown_timeout(
    make_queue: QueueFactory, silent: Silent
) -> None:
    q = await _in_flight(make_queue, silent, 1000)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await asyncio.wait_for(q.worker.stop(), 20)
    took = loop.time() - t0
    assert 0.9 <= took < 3.0, took  # was the endpoint's 8 s


async def test_running_workflows_at_the_index_head_hold_no_ended_one_back(
    make_queue: QueueFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(heal, "INDEX_PAGE", 3)
    q = make_queue("wfhead", worker={"concurrency": 4})
    q.process("s", lambda job: "ok")
    chains = JobChainManager(q, retention_ms=1000)
    client = await q.client()
    index = q.keys.extra("wfs")
    for i in range(3):  # a page of workflows still running: their step is due in an hour
        await chains.execute_workflow(
            f"long{i}", [WorkflowStep("a", "s", options={"delay": 3_600_000})]
        )
    await asyncio.sleep(0.01)
    ended = [f"short{i}" for i in range(4)]
    for wid in ended:
        await chains.execute_workflow(
            wid, [WorkflowStep("a", "s", options={"remove_on_complete": True})]
        )
    await q.start()

    async def records_gone() -> bool:
        return not any([await client.exists(q.keys.extra(f"wf:{w}")) for w in ended])

    await wait_until(records_gone, 15, interval=0.1)
    dropped, _at = await heal.forget_ended(q)
    assert dropped == len(ended)
    assert await client.zcard(index) == 3
    assert (await chains.execute_workflow("short0", [WorkflowStep("a", "s")]))["a"]


async def test_the_index_walk_goes_on_from_where_it_stopped(
    make_queue: QueueFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(heal, "INDEX_PAGE", 2)
    monkeypatch.setattr(heal, "INDEX_BUDGET", 4)
    q = make_queue("wfwalk")
    client = await q.client()
    index = q.keys.extra("wfs")
    live = [f"live{i}" for i in range(6)]
    for n, wid in enumerate(live):  # records of workflows within their retention
        await client.zadd(index, {wid: n})
        await client.hset(q.keys.extra(f"wf:{wid}"), "st", "running")
    await client.zadd(index, {"gone": 100})  # its records expired
    assert await heal.forget_ended(q) == (0, 4)  # the budget ends ahead of it
    assert await heal.forget_ended(q, 4) == (1, 0)
    assert await client.zcard(index) == len(live)


async def test_a_schedule_stored_with_a_windowless_lifo_fires_lifo(
    make_queue: QueueFactory,
) -> None:
    q = make_queue()
    s = await q.schedule_every("beat", {"n": 1}, 1000, start_date=T0, lifo=True)
    client = await q.client()
    # As a release before schedule_put kept '1' | '0' stored it (job_id_window=False).
    await client.hset(q.keys.schedule(s.id), "l", "1n")
    sch = Scheduler(rng=random.Random(1))
    sch.queue = q
    await sch.run_due(T0)
    score: Any = await client.hget(q.keys.job(f"sched:{s.id}:{T0}"), "q")
    assert int(score) < 0  # lifo (lib_add.lua)


@pytest.mark.redis_only
async def test_a_record_the_acl_refuses_is_reported_not_tried_for_ever(
    receiver: Any, caplog: pytest.LogCaptureFixture
) -> None:
    srv = RedisServer().start()
    admin = redis_sync.Redis(port=srv.port)
    q: JobQueue | None = None
    try:
        rules = redis_acl_rules("hooks", ["aclhooks"], features=["webhooks"])
        # A user short of a command webhooks_done calls (EXPIRE, for a delivered record).
        admin.execute_command(
            "ACL", "SETUSER", *[a for a in rules.setuser_args("pw") if a != "+expire"]
        )
        q = JobQueue("aclhooks", redis=f"redis://hooks:pw@127.0.0.1:{srv.port}/0")
        q.process("noop", lambda job: None)
        hooks = WebhookManager(q, allow_networks=["127.0.0.0/8"], secrets={"h": SECRET}, poll_ms=10)
        await hooks.register_webhook(
            WebhookConfig(id="h", url=receiver.url, secret=SECRET, events=["app-ping"])
        )
        await hooks.send_event(WebhookEvent("app-ping", {"n": 1}))
        caplog.set_level(logging.WARNING, logger="kitium_queue")
        await q.start()
        await wait_until(
            lambda: any("PermissionDeniedError" in r.getMessage() for r in caplog.records),
            10,
            message="the refused record was never reported",
        )
    finally:
        if q is not None:
            await q.close()
        admin.close()
        srv.close()


async def test_a_listing_does_not_unlist_a_workflow_made_again_meanwhile(
    make_queue: QueueFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """list_workflows forgets the index entries of workflows whose records are gone;
    one created again under its id between the listing's read and that cleanup stays
    listed (the cleanup checks the record in the step that removes the entry)."""
    q = make_queue("wfrelist")
    q.process("s", lambda job: "ok")
    chains = JobChainManager(q)
    client = await q.client()
    await chains.execute_workflow("w1", [WorkflowStep("a", "s", options={"delay": 3_600_000})])
    record = q.keys.extra("wf:w1")
    saved = await client.hgetall(record)
    await client.delete(record)  # its retention ended
    real = client.pipeline

    class Landing:
        """The listing's pipeline; a new w1 lands just after its read."""

        def __init__(self) -> None:
            self.pipe = real(transaction=False)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.pipe, name)

        async def execute(self, **kw: Any) -> Any:
            rows = await self.pipe.execute(**kw)
            await client.hset(record, mapping=saved)
            return rows

    monkeypatch.setattr(client, "pipeline", lambda **kw: Landing())
    listed = await chains.list_workflows()
    monkeypatch.undo()
    assert [w.workflow_id for w in listed] == []  # read as gone
    assert await client.zscore(q.keys.extra("wfs"), "w1") is not None
    assert [w.workflow_id for w in await chains.list_workflows()] == ["w1"]
