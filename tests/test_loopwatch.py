"""The event loop's watchdog (``loopwatch.py``): a worker whose loop user code blocks says
so once per episode, naming that code, and counts it; a healthy worker says nothing;
``worker.loop_block_warn`` is checked, and 0 starts no thread; no thread outlives the
worker."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from helpers import all_completed, in_forked_child, wait_until
from kitium_queue import ConfigurationError, JobQueue, QueueConfig, WorkerConfig
from kitium_queue.loopwatch import default_threshold

BLOCKED = re.compile(r"event loop of queue \S+ was blocked for at least (\d+) ms")
OPTIONS: dict[str, Any] = {"concurrency": 4, "scheduler": False, "shutdown_timeout": 2000}


class Metrics:
    """A metrics adapter that records what it is given."""

    def __init__(self) -> None:
        self.counted: list[tuple[str, float, dict[str, str]]] = []
        self.observed: list[tuple[str, float, dict[str, str]]] = []

    def increment(self, name: str, value: float = 1, tags: Any = None) -> None:
        self.counted.append((name, value, dict(tags or {})))

    def observe(self, name: str, value: float, tags: Any = None) -> None:
        self.observed.append((name, value, dict(tags or {})))


@pytest.fixture
async def queues(redis_url: str, prefix: str) -> AsyncIterator[list[JobQueue]]:
    made: list[JobQueue] = []
    yield made
    for q in made:
        await q.close()


def _queue(made: list[JobQueue], redis_url: str, prefix: str, **worker: Any) -> JobQueue:
    q = JobQueue(
        "lw",
        redis=redis_url,
        prefix=prefix,
        worker={**OPTIONS, **worker},
        metrics=Metrics(),
    )
    made.append(q)
    return q


def _watch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("kq-loopwatch-")]


def _blocked_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.levelno == logging.WARNING and BLOCKED.search(r.getMessage())
    ]


def slow_completed_handler(event: Any) -> None:
    time.sleep(0.6)  # blocks the worker's loop: a sync handler runs on it


async def test_a_sync_event_handler_that_blocks_the_loop_is_named_once(
    redis_url: str, prefix: str, queues: list[JobQueue], caplog: pytest.LogCaptureFixture
) -> None:
    q = _queue(queues, redis_url, prefix, loop_block_warn=200)

    async def work(job: Any) -> str:
        return "ok"

    q.process("n", work)
    q.on("job-completed", slow_completed_handler)
    with caplog.at_level(logging.WARNING, "kitium_queue"):
        await q.start()
        await q.add_job("n", {})
        await wait_until(lambda: _blocked_lines(caplog), timeout=15)
        await asyncio.sleep(0.3)  # a second line for the same episode would be here now
        lines = _blocked_lines(caplog)
    assert len(lines) == 1, [r.getMessage() for r in lines]
    text = lines[0].getMessage()
    assert lines[0].name == "kitium_queue.worker"
    assert f" in: slow_completed_handler ({__file__}:" in text
    assert "_pytest" not in text and "asyncio" not in text  # the handler's frame alone
    match = BLOCKED.search(text)
    assert match is not None and 200 <= int(match.group(1)) < 60_000
    # What it risks and what to do.
    assert f"lock_renew_time={q.lock_renew_ms} ms" in text
    assert f"lock_duration={q.lock_duration_ms} ms" in text
    assert "plain def processor" in text
    assert q.worker is not None
    watch = q.worker.leases.loopwatch
    assert watch.blocked == 1 and 200 <= watch.longest_ms < 60_000


async def test_an_async_processor_that_sleeps_is_named(
    redis_url: str, prefix: str, queues: list[JobQueue], caplog: pytest.LogCaptureFixture
) -> None:
    q = _queue(queues, redis_url, prefix, loop_block_warn=200)

    async def sleepy_async_processor(job: Any) -> str:
        time.sleep(0.6)  # the mistake: a blocking call in an async def processor
        return "ok"

    text = await _first_blocked_line(q, sleepy_async_processor, caplog)
    assert "sleepy_async_processor" in text and __file__ in text
    assert "kitium_queue" not in text.split(" in: ", 1)[1].split(". Leases", 1)[0]


async def _first_blocked_line(q: JobQueue, processor: Any, caplog: pytest.LogCaptureFixture) -> str:
    """Run one job of ``processor`` (which blocks the loop) and return the first
    blocked-loop warning."""
    q.process("n", processor)
    with caplog.at_level(logging.WARNING, "kitium_queue"):
        await q.start()
        await q.add_job("n", {})
        await wait_until(lambda: _blocked_lines(caplog), timeout=15)
    return str(_blocked_lines(caplog)[0].getMessage())


def _deep(n: int) -> None:
    if n == 0:
        time.sleep(0.5)
        return
    _deep(n - 1)


async def test_a_deep_stack_is_cut_to_its_ends(
    redis_url: str, prefix: str, queues: list[JobQueue], caplog: pytest.LogCaptureFixture
) -> None:
    q = _queue(queues, redis_url, prefix, loop_block_warn=200)

    async def deep_async_processor(job: Any) -> str:
        _deep(6)
        return "ok"

    text = await _first_blocked_line(q, deep_async_processor, caplog)
    where = text.split(" in: ", 1)[1].split(". Leases", 1)[0]
    frames = where.split(" <- ")
    # The innermost two, then the two outermost of the code the worker called.
    assert len(frames) == 5 and frames[2] == "...", frames
    assert all(f.startswith(f"_deep ({__file__}:") for f in (*frames[:2], frames[3]))
    assert frames[4].startswith(f"deep_async_processor ({__file__}:")


async def test_a_healthy_worker_says_nothing(
    redis_url: str, prefix: str, queues: list[JobQueue], caplog: pytest.LogCaptureFixture
) -> None:
    q = _queue(queues, redis_url, prefix, concurrency=20)

    async def work(job: Any) -> int:
        await asyncio.sleep(0.001)
        return int(job.data["i"])

    q.process("n", work)
    q.on("job-completed", lambda event: None)
    with caplog.at_level(logging.WARNING, "kitium_queue"):
        await q.start()
        assert q.worker is not None
        await wait_until(_watch_threads, timeout=5)  # from the renewal task's first step
        ids = await q.add_jobs([("n", {"i": i}) for i in range(200)])
        await wait_until(lambda: all_completed(q, list(ids)), timeout=30)
        await asyncio.sleep(0.3)
        watch = q.worker.leases.loopwatch
        assert watch.threshold_ms == default_threshold(q.lock_renew_ms) == 1000
    assert _blocked_lines(caplog) == []
    assert watch.blocked == 0 and watch.longest_ms == 0


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), (0, 0), (250, 250), (0.4, 1), (timedelta(seconds=2), 2000)],
)
def test_the_option_is_checked_and_kept_in_ms(value: Any, expected: int | None) -> None:
    assert WorkerConfig(loop_block_warn=value).loop_block_warn == expected
    config = QueueConfig("lw", worker={"loop_block_warn": value})
    assert config.worker == {"loop_block_warn": value}


@pytest.mark.parametrize("value", [-1, "200", True, float("nan"), [200]])
def test_a_bad_option_is_refused(value: Any, redis_url: str, prefix: str) -> None:
    with pytest.raises(ConfigurationError, match=r"worker\.loop_block_warn"):
        WorkerConfig(loop_block_warn=value)
    with pytest.raises(ConfigurationError, match=r"worker\.loop_block_warn"):
        JobQueue("lw", redis=redis_url, prefix=prefix, worker={"loop_block_warn": value})


def test_the_default_threshold_follows_the_renewal_interval() -> None:
    assert default_threshold(15_000) == 1000
    assert default_threshold(1000) == 500
    assert default_threshold(100) == 100


async def test_zero_starts_no_thread_and_says_nothing(
    redis_url: str, prefix: str, queues: list[JobQueue], caplog: pytest.LogCaptureFixture
) -> None:
    before = _watch_threads()
    q = _queue(queues, redis_url, prefix, loop_block_warn=0)

    async def sleepy_async_processor(job: Any) -> str:
        time.sleep(0.4)
        return "ok"

    q.process("n", sleepy_async_processor)
    with caplog.at_level(logging.WARNING, "kitium_queue"):
        await q.start()
        jid = await q.add_job("n", {})
        await wait_until(lambda: all_completed(q, [jid]), timeout=15)
        assert _watch_threads() == before
    assert _blocked_lines(caplog) == []
    assert q.worker is not None and q.worker.leases.loopwatch.blocked == 0


@pytest.mark.parametrize("how", ["stop", "close"])
async def test_no_thread_is_left_after_the_worker_ends(
    how: str, redis_url: str, prefix: str, queues: list[JobQueue]
) -> None:
    before = set(_watch_threads())
    q = _queue(queues, redis_url, prefix, loop_block_warn=200)
    q.process("n", lambda job: None)
    await q.start()
    worker = q.worker
    assert worker is not None
    await wait_until(lambda: set(_watch_threads()) - before, timeout=5)
    mine = [t for t in _watch_threads() if t not in before]
    assert len(mine) == 1 and mine[0].daemon and mine[0].name == "kq-loopwatch-lw"
    if how == "stop":
        await worker.stop()
    else:
        await q.close()
    assert not mine[0].is_alive()
    assert set(_watch_threads()) <= before


async def test_the_counters_reach_the_metrics_adapter(
    redis_url: str, prefix: str, queues: list[JobQueue]
) -> None:
    q = _queue(queues, redis_url, prefix, loop_block_warn=150)

    async def sleepy_async_processor(job: Any) -> str:
        time.sleep(0.4 if job.data["i"] == 0 else 0.7)
        return "ok"

    q.process("n", sleepy_async_processor)
    q.on("job-completed", lambda event: None)
    await q.start()
    for i in range(2):  # one after the other: two episodes
        jid = await q.add_job("n", {"i": i})
        await wait_until(lambda: all_completed(q, [jid]), timeout=15)  # noqa: B023
    assert q.worker is not None
    watch = q.worker.leases.loopwatch
    await wait_until(lambda: watch.blocked >= 2, timeout=5)
    assert 500 <= watch.longest_ms < 60_000
    metrics = q.ctx.metrics
    assert isinstance(metrics, Metrics)
    counted = [c for c in metrics.counted if c[0] == "worker.loop_blocked"]
    observed = [o for o in metrics.observed if o[0] == "worker.loop_blocked_ms"]
    assert len(counted) == watch.blocked and all(c[2] == {"queue": "lw"} for c in counted)
    assert len(observed) == watch.blocked
    assert max(o[1] for o in observed) == watch.longest_ms
    assert min(o[1] for o in observed) >= 150


async def test_a_forked_child_inherits_no_watchdog(
    redis_url: str, prefix: str, queues: list[JobQueue]
) -> None:
    q = _queue(queues, redis_url, prefix, loop_block_warn=200)
    q.process("n", lambda job: None)
    await q.start()
    assert q.worker is not None
    watch = q.worker.leases.loopwatch
    await wait_until(lambda: watch.blocked == 0 and _watch_threads(), timeout=5)

    def child() -> str:
        # The parent's next beat, come 5 s late in the child: the child owns no watchdog.
        watch._beat = (watch._beat[0], time.monotonic() - 5.0)
        watch._on_beat()
        names = [t.name for t in _watch_threads()]
        watch.stop()  # returns at once: no thread of the parent's to wait for
        return f"{watch.blocked} {names}"

    assert in_forked_child(child) == "0 []"
    assert watch.blocked == 0 and _watch_threads()  # the parent's runs on


_STARVED_CHILD = """
import asyncio, json, sys
from kitium_queue import JobQueue

