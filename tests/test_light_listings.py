"""Listings that show no payload read no payload: ``include_data=False`` of
``get_jobs_by_status`` / ``list_jobs`` / ``get_dlq_jobs``, the CLI's ``jobs list`` and
``dlq list`` (plain output) and the dashboard's job pages read only the fields their rows
show, so what a page moves from Redis and holds in memory does not grow with the jobs'
data; the API's default still returns the data, and damaged records are still marked.

Bytes moved are Redis's own count (``INFO stats`` ``total_net_output_bytes``) around
each listing; the jobs carry far more (``BLOB`` each) than the bound asserted."""

from __future__ import annotations

import asyncio
import json
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import redis
from click.testing import CliRunner, Result

from helpers import app_module, wait_until
from kitium_queue import JobQueue, JobStatus, NonRetryableError, SyncJobQueue
from kitium_queue.cli import main
from kitium_queue.dashboard import create_dashboard
from kitium_queue.features.partitioned import PartitionedQueue

pytestmark = pytest.mark.redis_only

T = TypeVar("T")
N_JOBS = 5
BLOB = 4 * 1024 * 1024  # characters of data per job: 20 MB in all
#: What a listing of N_JOBS rows may move without their data (the rows, the state set,
#: the protocol): far below one job's data.
BOUND = 256 * 1024
MAX_PAYLOAD = 2 * BLOB


def _queue(url: str, prefix: str, name: str = "ll") -> JobQueue:
    return JobQueue(name, redis=url, prefix=prefix, max_payload_bytes=MAX_PAYLOAD)


