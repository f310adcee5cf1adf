"""Job records that no state set lists are found and put back (``orphans.find_orphans``).

The defect, reproduced on a real Redis first: a state set evicted (an evicting
``maxmemory-policy`` accepted with ``allow_eviction``) or deleted by hand, or a script
refused part-way by an ACL rule taken away while a worker ran, left job records that no
set listed: no worker ran them, no listing showed them, nothing counted them, and
nothing could bring them back (``test_a_deleted_wait_set_strands_its_jobs_until_found``
shows both halves). ``find_orphans`` walks the records and puts each back where its
status says.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import re
from typing import Any

import pytest
import redis.asyncio as aioredis
from click.testing import CliRunner

from helpers import QueueFactory, app_module, wait_until
from kitium_queue import JobQueue
from kitium_queue.cli import main
from kitium_queue.errors import ConfigurationError, DamagedKeyError
from kitium_queue.hooks import AdminCall, Subscriber
from kitium_queue.orphans import LISTED, PAGE, OrphanReport, find_orphans

pytestmark = pytest.mark.redis_only

SETS = ("wait", "active", "delayed", "completed", "failed", "dlq")


async def _sets_of(q: JobQueue, job_id: str) -> list[str]:
    client = await q.client()
    return [s for s in SETS if await client.zscore(getattr(q.keys, s), job_id) is not None]


async def _status(q: JobQueue, job_id: str) -> str:
    raw = await (await q.client()).hget(q.keys.job(job_id), "st")
    return raw.decode() if raw else ""


async def _unlist(q: JobQueue, job_id: str) -> None:
    """Take a job out of every state set, its record left as it is (an eviction)."""
    client = await q.client()
    for s in SETS:
        await client.zrem(getattr(q.keys, s), job_id)


async def test_a_deleted_wait_set_strands_its_jobs_until_found(make_queue: QueueFactory) -> None:
    q = make_queue("q")
    ids = await q.add_jobs([("work", {"i": i}) for i in range(30)])
    client = await q.client()
    await client.delete(q.keys.wait)  # what eviction of the set does
    ran: list[str] = []
    q.process("work", lambda job: ran.append(job.id))
    await q.start()
    await asyncio.sleep(0.5)
    assert ran == [] and (await q.get_stats()).waiting == 0  # lost without a trace

    report = await find_orphans(q)
    assert report.orphans == 30 and report.by_status == {"waiting": 30}
    assert report.repaired is False and set(report.job_ids) == set(ids)
    await asyncio.sleep(0.3)
    assert ran == []  # a report writes nothing

    fixed = await find_orphans(q, repair=True)
    assert fixed.repaired and fixed.orphans == 30
    await wait_until(lambda: len(ran) == 30, 10)
    assert sorted(ran) == sorted(ids)
    assert (await find_orphans(q)).orphans == 0


async def test_each_status_goes_back_where_it_says(
    make_queue: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q = make_queue("q", retry={"max_attempts": 1})
    done: list[str] = []

    async def work(job: Any) -> str:
        if job.data.get("fail"):
            raise ValueError("no")
        done.append(job.id)
        return "ok"

    q.process("work", work)
    finished = await q.add_job("work", {})
    failed = await q.add_job("work", {"fail": True})
    await q.start()
    await wait_until(lambda: finished in done, 10)

    async def ended() -> list[str]:
        return [s for s in await _sets_of(q, failed) if s in ("dlq", "failed")]

    dlq_or_failed = (await wait_until(ended, 10))[0]
    await q.pause()
    waiting = await q.add_job("work", {}, priority=7)
    later = await q.add_job("work", {}, delay=600_000)
    scores = {
        j: await redis_client.zscore(getattr(q.keys, s), j)
        for j, s in ((waiting, "wait"), (later, "delayed"), (finished, "completed"))
    }
    for j in (finished, failed, waiting, later):
        await _unlist(q, j)

    report = await find_orphans(q)
    assert report.orphans == 4
    assert report.by_status == {
        "completed": 1,
        "waiting": 1,
        "delayed": 1,
        await _status(q, failed): 1,
    }
    assert [await _sets_of(q, j) for j in (finished, failed, waiting, later)] == [[]] * 4

    await find_orphans(q, repair=True)
    assert await _sets_of(q, waiting) == ["wait"]
    assert await _sets_of(q, later) == ["delayed"]
    assert await _sets_of(q, finished) == ["completed"]
    assert await _sets_of(q, failed) == [dlq_or_failed]
    for j, s in ((waiting, "wait"), (later, "delayed"), (finished, "completed")):
        assert await redis_client.zscore(getattr(q.keys, s), j) == scores[j]
    assert (await find_orphans(q, repair=True)).orphans == 0


async def test_a_running_job_keeps_its_run_and_a_lost_one_runs_again(
    make_queue: QueueFactory,
) -> None:
    """An orphan whose status is active goes back into active with a lease: the worker
    still running it records its outcome once; a job no worker runs is recovered."""
    q = make_queue("q", worker={"concurrency": 2})
    gate = asyncio.Event()
    runs: list[str] = []
    done: list[str] = []

    async def work(job: Any) -> None:
        runs.append(job.id)
        await gate.wait()
        done.append(job.id)

    q.process("work", work)
    job = await q.add_job("work", {})
    await q.start()
    await wait_until(lambda: runs == [job], 10)
    await _unlist(q, job)
    report = await find_orphans(q, repair=True, lease_ms=60_000)
    assert report.by_status == {"active": 1}
    assert await _sets_of(q, job) == ["active"]
    gate.set()
    await wait_until(lambda: done == [job], 10)
    await wait_until(lambda: _sets_of(q, job), 10)
    assert await _sets_of(q, job) == ["completed"] and runs == [job]

    # A record left "active" by a worker that is gone: its lease runs out, it runs again.
    other = make_queue("q2")
    lost = await other.add_job("work", {})
    client = await other.client()
    await client.zrem(other.keys.wait, lost)
    await client.hset(other.keys.job(lost), mapping={"st": "active", "lt": "7"})
    assert (await find_orphans(other, repair=True, lease_ms=100)).by_status == {"active": 1}
    again: list[str] = []
    other.process("work", lambda j: again.append(j.id))
    await other.start()
    await wait_until(lambda: again == [lost], 10)


async def test_records_listed_somewhere_parked_unknown_and_damaged_are_left_alone(
    make_queue: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q = make_queue("q")
    sound = await q.add_job("work", {})
    elsewhere = await q.add_job("work", {})
    await redis_client.zrem(q.keys.wait, elsewhere)
    await redis_client.zadd(q.keys.delayed, {elsewhere: 1})  # listed, not where st says
    pending = await q.add_job("work", {})
    await redis_client.zrem(q.keys.wait, pending)
    await redis_client.hset(q.keys.job(pending), mapping={"st": "pending", "pk": "g:x"})
    odd = await q.add_job("work", {})
    await redis_client.zrem(q.keys.wait, odd)
    await redis_client.hset(q.keys.job(odd), "st", "\u202ebogus*?[")
    await redis_client.set(q.keys.job("broken"), "not a hash")

    report = await find_orphans(q, repair=True)
    assert (report.orphans, report.parked, report.unknown, report.damaged) == (0, 1, 1, 1)
    assert report.examined == 4 and set(report.other_ids) == {pending, odd}
    assert await _sets_of(q, sound) == ["wait"]
    assert await _sets_of(q, elsewhere) == ["delayed"]
    assert await _sets_of(q, pending) == [] and await _sets_of(q, odd) == []
    assert await redis_client.get(q.keys.job("broken")) == b"not a hash"


async def test_many_records_are_walked_in_pages_while_a_worker_drains(
    make_queue: QueueFactory,
) -> None:
    """Chaos: the wait set is deleted three times while a worker drains; each walk puts
    back what was lost, and every job runs exactly once."""
    q = make_queue("q", worker={"concurrency": 8})
    ids = await q.add_jobs([("work", {"i": i}) for i in range(PAGE * 6 + 17)])
    ran: list[str] = []

    async def work(job: Any) -> None:
        await asyncio.sleep(0)
        ran.append(job.id)

    q.process("work", work)
    client = await q.client()
    await q.start()
    put_back = 0
    for _ in range(3):
        target = min(len(ran) + 50, len(ids) - 1)
        await wait_until(lambda t=target: len(ran) >= t, 20)
        await client.delete(q.keys.wait)
        put_back += (await find_orphans(q, repair=True)).orphans
    await wait_until(lambda: len(ran) == len(ids), 30)
    # The last processors' returns are recorded a moment later (the worker's outcome
    # batch): waited for, not slept on; the sleep lets a second run show.

    async def recorded() -> bool:
        return (await q.get_stats()).active == 0

    await wait_until(recorded, 30)
    await asyncio.sleep(0.3)
    assert sorted(ran) == sorted(ids), "every job ran exactly once"
    assert put_back > 0
    stats = await q.get_stats()
    assert (stats.waiting, stats.active, stats.delayed, stats.failed) == (0, 0, 0, 0)


async def test_arguments_are_checked_and_the_call_is_an_admin_command(
    make_queue: QueueFactory,
) -> None:
    q = make_queue("q")
    for bad in ({"repair": 1}, {"lease_ms": 5}, {"lease_ms": 1.5}, {"lease_ms": True}):
        with pytest.raises(ConfigurationError):
            await find_orphans(q, **bad)
    seen: list[AdminCall] = []

    class Watch(Subscriber):
        def admin(self, call: AdminCall) -> None:
            seen.append(call)

    q.subscribe(Watch())
    await find_orphans(q)
    assert [c.command for c in seen] == ["find_orphans"]
    assert seen[0].args == {"repair": False, "lease_ms": None}
    assert isinstance(await find_orphans(q), OrphanReport)


async def test_a_damaged_state_set_refuses_a_repair_before_any_write(
    make_queue: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q = make_queue("q")
    job = await q.add_job("work", {})
    await redis_client.delete(q.keys.wait)
    await redis_client.set(q.keys.dlq, "x")
    report = await find_orphans(q)  # a report reads around it
    assert report.by_status == {"waiting": 1}
    with pytest.raises(DamagedKeyError):
        await find_orphans(q, repair=True)
    assert await redis_client.exists(q.keys.wait) == 0  # nothing was written
    assert await _status(q, job) == "waiting"


async def test_a_repair_logs_counts_never_payloads(
    make_queue: QueueFactory, caplog: pytest.LogCaptureFixture
) -> None:
    q = make_queue("q")
    await q.add_job("work", {"secret": "hunter2"})
    await (await q.client()).delete(q.keys.wait)
    caplog.set_level(logging.WARNING, "kitium_queue")
    await find_orphans(q)
    assert "1 job records no state set listed (1 waiting)" in caplog.text
    assert "--repair" in caplog.text and "hunter2" not in caplog.text


def test_the_cli_reports_then_repairs(redis_url: str, prefix: str, tmp_path: Any) -> None:
    source = (
        "from kitium_queue import JobQueue\n"
        f"queue = JobQueue('cliq', redis={redis_url!r}, prefix={prefix!r})\n"
    )

    async def setup() -> str:
        q = JobQueue("cliq", redis=redis_url, prefix=prefix)
        job = await q.add_job("work", {})
        await (await q.client()).delete(q.keys.wait)
        await q.close()
        return job

    job = asyncio.run(setup())
    with app_module(tmp_path, source) as module:
        app = f"{module}:queue"
        runner = CliRunner()
        dry = runner.invoke(main, ["jobs", "orphans", app, "--json"])
        assert dry.exit_code == 0, dry.output
        report = json.loads(dry.output)
        assert report["repaired"] is False and report["job_ids"] == [job]
        plain = runner.invoke(main, ["--plain", "jobs", "orphans", app, "--repair"])
        assert plain.exit_code == 0, plain.output
        assert "put back" in plain.output and "orphans=1" in plain.output
        assert job in plain.output
        again = runner.invoke(main, ["jobs", "orphans", app, "--json"])
        assert json.loads(again.output)["orphans"] == 0


async def test_the_dashboard_reports_then_puts_back_for_managers_only(
    make_queue: QueueFactory,
) -> None:
    pytest.importorskip("starlette")
    from kitium_queue.dashboard import create_dashboard
    from test_dashboard_asgi import MANAGER, OPERATOR, TOKENS, VIEWER, csrf_of, signed_in

    q = make_queue("shop")
    ids = await q.add_jobs([("work", {"i": i}) for i in range(3)])
    await (await q.client()).delete(q.keys.wait)
    app = create_dashboard(queues=[q], tokens=TOKENS, refresh_ms=0)
    for tok in (VIEWER, OPERATOR):
        c = await signed_in(app, tok)
        page = (await c.get("/q/shop/server")).text
        assert 'data-action="find-orphans"' not in page
        r = await c.post("/q/shop/action/find-orphans", data={"csrf": csrf_of(page)})
        assert r.status_code == 403
    mgr = await signed_in(app, MANAGER)
    page = (await mgr.get("/q/shop/server")).text
    assert 'data-action="find-orphans"' in page
    r = await mgr.post(
        "/q/shop/action/find-orphans", data={"csrf": csrf_of(page), "next": "/q/shop/server"}
    )
    assert r.status_code == 200 and 'id="confirm"' in r.text
    summary = html.unescape(r.text.split('id="summary">', 1)[1].split("</p>", 1)[0])
    assert "3 of 3 job record(s) in no state set to be put back (3 waiting)" in summary
    assert (await q.get_stats()).waiting == 0  # the preview wrote nothing
    fields = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', r.text))
    r = await mgr.post("/q/shop/action/find-orphans", data=fields)
    assert r.status_code == 303
    flash = (await mgr.get("/q/shop/server")).text
    assert "3 of 3 job record(s) in no state set put back (3 waiting)" in html.unescape(flash)
    assert (await q.get_stats()).waiting == len(ids)


async def test_damaged_times_no_status_and_a_partitioned_queue(
    make_queue: QueueFactory, redis_client: aioredis.Redis, redis_url: str
) -> None:
    """From the review: a due time no delay reaches (1e308 by hand) sent a job into
    delayed for good, a delayed orphan moved to wait kept its stale ``due``, a finish
    time in the future held a finished job past retention, a record with a name and no
    status (read as waiting everywhere else) was left alone as unknown, and a
    PartitionedQueue failed with an AttributeError."""
    from kitium_queue import PartitionedQueue

    q = make_queue("q")
    far = await q.add_job("work", {}, delay=60_000)
    await redis_client.zrem(q.keys.delayed, far)
    await redis_client.hset(q.keys.job(far), "due", "1e308")
    bare = await q.add_job("work", {})
    await redis_client.zrem(q.keys.wait, bare)
    await redis_client.hdel(q.keys.job(bare), "st")
    report = await find_orphans(q, repair=True)
    assert report.by_status == {"delayed": 1, "waiting": 1} and report.unknown == 0
    assert await _sets_of(q, far) == ["wait"] and await _sets_of(q, bare) == ["wait"]
    assert await redis_client.hget(q.keys.job(far), "due") is None

    done = make_queue("d")
    ran: list[str] = []
    done.process("work", lambda job: ran.append(job.id))
    finished = await done.add_job("work", {})
    await done.start()
    await wait_until(lambda: ran == [finished], 10)
    await wait_until(lambda: _sets_of(done, finished), 10)
    await redis_client.zrem(done.keys.completed, finished)
    await redis_client.hset(done.keys.job(finished), "f", str(2**60))
    await find_orphans(done, repair=True)
    score = await redis_client.zscore(done.keys.completed, finished)
    assert score is not None and score < 2**50

    pq = PartitionedQueue("pq", partitions=2, redis=redis_url, prefix=q.keys.prefix)
    try:
        with pytest.raises(ConfigurationError, match=r"each of queue\.queues"):
            await find_orphans(pq)  # type: ignore[arg-type]
    finally:
        await pq.close()


async def test_a_walk_keeps_counts_not_every_id(
    make_queue: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q = make_queue("q")
    await q.add_jobs([("work", {"i": i}) for i in range(LISTED + 50)])
    await redis_client.delete(q.keys.wait)
    report = await find_orphans(q)
    assert report.orphans == LISTED + 50 and len(report.job_ids) == LISTED
