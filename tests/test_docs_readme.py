"""Every Python snippet of README.md runs as pasted (issue 11, item 8).

As the README says after its quick start: a snippet with ``asyncio.run(...)`` is a whole
script; any other continues the quick start in ``python -m asyncio`` after ``PRELUDE``.
The few that need more are run here with that context made visible (``SPECIAL``); a
snippet can only be left out through ``EXCLUDED``, with its reason, and none is.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _docs import ROOT, python_blocks, run_snippet
from _redis import RedisServer

README = ROOT / "README.md"
BLOCKS = python_blocks(README)
PRELUDE = 'from kitium_queue import JobQueue\nqueue = JobQueue("emails")\n'
#: The URL the README's real-server snippets name; replaced by a private redis-server's.
README_URL = "redis://localhost:6379/0"

#: Snippet (a line it contains) -> why it is not run. Empty: every snippet runs.
EXCLUDED: dict[str, str] = {}

#: Snippets that make jobs fail on purpose (a line they contain) -> the only stderr
#: lines they may print: the library's warning for each job that failed for good.
FAILING_ON_PURPOSE: dict[str, str] = {
    "breakers = CircuitBreakerManager(queue)": r"queue \S+: job \S+ failed for good after .*",
}


def _block(marker: str) -> str:
    (block,) = [b for b in BLOCKS if marker in b]
    return block


QUICK_START = "await queue.run_worker()"
PROCESS_MODE = "# myapp/tasks.py"
SYNC_CLIENT = "SyncJobQueue("
SPECIAL = (QUICK_START, PROCESS_MODE, SYNC_CLIENT)


@pytest.fixture(scope="module")
def server() -> object:
    with RedisServer() as srv:
        yield srv


def _plain_blocks() -> list[object]:
    return [
        pytest.param(i, id=f"block{i}-{b.strip().splitlines()[0][:40]}")
        for i, b in enumerate(BLOCKS)
        if not any(m in b for m in (*SPECIAL, *EXCLUDED))
    ]


def test_every_snippet_is_run_or_excluded_with_a_reason() -> None:
    assert len(BLOCKS) >= 14
    for marker in (*SPECIAL, *EXCLUDED):
        assert sum(marker in b for b in BLOCKS) == 1, marker
    for marker, reason in EXCLUDED.items():
        assert reason.strip(), marker


@pytest.mark.parametrize("index", _plain_blocks())
def test_snippet_runs_as_pasted(index: int, tmp_path: Path) -> None:
    proc = run_snippet(BLOCKS[index], tmp_path, prelude=PRELUDE)
    assert proc.returncode == 0, f"README snippet {index} failed:\n{BLOCKS[index]}\n{proc.stderr}"
    # Nothing on stderr: no traceback, and no warning (the batch example's size fits
    # the default concurrency) -- but the failure warnings a snippet causes on purpose.
    allowed = [p for m, p in FAILING_ON_PURPOSE.items() if m in BLOCKS[index]]
    lines = proc.stderr.splitlines()
    if allowed:
        assert lines, "the snippet was expected to fail jobs on purpose"
        lines = [ln for ln in lines if not re.fullmatch(allowed[0], ln)]
    assert lines == [], proc.stderr


def test_quick_start_against_a_real_server(server: RedisServer, tmp_path: Path) -> None:
    """The quick start as a script, on a private redis-server (its URL replacing
    README_URL); the worker runs the delayed job, then SIGTERM stops it gracefully."""
    code = _block(QUICK_START)
    assert README_URL in code
    script = tmp_path / "quick_start.py"
    script.write_text(code.replace(README_URL, server.url))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    import redis

    client = redis.Redis.from_url(server.url)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until the job (delay=1000) completed
            if client.zcard("kq:{emails}:completed"):
                break
            time.sleep(0.05)
        else:
            pytest.fail("the quick start's job never completed")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        client.close()
    assert proc.returncode == 0, err
    assert "status=<JobStatus.DELAYED" in out or "delayed" in out, out


def test_process_mode_module(tmp_path: Path) -> None:
    """The process-mode snippet is the module it says it is: myapp/tasks.py, imported
    by a worker whose child processes import it again."""
    (tmp_path / "myapp").mkdir()
    (tmp_path / "myapp" / "__init__.py").write_text("")
    (tmp_path / "myapp" / "tasks.py").write_text(_block(PROCESS_MODE))
    driver = (
        "import asyncio\n"
        "from myapp.tasks import queue\n"
        "async def main():\n"
        "    jid = await queue.add_job('render-pdf', {'doc': 'ab\\ncde'})\n"
        "    await queue.start()\n"
        "    for _ in range(600):\n"
        "        info = await queue.get_job_status(jid)\n"
        "        if info.status.value in ('completed', 'dlq', 'failed'):\n"
        "            break\n"
        "        await asyncio.sleep(0.05)\n"
        "    print(info.status.value, info.result)\n"
        "    await queue.close()\n"
        "asyncio.run(main())\n"
    )
    proc = run_snippet(driver, tmp_path, name="driver")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "completed {'pages': 5}", proc.stdout


def test_sync_client_against_a_real_server(server: RedisServer, tmp_path: Path) -> None:
    code = _block(SYNC_CLIENT)
    assert README_URL in code
    proc = run_snippet(code.replace(README_URL, server.url), tmp_path, name="sync")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "waiting", proc.stdout


async def test_events_say_they_follow_forever_and_follow_false_ends() -> None:
    """Item 7: ``events(last_id="0")`` follows the stream like ``tail -f``; the README's
    Events section and the docstring say so, and ``follow=False`` ends."""
    from kitium_queue import JobQueue

    text = README.read_text()
    events = text[text.index("## Events") :]
    events = events[: events.index("\n## ", 5)]
    assert "never ends" in events and "follow=False" in events
    assert "never ends" in (JobQueue.events.__doc__ or "")
    q = JobQueue("ev-doc")
    try:
        await q.add_job("n", {})
        seen = [ev.event async for ev in q.events(last_id="0", follow=False, block_ms=50)]
        assert seen == ["job-added"]
    finally:
        await q.close()
