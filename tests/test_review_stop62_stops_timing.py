"""Stops and timings, as a new user meets them.

* ``kitium-queue dashboard`` stopped by SIGTERM ran none of its cleanup: uvicorn raised
  the signal again once it had stopped, the default SIGTERM ended the process (exit 143)
  and the audit refusal summary was lost; with ``--audit`` (a plain ``AuditLog``) no stop
  summed the window up. SIGTERM and SIGINT now both stop it gracefully, exit 0, with the
  summary written. ``kitium-queue metrics`` exits 0 on SIGTERM (kept);
* a job still running past ``shutdown_timeout`` whose processor swallows its
  cancellation was said to be "handed back to queue" while it stayed leased;
* in process mode a run's duration (``Outcome.duration_ms``, ``job.duration_ms``, the
  Prometheus histogram) counted the child's start-up;
* in process mode a failure reason read ``RemoteError: ValueError: ...`` (thread mode:
  ``ValueError: ...``), a child's death named ``IncompleteReadError``, and a processor
  raising ``KeyboardInterrupt`` was "killed by signal 2 (SIGINT)".
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers import app_module, wait_until
from kitium_queue import JobQueue, JobStatus
from kitium_queue.features.audit import AuditLog

pytestmark = pytest.mark.redis_only

KEY = secrets.token_hex(32)
VIEWER = "vw-" + "v" * 29
CLI = [sys.executable, "-m", "kitium_queue.cli"]
SRC = str(Path(__file__).resolve().parent.parent / "src")


def _env(folder: Path) -> dict[str, str]:
    env = dict(os.environ, KITIUM_QUEUE_AUDIT_KEY=KEY)
    env["PYTHONPATH"] = os.pathsep.join([str(folder), SRC, env.get("PYTHONPATH", "")])
    return env


def _start(args: list[str], folder: Path) -> tuple[subprocess.Popen[str], str]:
    """Start a serving CLI command; returns it and its URL (from its ``serving`` line)."""
    proc = subprocess.Popen(
        [*CLI, *args],
        env=_env(folder),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "serving" not in line:
        proc.kill()
        raise AssertionError(f"not serving: {line!r} {proc.communicate(timeout=10)}")
    return proc, line.split()[-1]


def _stop(proc: subprocess.Popen[str], sig: int) -> tuple[int, str]:
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, err


# ---------------------------------------------------------------------------- 1. stops
@pytest.mark.parametrize(
    ("flag", "sig", "port"),
    [
        ("--access", signal.SIGTERM, 24711),
        ("--audit", signal.SIGTERM, 24712),
        ("--audit", signal.SIGINT, 24713),
    ],
)
async def test_dashboard_stop_writes_the_refusal_summary_and_exits_0(
    tmp_path: Path, redis_url: str, prefix: str, flag: str, sig: int, port: int
) -> None:
    """15 refused POSTs of a viewer (10 entries, 5 counted), then a signal within the
    10 s window: the summary (``suppressed: 5``) is written and the exit code is 0."""
    source = (
        "from kitium_queue import JobQueue\n"
        f"queue = JobQueue('shop', redis={redis_url!r}, prefix={prefix!r})\n"
    )
    if flag == "--access":  # the viewer may read the queue (its grant), not pause it
        from kitium_queue.features.access import AccessControlManager

        acm = AccessControlManager(redis_url, prefix=prefix, audit_key=KEY)
        try:
            await acm.grant_access(
                principal_id="vera@example.com", queue_pattern="shop", role="viewer"
            )
        finally:
            await acm.close()
    with app_module(tmp_path, source) as module:
        proc, url = _start(
            [
                "dashboard",
                f"{module}:queue",
                "--port",
                str(port),
                "--token",
                f"{VIEWER}:vera@example.com:viewer",
                "--refresh-ms",
                "0",
                flag,
            ],
            tmp_path,
        )
        try:
            async with httpx.AsyncClient(base_url=url.rstrip("/")) as c:
                r = await c.post("/login", data={"token": VIEWER, "next": "/"})
                assert r.status_code == 303, r.text
                page = (await c.get("/q/shop")).text
                csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
                for _ in range(15):
                    r = await c.post("/q/shop/action/pause", data={"csrf": csrf})
                    assert r.status_code == 403, r.text
        except BaseException:
            proc.kill()
            proc.communicate(timeout=10)
            raise
        code, err = _stop(proc, sig)
    assert code == 0, err
    log = AuditLog(redis_url, prefix=prefix, key=KEY)
    try:
        got = await log.query(action="access.denied", newest_first=False)
    finally:
        await log.close()
    single = [e for e in got if "suppressed" not in e.metadata]
    summaries = [e.metadata["suppressed"] for e in got if "suppressed" in e.metadata]
    assert (len(single), summaries) == (10, [5]), err


def test_metrics_exits_0_on_sigterm(tmp_path: Path, redis_url: str, prefix: str) -> None:
    pytest.importorskip("prometheus_client")
    source = (
        "from kitium_queue import JobQueue\n"
        f"queue = JobQueue('shop', redis={redis_url!r}, prefix={prefix!r})\n"
    )
    with app_module(tmp_path, source) as module:
        proc, url = _start(["metrics", f"{module}:queue", "--port", "24714"], tmp_path)
        try:
            assert httpx.get(url, timeout=10).status_code == 200
        except BaseException:
            proc.kill()
            proc.communicate(timeout=10)
            raise
        code, err = _stop(proc, signal.SIGTERM)
    assert code == 0, err


# --------------------------------------------------------- 2. a job that stays leased
async def test_a_job_left_leased_at_stop_is_not_said_handed_back(
    redis_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An async processor that swallows its cancellation, stopped with a 1 s
    shutdown_timeout: the warning counts it among those that did not end (left
    leased), not among the jobs handed back, and the job is still active."""
    release = asyncio.Event()
    started = asyncio.Event()

    async def stubborn(job: Any) -> str:
        started.set()
        while not release.is_set():
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                continue
        return "late"

    q = JobQueue(
        "stuck", redis=redis_url, prefix=prefix, worker={"concurrency": 1, "shutdown_timeout": 1000}
    )
    q.process("stubborn", stubborn)
    caplog.set_level(logging.WARNING, logger="kitium_queue")
    try:
        jid = await q.add_job("stubborn", {})
        await q.start()
        await asyncio.wait_for(started.wait(), 10)
        await q.close()
        said = [r.getMessage() for r in caplog.records if "shutdown_timeout were" in r.getMessage()]
        assert len(said) == 1, said
        assert "0 ended (handed back" in said[0], said
        assert "1 did not end: left leased" in said[0], said
        reader = JobQueue("stuck", redis=redis_url, prefix=prefix)
        try:
            info = await reader.get_job_status(jid)
            assert info is not None and info.status is JobStatus.ACTIVE
        finally:
            await reader.close()
    finally:
        release.set()
        await asyncio.sleep(0.1)
        await q.close()


