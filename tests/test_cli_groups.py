"""``kitium-queue groups list|show|pause|resume|set APP``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from helpers import app_module
from kitium_queue import JobQueue
from kitium_queue.cli import main
from kitium_queue.features.groups import FIFOQueueManager


@pytest.fixture
def app(tmp_path: Path, redis_url: str, prefix: str) -> Iterator[str]:
    source = (
        "from kitium_queue import JobQueue\n"
        "from kitium_queue.features.groups import FIFOQueueManager\n"
        f"queue = JobQueue('cg', redis={redis_url!r}, prefix={prefix!r})\n"
        "fifo = FIFOQueueManager(queue, group_concurrency=1)\n"
    )
    with app_module(tmp_path, source, "kq_cli_groups") as module:
        yield f"{module}:queue"


def _fill(redis_url: str, prefix: str) -> None:
    async def go() -> None:
        q = JobQueue("cg", redis=redis_url, prefix=prefix)
        FIFOQueueManager(q)
        for i in range(3):
            await q.add_job("n", {"i": i}, message_group_id="cust-1")
        await q.add_job("n", {}, message_group_id="evil\u202egroup<b>")
        await q.close()

    asyncio.run(go())


def test_groups_commands(app: str, redis_url: str, prefix: str) -> None:
    runner = CliRunner()
    _fill(redis_url, prefix)
    out = runner.invoke(main, ["groups", "list", app])
    assert out.exit_code == 0, out.output
    lines = out.output.strip().splitlines()
    assert lines[0].startswith("group\tstate\tsize\twaiting")
    assert lines[1].startswith("cust-1\trunning\t3\t2\t0\t0\t0\t0\t")
    # Text from Redis is escaped: no raw bidi override reaches the terminal.
    assert "\u202e" not in out.output and "evil" in out.output

    assert runner.invoke(main, ["groups", "pause", app, "cust-1"]).output == "paused\tcust-1\n"
    shown = json.loads(runner.invoke(main, ["groups", "show", app, "cust-1", "--json"]).output)
    assert shown["paused"] is True and shown["size"] == 3 and shown["waiting"] == 2
    assert [t["status"] for t in shown["turns"]] == ["waiting"]
    assert runner.invoke(main, ["groups", "resume", app, "cust-1"]).exit_code == 0
    done = runner.invoke(main, ["groups", "set", app, "cust-1", "--concurrency", "3"])
    assert done.exit_code == 0, done.output
    shown = json.loads(runner.invoke(main, ["groups", "show", app, "cust-1", "--json"]).output)
    assert shown["group_concurrency"] == 3 and shown["waiting"] == 0 and not shown["paused"]
    page = json.loads(runner.invoke(main, ["groups", "list", app, "-n", "1", "--json"]).output)
    assert [g["group_id"] for g in page["groups"]] == ["cust-1"] and page["cursor"]
    bad = runner.invoke(main, ["groups", "set", app, "cust-1", "--concurrency", "0"])
    assert bad.exit_code != 0 and "group_concurrency" in bad.output
    assert "Traceback" not in bad.output