def _sent(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return int(client.info("stats")["total_net_output_bytes"])
    finally:
        client.close()


def _moved(url: str, fn: Callable[[], T]) -> tuple[T, int]:
    """``fn()`` and the bytes Redis sent meanwhile (to every client: an upper bound)."""
    before = _sent(url)
    out = fn()
    return out, _sent(url) - before


async def _moved_async(url: str, aw: Awaitable[T]) -> tuple[T, int]:
    before = _sent(url)
    out = await aw
    return out, _sent(url) - before


def _big(i: int) -> dict[str, Any]:
    return {"blob": "x" * BLOB, "i": i}


async def _fill(url: str, prefix: str, *, dead: bool = False, name: str = "ll") -> list[str]:
    """N_JOBS jobs of BLOB characters each: waiting, or (``dead``) run into the DLQ."""
    q = _queue(url, prefix, name)

    async def fail(job: Any) -> None:
        raise NonRetryableError("no stock")

    try:
        ids = [await q.add_job("big", _big(i), attempts=1) for i in range(N_JOBS)]
        if dead:
            q.process("big", fail)
            await q.start(concurrency=2)

            async def all_dead() -> bool:
                return (await q.get_stats()).dlq == N_JOBS

            await wait_until(all_dead, 30)
        return ids
    finally:
        await q.close()


@pytest.fixture
def app(tmp_path: Path, redis_url: str, prefix: str) -> Iterator[str]:
    """APP names: ``queue`` (big waiting jobs), ``dead`` (big DLQ jobs), ``parts()``."""
    at = f"redis={redis_url!r}, prefix={prefix!r}, max_payload_bytes={MAX_PAYLOAD}"
    lines = [
        "from kitium_queue import JobQueue",
        "from kitium_queue.features.partitioned import PartitionedQueue",
        f"queue = JobQueue('ll', {at})",
        f"dead = JobQueue('lld', {at})",
        f"parts = lambda: PartitionedQueue('llp', partitions=2, {at})",
    ]
    with app_module(tmp_path, "\n".join(lines) + "\n", "kq_light") as module:
        yield module


def _ok(*args: str) -> Result:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, (result.output, result.stderr)
    return result


def _peak(fn: Callable[[], T]) -> tuple[T, int]:
    """``fn()`` and the peak of Python allocations meanwhile (bytes)."""
    tracemalloc.start()
    try:
        out = fn()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# ---------------------------------------------------------------------- the read API
async def test_listings_without_data_move_only_the_shown_fields(
    redis_url: str, prefix: str
) -> None:
    ids = await _fill(redis_url, prefix)
    q = _queue(redis_url, prefix)
    try:
        light, moved = await _moved_async(
            redis_url, q.get_jobs_by_status("waiting", 20, include_data=False)
        )
        assert moved < BOUND, moved
        assert [j.id for j in light] == ids
        for j in light:
            assert j.name == "big" and j.status is JobStatus.WAITING
            assert (j.attempts, j.max_attempts) == (0, 1)
            assert j.created_at is not None and j.damaged is None
            assert j.data is None and j.result is None and j.progress is None
        page, moved = await _moved_async(
            redis_url, q.list_jobs("waiting", limit=3, include_data=False)
        )
        assert moved < BOUND, moved
        assert [j.id for j in page.jobs] == ids[:3] and page.next_cursor
        rest = await q.list_jobs("waiting", cursor=page.next_cursor, include_data=False)
        assert [j.id for j in rest.jobs] == ids[3:]
        # The default (documented) still returns every job with its data.
        full, moved = await _moved_async(redis_url, q.get_jobs_by_status("waiting", 2))
        assert moved > 2 * BLOB
        assert [j.data["i"] for j in full] == [0, 1]
    finally:
        await q.close()


async def test_dlq_listing_without_data_keeps_the_failure_reason(
    redis_url: str, prefix: str
) -> None:
    ids = await _fill(redis_url, prefix, dead=True)
    q = _queue(redis_url, prefix)
    try:
        dead, moved = await _moved_async(redis_url, q.get_dlq_jobs(20, include_data=False))
        assert moved < BOUND, moved
        assert sorted(j.id for j in dead) == sorted(ids)
        for j in dead:
            assert j.status is JobStatus.DLQ and j.attempts == 1
            assert j.failed_reason is not None and "no stock" in j.failed_reason
            assert j.finished_at is not None
            assert j.data is None and j.stacktrace is None
        full = await q.get_dlq_jobs(1)
        assert full[0].data["blob"] == "x" * BLOB and full[0].stacktrace
    finally:
        await q.close()


async def test_damaged_records_are_still_marked_in_a_light_listing(
    redis_url: str, prefix: str, redis_client: Any
) -> None:
    q = _queue(redis_url, prefix)
    try:
        sound = await q.add_job("ok", {"i": 1})
        undecodable = await q.add_job("bad-data", {"i": 2})
        wrong_type = await q.add_job("gone-hash", {"i": 3})
        bare = await q.add_job("bare", {"i": 4})
        key = q.keys.job
        # Data no serializer can read, and large: the row is shown, the data not read.
        await redis_client.hset(key(undecodable), "d", b"\xff\xfe not json " + b"z" * BLOB)
        await redis_client.delete(key(wrong_type))
        await redis_client.set(key(wrong_type), "a string")
        # A record holding none of the fields a row shows (only its data): damaged.
        await redis_client.delete(key(bare))
        await redis_client.hset(key(bare), "d", b'{"i": 4}')
        rows, moved = await _moved_async(
            redis_url, q.get_jobs_by_status("waiting", 10, include_data=False)
        )
        assert moved < BOUND, moved
        by_id = {j.id: j for j in rows}
        assert set(by_id) == {sound, undecodable, wrong_type, bare}
        assert by_id[sound].damaged is None and by_id[sound].name == "ok"
        assert by_id[undecodable].damaged is None and by_id[undecodable].name == "bad-data"
        assert "another type" in (by_id[wrong_type].damaged or "")
        assert by_id[wrong_type].status is JobStatus.WAITING
        assert "none of the fields" in (by_id[bare].damaged or "")
        assert by_id[bare].status is JobStatus.WAITING
        # The full read still names the undecodable data.
        full = {j.id: j for j in await q.get_jobs_by_status("waiting", 10)}
        assert "data cannot be decoded" in (full[undecodable].damaged or "")
        # A record deleted meanwhile is left out, as in a full listing.
        await redis_client.delete(key(sound))
        page = await q.list_jobs("waiting", include_data=False)
        assert sound not in {j.id for j in page.jobs} and len(page.jobs) == 3
    finally:
        await q.close()


async def test_a_partitioned_queue_lists_without_data_too(redis_url: str, prefix: str) -> None:
    pq = PartitionedQueue(
        "llp", partitions=2, redis=redis_url, prefix=prefix, max_payload_bytes=MAX_PAYLOAD
    )
    try:
        for i in range(4):
            await pq.add_job("big", _big(i), partition_key=str(i))
        rows, moved = await _moved_async(
            redis_url, pq.get_jobs_by_status("waiting", 10, include_data=False)
        )
        assert moved < BOUND, moved
        assert len(rows) == 4 and all(r.data is None and r.name == "big" for r in rows)
        assert len(await pq.get_dlq_jobs(10, include_data=False)) == 0
    finally:
        await pq.close()


def test_the_sync_client_takes_include_data(redis_url: str, prefix: str) -> None:
    with SyncJobQueue("lls", redis=redis_url, prefix=prefix) as q:
        q.add_job("small", {"i": 1})
        assert q.get_jobs_by_status("waiting", include_data=False)[0].data is None
        assert q.get_jobs_by_status("waiting")[0].data == {"i": 1}


# ---------------------------------------------------------------------- the CLI
def test_cli_jobs_list_reads_no_data(app: str, redis_url: str, prefix: str) -> None:
    ids = asyncio.run(_fill(redis_url, prefix))
    (result, peak), moved = _moved(
        redis_url, lambda: _peak(lambda: _ok("jobs", "list", app + ":queue"))
    )
    assert moved < BOUND, moved
    assert peak < 4 * BLOB, peak  # the CLI held no job's data (20 MB in all) at once
    lines = result.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == ids
    assert all("\tbig\twaiting\t0/1\t" in line for line in lines)
    # --json prints every field, data included: it reads the data.
    out = json.loads(_ok("jobs", "list", app + ":queue", "-n", "1", "--json").stdout)
    assert out["jobs"][0]["data"]["i"] == 0
    # A --data filter looks into the data: it still finds the job.
    hit = _ok("jobs", "list", app + ":queue", "--data", "i=3").stdout.splitlines()
    assert [line.split("\t")[0] for line in hit] == [ids[3]]


def test_cli_dlq_list_and_jobs_list_dlq_read_no_data(app: str, redis_url: str, prefix: str) -> None:
    ids = asyncio.run(_fill(redis_url, prefix, dead=True, name="lld"))
    result, moved = _moved(redis_url, lambda: _ok("dlq", "list", app + ":dead"))
    assert moved < BOUND, moved
    lines = result.stdout.splitlines()
    assert sorted(line.split("\t")[0] for line in lines) == sorted(ids)
    assert all("attempts=1" in line and "no stock" in line for line in lines)
    result, moved = _moved(redis_url, lambda: _ok("jobs", "list", app + ":dead", "-s", "dlq"))
    assert moved < BOUND, moved
    assert len(result.stdout.splitlines()) == N_JOBS
    # Replay by filter reads ids only: no data moved either.
    result, moved = _moved(
        redis_url, lambda: _ok("dlq", "replay", app + ":dead", "--name", "big", "--yes")
    )
    assert moved < BOUND, moved
    assert f"replayed {N_JOBS}" in result.stdout


def test_cli_lists_a_partitioned_queue_without_data(app: str, redis_url: str, prefix: str) -> None:
    async def fill() -> None:
        pq = PartitionedQueue(
            "llp", partitions=2, redis=redis_url, prefix=prefix, max_payload_bytes=MAX_PAYLOAD
        )
        try:
            for i in range(3):
                await pq.add_job("big", _big(i), partition_key=str(i))
        finally:
            await pq.close()

    asyncio.run(fill())
    result, moved = _moved(redis_url, lambda: _ok("jobs", "list", app + ":parts"))
    assert moved < BOUND, moved
    assert len(result.stdout.splitlines()) == 3


# ---------------------------------------------------------------------- the dashboard
async def test_dashboard_job_pages_read_no_data(redis_url: str, prefix: str) -> None:
    await _fill(redis_url, prefix)
    await _fill(redis_url, prefix, dead=True, name="lld")
    queues = [_queue(redis_url, prefix), _queue(redis_url, prefix, "lld")]
    app = create_dashboard(queues=queues, insecure_local=True)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
            for url, rows in (
                ("/q/ll?state=waiting", N_JOBS),
                ("/q/lld?state=dlq", N_JOBS),
                ("/q/lld?state=dlq&name=bi&error=stock", N_JOBS),
            ):
                r, moved = await _moved_async(redis_url, c.get(url))
                assert r.status_code == 200, r.text
                assert moved < BOUND, (url, moved)
                assert r.text.count('name="ids"') == rows, url
            # A search by data field looks into the data, and still finds the job.
            r = await c.get("/q/ll?state=waiting&field=i&value=2")
            assert r.status_code == 200 and r.text.count('name="ids"') == 1
    finally:
        for q in queues:
            await q.close()