# ------------------------------------------------- 3. process mode: the run's duration
class _Metrics:
    def __init__(self) -> None:
        self.seen: list[tuple[str, float]] = []

    def increment(self, name: str, value: float = 1, tags: Any = None) -> None:
        pass

    def observe(self, name: str, value: float, tags: Any = None) -> None:
        self.seen.append((name, value))


class _Finished:
    """A lifecycle subscriber calling ``fn(job, outcome)`` for each recorded outcome."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def finished(self, queue: str, job: Any, outcome: Any) -> None:
        self.fn(job, outcome)


SLOW_IMPORT_S = 0.8


async def test_process_mode_duration_leaves_out_the_childs_start_up(
    tmp_path: Path, redis_url: str, prefix: str
) -> None:
    """A fresh child whose processor module sleeps 0.8 s on import: the run's duration
    (``Outcome.duration_ms`` and ``job.duration_ms``) counts from the processor's start,
    as its timeout does, so it stays below that sleep."""
    source = f"import time\ntime.sleep({SLOW_IMPORT_S})\n\ndef quick(job):\n    return 1\n"
    metrics = _Metrics()
    outcomes: list[Any] = []
    with app_module(tmp_path, source, "kq_slow") as module:
        mod = __import__(module)
        q = JobQueue(
            "dur", redis=redis_url, prefix=prefix, metrics=metrics, worker={"concurrency": 1}
        )
        q.process("quick", mod.quick, mode="process")
        q.subscribe(_Finished(lambda job, outcome: outcomes.append(outcome)))
        try:
            t0 = time.monotonic()
            jid = await q.add_job("quick", {})
            await q.start()
            await wait_until(lambda: outcomes, 30)
            info = await q.get_job_status(jid)
            assert info is not None and info.status is JobStatus.COMPLETED
            assert time.monotonic() - t0 >= SLOW_IMPORT_S  # the child did sleep
        finally:
            await q.close()
    took = [v for n, v in metrics.seen if n == "job.duration_ms"]
    assert len(took) == 1 and took[0] < SLOW_IMPORT_S * 1000, took
    assert outcomes[0].duration_ms is not None
    assert outcomes[0].duration_ms < SLOW_IMPORT_S * 1000, outcomes[0].duration_ms


# ------------------------------------------- 4. process mode: the failure reasons
FAILING = """
import os