async def main(url, prefix):
    q = JobQueue("lw-stopped", redis=url, prefix=prefix,
                 worker={"concurrency": 2, "scheduler": False, "loop_block_warn": 200})
    q.process("n", lambda job: None)
    await q.start()
    while q.worker.leases.loopwatch._thread is None:
        await asyncio.sleep(0.01)
    print("ready", flush=True)
    await asyncio.sleep(2.5)  # idle: the parent stops this process meanwhile
    watch = q.worker.leases.loopwatch
    out = {"blocked": watch.blocked, "starved": watch.starved}
    await q.close()
    print(json.dumps(out), flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def test_a_stopped_process_is_not_blamed_on_code(redis_url: str, prefix: str) -> None:
    """A worker process stopped (SIGSTOP) while its loop waits for I/O: its beats come
    late, but the loop was found idle in its selector, so nothing is said and the
    episode counts as ``starved``, not ``blocked`` (a process starved of CPU by a loaded
    machine is the same case)."""
    import os
    import signal
    import subprocess
    import sys

    child = subprocess.Popen(
        [sys.executable, "-c", _STARVED_CHILD, redis_url, prefix],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        time.sleep(0.3)
        os.kill(child.pid, signal.SIGSTOP)
        time.sleep(1.0)
        os.kill(child.pid, signal.SIGCONT)
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    import json

    got = json.loads(out.strip().splitlines()[-1])
    assert got["blocked"] == 0 and got["starved"] >= 1, (got, err[-2000:])
    assert not BLOCKED.search(err), err[-2000:]
