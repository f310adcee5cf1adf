"""The read API a dashboard needs: pages by offset and by cursor, job detail."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from helpers import QueueFactory, wait_for_status, wait_until
from kitium_queue import ConfigurationError, JobQueue, JobStatus
from kitium_queue.job import Job
from kitium_queue.options import MAX_QUERY_LIMIT


async def _ids(q: JobQueue, status: str, **kw: Any) -> list[str]:
    return [j.id for j in await q.get_jobs_by_status(status, **kw)]


async def _all_pages(q: JobQueue, status: str, limit: int) -> list[str]:
    out: list[str] = []
    page = await q.list_jobs(status, limit=limit)
    out += [j.id for j in page.jobs]
    while page.next_cursor is not None:
        page = await q.list_jobs(status, limit=limit, cursor=page.next_cursor)
        out += [j.id for j in page.jobs]
    return out


async def test_offset_paging(make_queue: QueueFactory) -> None:
    q = make_queue()
    ids = [await q.add_job("n", {"i": i}, priority=10 - i) for i in range(10)]
    assert await _ids(q, "waiting") == ids  # higher priority first
    pages = [await _ids(q, "waiting", limit=3, offset=o) for o in (0, 3, 6, 9, 12)]
    assert pages == [ids[0:3], ids[3:6], ids[6:9], ids[9:], []]
    assert await _ids(q, "waiting", limit=0, offset=5) == []
    for bad in (-1, 1.5, True, "3", None):
        with pytest.raises(ConfigurationError, match=r"offset must be an int >= 0"):
            await q.get_jobs_by_status("waiting", 5, bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"limit must be an int"):
        await q.get_jobs_by_status("waiting", MAX_QUERY_LIMIT + 1, 0)


async def test_offset_paging_of_finished_jobs_newest_first(make_queue: QueueFactory) -> None:
    q = make_queue()
    q.process("n", lambda job: job.data)
    ids = []
    await q.start(concurrency=1)
    for i in range(5):
        jid = await q.add_job("n", i)
        await wait_for_status(q, jid, JobStatus.COMPLETED)
        ids.append(jid)
    newest_first = ids[::-1]
    assert await _ids(q, "completed", limit=2, offset=0) == newest_first[:2]
    assert await _ids(q, "completed", limit=2, offset=2) == newest_first[2:4]
    assert await _ids(q, "completed", limit=2, offset=4) == newest_first[4:]
    assert await _all_pages(q, "completed", 2) == newest_first


async def test_cursor_pages_stay_put_while_jobs_come_and_go(make_queue: QueueFactory) -> None:
    q = make_queue()
    ids = [await q.add_job("n", {"i": i}, priority=100 - i) for i in range(9)]
    page = await q.list_jobs("waiting", limit=3)
    assert [j.id for j in page.jobs] == ids[:3] and page.next_cursor
    # A job that goes to the front and one that leaves would shift an offset; the
    # cursor carries on after the last job it returned.
    await q.add_job("n", {"front": True}, priority=1000)
    assert await q.remove_job(ids[4]) is True
    page = await q.list_jobs("waiting", limit=3, cursor=page.next_cursor)
    assert [j.id for j in page.jobs] == [ids[3], ids[5], ids[6]]
    # The job the cursor points at may leave too.
    assert await q.remove_job(ids[6]) is True
    assert page.next_cursor is not None
    page = await q.list_jobs("waiting", limit=3, cursor=page.next_cursor)
    assert [j.id for j in page.jobs] == [ids[7], ids[8]]
    assert page.next_cursor is None


async def test_cursor_within_equal_scores(make_queue: QueueFactory) -> None:
    # Jobs finished in the same millisecond share a score: Redis orders them by id.
    q = make_queue()
    ids = [await q.add_job("n", {}, job_id=f"j-{c}") for c in "abcdefg"]
    client = await q.client()
    for jid in ids:
        await client.zrem(q.keys.wait, jid)
        await client.zadd(q.keys.failed, {jid: 1_700_000_000_000})
        await client.hset(q.keys.job(jid), mapping={"st": "failed", "f": 1_700_000_000_000})
    await client.zadd(q.keys.failed, {"j-later": 1_700_000_000_001})
    await client.hset(q.keys.job("j-later"), mapping={"st": "failed", "n": "n"})
    expected = ["j-later", *ids[::-1]]
    assert await _ids(q, "failed") == expected
    assert await _all_pages(q, "failed", 2) == expected
    assert await _all_pages(q, "failed", 1) == expected
    page = await q.list_jobs("failed", limit=3)
    assert page.next_cursor is not None
    await client.zrem(q.keys.failed, "j-f")  # the job the cursor names leaves
    rest = await q.list_jobs("failed", limit=10, cursor=page.next_cursor)
    assert [j.id for j in rest.jobs] == ["j-e", "j-d", "j-c", "j-b", "j-a"]


async def test_bad_cursor_and_limit(make_queue: QueueFactory) -> None:
    q = make_queue()
    await q.add_job("n", {})
    await q.add_job("n", {})
    page = await q.list_jobs("waiting", limit=1)
    assert page.next_cursor is not None
    with pytest.raises(ConfigurationError, match=r"cursor must be a next_cursor .* 'delayed'"):
        await q.list_jobs("delayed", cursor=page.next_cursor)
    for bad in ("", "waiting:nan:AA==", "waiting:1:***", 7, "waiting:1"):
        with pytest.raises(ConfigurationError, match=r"cursor must be"):
            await q.list_jobs("waiting", cursor=bad)  # type: ignore[arg-type]
    for limit in (0, -1, MAX_QUERY_LIMIT + 1, 2.0):
        with pytest.raises(ConfigurationError, match=r"limit must be an int >= 1"):
            await q.list_jobs("waiting", limit=limit)  # type: ignore[arg-type]
    assert (await q.list_jobs("pending")).jobs == []
    assert (await q.list_jobs("paused")).jobs == []


@pytest.mark.redis_only
async def test_job_detail_names_the_worker_and_the_lease_deadline(
    make_queue: QueueFactory,
) -> None:
    q = make_queue(settings={"lock_duration": 5000})
    release = asyncio.Event()

    @q.process("slow")
    async def slow(job: Job) -> str:
        await job.log("working")
        await release.wait()
        return "done"

    jid = await q.add_job("slow", {})
    waiting = await q.get_job_detail(jid)
    assert waiting is not None and waiting.status is JobStatus.WAITING
    assert (waiting.worker, waiting.lease_deadline, waiting.log_lines) == (None, None, 0)
    await q.start(concurrency=1)
    info = await wait_for_status(q, jid, JobStatus.ACTIVE)
    detail = await q.get_job_detail(jid)
    assert detail is not None and detail.status is JobStatus.ACTIVE
    assert detail.worker == q.worker.id
    assert info.started_at is not None and detail.lease_deadline is not None
    # Claimed with a 5 s lease (renewals only push it further).
    assert info.started_at + 4000 <= detail.lease_deadline <= info.started_at + 60_000
    as_dict = detail.to_dict()
    assert as_dict["worker"] == q.worker.id and as_dict["status"] == "active"
    assert as_dict["lease_deadline"] == detail.lease_deadline
    release.set()
    await wait_for_status(q, jid, JobStatus.COMPLETED)
    done = await q.get_job_detail(jid)
    assert done is not None and done.result == "done"
    assert done.lease_deadline is None and done.worker == q.worker.id  # who ran it last
    assert done.log_lines == 1
    assert await q.get_job_detail("missing") is None
    with pytest.raises(ConfigurationError, match=r"job_id must be a non-empty string"):
        await q.get_job_detail("")


async def test_job_detail_of_a_damaged_record(make_queue: QueueFactory) -> None:
    q = make_queue()
    jid = await q.add_job("n", {})
    client = await q.client()
    await client.hset(q.keys.job(jid), mapping={"st": "limbo", "w": b"\xffw"})
    detail = await q.get_job_detail(jid)
    assert detail is not None and detail.damaged is not None
    assert "unknown state" in detail.damaged and detail.status is JobStatus.WAITING
    assert detail.worker == "\\xffw"


async def test_pending_jobs_are_listed(make_queue: QueueFactory) -> None:
    # Jobs over a concurrency cap are parked (status pending) until a slot frees.
    q = make_queue()
    q.set_concurrency_limit("acct-1", 1)
    release = asyncio.Event()

    @q.process("n")
    async def work(job: Job) -> None:
        await release.wait()

    ids = [await q.add_job("n", {"i": i}, concurrency_key="acct-1") for i in range(4)]
    await q.start(concurrency=4)
    await wait_for_status(q, ids[0], JobStatus.ACTIVE)
    for jid in ids[1:]:
        await wait_for_status(q, jid, JobStatus.PENDING)
    pending = await q.get_jobs_by_status(JobStatus.PENDING)
    assert [j.id for j in pending] == ids[1:]
    assert all(j.status is JobStatus.PENDING for j in pending)
    assert await _ids(q, "pending", limit=1, offset=1) == [ids[2]]
    assert await _all_pages(q, "pending", 2) == ids[1:]
    with pytest.raises(ConfigurationError, match=r"cursor must be"):
        await q.list_jobs("pending", cursor="pending:1.5:")
    release.set()
    for jid in ids:
        await wait_for_status(q, jid, JobStatus.COMPLETED)
    assert await q.get_jobs_by_status(JobStatus.PENDING) == []


async def test_stats_and_pending_list_show_parked_jobs(make_queue: QueueFactory) -> None:
    q = make_queue("parked-stats")
    q.set_concurrency_limit("k", 1)
    release = asyncio.Event()

    async def slow(job: Any) -> None:
        await release.wait()

    q.process("n", slow)
    ids = [await q.add_job("n", i, concurrency_key="k") for i in range(3)]
    await q.start(concurrency=3)

    async def two_parked() -> bool:
        return (await q.get_stats()).pending == 2

    await wait_until(two_parked, 10)
    pending = await q.get_jobs_by_status(JobStatus.PENDING)
    assert sorted(j.id for j in pending) == sorted(ids[1:])
    assert all(j.status is JobStatus.PENDING for j in pending)
    release.set()
    for jid in ids:
        await wait_for_status(q, jid, JobStatus.COMPLETED, timeout=10)
    assert (await q.get_stats()).pending == 0