def boom(job):
    raise ValueError(f"bad row {job.data['row']}")

def die(job):
    os._exit(17)

def interrupt(job):
    raise KeyboardInterrupt
"""


async def test_process_mode_failure_reasons_read_as_in_thread_mode(
    tmp_path: Path, redis_url: str, prefix: str
) -> None:
    errors: dict[str, Any] = {}
    with app_module(tmp_path, FAILING, "kq_failing") as module:
        mod = __import__(module)
        q = JobQueue("why", redis=redis_url, prefix=prefix, worker={"concurrency": 2})
        q.process("thread-boom", mod.boom)
        for name in ("boom", "die", "interrupt"):
            q.process(f"proc-{name}", getattr(mod, name), mode="process")
        q.subscribe(_Finished(lambda job, outcome: errors.__setitem__(job.name, outcome.error)))
        try:
            ids = {
                name: await q.add_job(name, {"row": 7}, attempts=1)
                for name in ("thread-boom", "proc-boom", "proc-die", "proc-interrupt")
            }
            await q.start()
            await wait_until(lambda: len(errors) == 4, 60, message=lambda: repr(errors))
            reasons = {}
            for name, jid in ids.items():
                info = await q.get_job_status(jid)
                assert info is not None and info.status is JobStatus.DLQ, info
                reasons[name] = info.failed_reason
        finally:
            await q.close()
    assert reasons["thread-boom"] == "ValueError: bad row 7"
    assert reasons["proc-boom"] == "ValueError: bad row 7", reasons
    assert reasons["proc-die"] == (
        "ChildProcessDied: the child process running the job exited (exit code 17)"
    ), reasons
    assert reasons["proc-interrupt"].startswith("KeyboardInterrupt: raised by the processor")
    assert "signal" not in reasons["proc-interrupt"], reasons
    # What a hook meets (README, "Workers"): the child's type by name.
    from kitium_queue.procpool import RemoteError

    assert isinstance(errors["proc-boom"], RemoteError)
    assert errors["proc-boom"].type_name == "ValueError"
    assert errors["proc-boom"].message == "bad row 7"
    assert errors["proc-die"].type_name == "ChildProcessDied"


NOT_RETRIED = """
from kitium_queue import NonRetryableError

class CardDeclined(NonRetryableError):
    pass

def declined(job):
    raise CardDeclined("card declined")

def plain(job):
    raise NonRetryableError("bad input")
"""


async def test_a_non_retryable_error_reads_the_same_in_process_and_thread_mode(
    tmp_path: Path, redis_url: str, prefix: str
) -> None:
    # A subclass raised in a child read 'NonRetryableError: CardDeclined: card declined'
    # where thread mode records 'CardDeclined: card declined'; neither is retried.
    with app_module(tmp_path, NOT_RETRIED, "kq_not_retried") as module:
        mod = __import__(module)
        q = JobQueue("nr", redis=redis_url, prefix=prefix, worker={"concurrency": 2})
        for name in ("declined", "plain"):
            q.process(f"thread-{name}", getattr(mod, name))
            q.process(f"proc-{name}", getattr(mod, name), mode="process")
        try:
            ids = {
                f"{mode}-{name}": await q.add_job(f"{mode}-{name}", {}, attempts=3)
                for mode in ("thread", "proc")
                for name in ("declined", "plain")
            }
            await q.start()

            async def all_dead() -> bool:
                return (await q.get_stats()).dlq == 4

            await wait_until(all_dead, 60)
            infos = {k: await q.get_job_status(jid) for k, jid in ids.items()}
        finally:
            await q.close()
    reasons = {k: i.failed_reason for k, i in infos.items() if i is not None}
    assert reasons["thread-declined"] == reasons["proc-declined"] == "CardDeclined: card declined"
    assert reasons["thread-plain"] == reasons["proc-plain"] == "NonRetryableError: bad input"
    assert all(i is not None and i.attempts == 1 for i in infos.values()), infos
