"""A worker's event-loop watchdog counts (``loopwatch.py``) in its heartbeat record, and
so in ``presence.live_workers``, ``kitium-queue workers`` (``--json`` and text) and the
dashboard's Workers page; a record written by another client with garbage in those
fields is read clamped, never an error.

The CLI runs in a thread (``asyncio.to_thread``): the worker runs in the test's loop.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from helpers import app_module, wait_until
from kitium_queue import JobQueue
from kitium_queue.cli import main
from kitium_queue.dashboard import DashboardToken, create_dashboard
from kitium_queue.presence import MAX_LOOP_BLOCKED, MAX_LOOP_BLOCKED_MS, live_workers

pytestmark = pytest.mark.redis_only

THRESHOLD_MS = 150
VIEWER = "vw-" + "v" * 29
TOKENS = [DashboardToken(VIEWER, "vera@example.com", "viewer")]


@pytest.fixture
def app(tmp_path: Path, redis_url: str, prefix: str) -> Iterator[str]:
    """Module with ``queue`` (queue 'lb')."""
    source = (
        "from kitium_queue import JobQueue\n"
        f"queue = JobQueue('lb', redis={redis_url!r}, prefix={prefix!r})\n"
    )
    with app_module(tmp_path, source, "kq_workers_loop") as module:
        yield module


@pytest.fixture
async def queue(redis_url: str, prefix: str) -> AsyncIterator[JobQueue]:
    q = JobQueue(
        "lb",
        redis=redis_url,
        prefix=prefix,
        worker={"loop_block_warn": THRESHOLD_MS, "scheduler": False, "shutdown_timeout": 2000},
    )
    try:
        yield q
    finally:
        await q.close()


async def _cli(*args: str) -> Result:
    result = await asyncio.to_thread(CliRunner().invoke, main, list(args), env={"COLUMNS": "300"})
    assert result.exit_code == 0, (result.output, result.stderr)
    return result


def _text_rows(result: Result) -> list[dict[str, str]]:
    lines = result.stdout.splitlines()
    header = lines[0].split("\t")
    assert "loop blocked" in header, header
    return [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:]]


async def _workers_page(q: JobQueue) -> str:
    dash = create_dashboard(queues=[q], tokens=TOKENS, refresh_ms=0)
    transport = httpx.ASGITransport(app=dash, client=("127.0.0.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://dash") as c:
        r = await c.post("/login", data={"token": VIEWER, "next": "/"})
        assert r.status_code == 303, r.text
        r = await c.get("/q/lb/workers")
        assert r.status_code == 200, r.text[:300]
        return r.text


def _page_cells(html: str, wid: str) -> tuple[list[str], list[str]]:
    """The Workers table's header cells and the cells of ``wid``'s row."""
    heads = re.findall(r"<th>([^<]*)</th>", html)
    row = next(r for r in re.findall(r"<tr>(.*?)</tr>", html, re.S) if wid in r)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
    assert len(cells) == len(heads), (heads, cells)
    return heads, cells


def slow_completed_handler(event: Any) -> None:
    time.sleep(0.6)  # blocks the worker's loop once: a sync handler runs on it


async def test_a_blocked_worker_shows_its_count_everywhere(app: str, queue: JobQueue) -> None:
    async def work(job: Any) -> str:
        return "ok"

    queue.process("n", work)
    queue.on("job-completed", slow_completed_handler)
    await queue.start(concurrency=2)
    worker = queue.worker
    assert worker is not None
    watch = worker.leases.loopwatch
    await queue.add_job("n", {})
    await wait_until(lambda: watch.blocked >= 1, timeout=15)
    assert watch.blocked == 1
    await worker.presence(queue).beat()  # the next heartbeat, now rather than within 5 s

    # live_workers
    (w,) = await live_workers(queue)
    assert w.id == worker.id
    assert w.loop_blocked == 1
    assert THRESHOLD_MS <= w.loop_longest_ms == watch.longest_ms < 60_000

    # kitium-queue workers --json
    (got,) = json.loads((await _cli("workers", f"{app}:queue", "--json")).stdout)
    assert got["id"] == worker.id
    assert got["loop_blocked"] == 1
    assert THRESHOLD_MS <= got["loop_longest_ms"] < 60_000

    # kitium-queue workers (text)
    (row,) = _text_rows(await _cli("workers", f"{app}:queue"))
    assert row["id"] == worker.id
    said = w.loop_blocked_text()
    assert said.startswith("1 (longest ") and said.endswith(("ms)", "s)")), said
    assert row["loop blocked"] == said
    rich = (await _cli("--rich", "workers", f"{app}:queue")).stdout
    assert "loop blocked" in rich and said in rich, rich

    # the dashboard's Workers page
    heads, cells = _page_cells(await _workers_page(queue), worker.id)
    assert cells[heads.index("Loop blocked")] == said


async def test_a_worker_never_blocked_shows_a_dash(app: str, queue: JobQueue) -> None:
    queue.process("n", lambda job: "ok")
    await queue.start()
    assert queue.worker is not None
    (w,) = await live_workers(queue)
    assert (w.loop_blocked, w.loop_longest_ms, w.loop_blocked_text()) == (0, 0, "-")
    (got,) = json.loads((await _cli("workers", f"{app}:queue", "--json")).stdout)
    assert (got["loop_blocked"], got["loop_longest_ms"]) == (0, 0)
    (row,) = _text_rows(await _cli("workers", f"{app}:queue"))
    assert row["loop blocked"] == "-"
    heads, cells = _page_cells(await _workers_page(queue), queue.worker.id)
    assert cells[heads.index("Loop blocked")] == "-"


async def _record(q: JobQueue, wid: str, **more: Any) -> None:
    """A presence record for ``wid`` and its index entry, written by hand."""
    client = await q.client()
    now = int(time.time() * 1000)
    fields = {"host": "h", "pid": 7, "conc": 2, "run": 0, "done": 0, "start": now,
              "seen": now, "names": '["n"]', "feat": "[]", "stop": "0", **more}  # fmt: skip
    await client.hset(q.keys.worker(wid), mapping=fields)
    await client.pexpire(q.keys.worker(wid), 30_000)
    await client.zadd(q.keys.workers, {wid: now})


HUGE = f"{MAX_LOOP_BLOCKED} (longest {MAX_LOOP_BLOCKED_MS / 1000:.1f} s)"


@pytest.mark.parametrize(
    ("blk", "blkms", "blocked", "longest_ms", "said"),
    [
        ("9" * 40, "9" * 40, MAX_LOOP_BLOCKED, MAX_LOOP_BLOCKED_MS, HUGE),  # huge
        ("9" * 5000, "1" * 5000, 0, 0, "-"),  # past int()'s digit limit: not a number
        ("-5", "-70000", 0, 0, "-"),  # negative
        ("three", "1.5e3", 0, 0, "-"),  # not integers
        ("\x1b[31m2", "<b>7</b>", 0, 0, "-"),  # an escape, markup
        ("4", "-1", 4, 0, "4 (longest 0 ms)"),  # a count with a damaged longest
        ("0", "2500", 0, 2500, "-"),  # a longest without a count
        ("3", "1234", 3, 1234, "3 (longest 1.2 s)"),
    ],
    ids=[
        "huge",
        "too-many-digits",
        "negative",
        "not-integers",
        "markup",
        "bad-longest",
        "no-count",
        "sound",
    ],
)
async def test_a_garbage_record_is_shown_clamped(
    app: str, queue: JobQueue, blk: str, blkms: str, blocked: int, longest_ms: int, said: str
) -> None:
    wid = "hand-written"
    await _record(queue, wid, blk=blk, blkms=blkms)
    (w,) = await live_workers(queue)
    assert (w.loop_blocked, w.loop_longest_ms) == (blocked, longest_ms)
    (got,) = json.loads((await _cli("workers", f"{app}:queue", "--json")).stdout)
    assert (got["loop_blocked"], got["loop_longest_ms"]) == (blocked, longest_ms)
    (row,) = _text_rows(await _cli("workers", f"{app}:queue"))
    assert w.loop_blocked_text() == said
    assert row["loop blocked"] == said
    html = await _workers_page(queue)
    heads, cells = _page_cells(html, wid)
    assert cells[heads.index("Loop blocked")] == said
    assert "\x1b" not in html and "<b>7" not in html


async def test_a_record_of_an_older_worker_shows_a_dash(app: str, queue: JobQueue) -> None:
    await _record(queue, "older")  # no blk / blkms fields
    (w,) = await live_workers(queue)
    assert (w.loop_blocked, w.loop_longest_ms) == (0, 0)
    (got,) = json.loads((await _cli("workers", f"{app}:queue", "--json")).stdout)
    assert (got["loop_blocked"], got["loop_longest_ms"]) == (0, 0)
    (row,) = _text_rows(await _cli("workers", f"{app}:queue"))
    assert row["loop blocked"] == "-"
