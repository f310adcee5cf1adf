"""``kitium-queue schedules list|pause|resume|remove APP`` and the demo's schedule."""

from __future__ import annotations

import asyncio
import json
import uuid

from click.testing import CliRunner

from kitium_queue import JobQueue
from kitium_queue.cli import main


def _declare(redis_url: str, prefix: str) -> None:
    async def go() -> None:
        q = JobQueue("cli", redis=redis_url, prefix=prefix)
        await q.schedule_job("report", {}, "0 2 * * *", tz="Europe/Berlin", schedule_id="nightly")
        await q.schedule_every("beat", {}, 30_000)
        await q.close()

    asyncio.run(go())


def test_schedules_commands(cli_app: str, redis_url: str, prefix: str) -> None:
    app = cli_app
    runner = CliRunner()
    empty = runner.invoke(main, ["schedules", "list", app])
    assert empty.exit_code == 0 and "no schedules in queue 'cli'" in empty.output
    _declare(redis_url, prefix)

    out = runner.invoke(main, ["schedules", "list", app])
    assert out.exit_code == 0, out.output
    lines = sorted(out.output.strip().splitlines())  # creation order; same-ms ties by id
    assert lines[0].startswith("beat@every 30000ms\tbeat\tevery 30000 ms\tactive\tnext=")
    assert lines[1].startswith("nightly\treport\tcron 0 2 * * * (Europe/Berlin)\tactive")

    assert runner.invoke(main, ["schedules", "pause", app, "nightly"]).output == "paused nightly\n"
    data = json.loads(runner.invoke(main, ["schedules", "list", app, "--json"]).output)
    assert sorted((s["id"], s["paused"]) for s in data) == [
        ("beat@every 30000ms", False),
        ("nightly", True),
    ]
    assert "resumed nightly" in runner.invoke(main, ["schedules", "resume", app, "nightly"]).output
    assert "removed nightly" in runner.invoke(main, ["schedules", "remove", app, "nightly"]).output
    missing = runner.invoke(main, ["schedules", "remove", app, "nightly"])
    assert missing.exit_code == 1 and "schedule 'nightly' not found" in missing.output
    left = runner.invoke(main, ["schedules", "list", app]).output.strip().splitlines()
    assert len(left) == 1 and left[0].startswith("beat@every")


def test_demo_shows_a_schedule_firing() -> None:
    out = CliRunner().invoke(main, ["demo", "--redis", f"memory://{uuid.uuid4().hex}"])
    assert out.exit_code == 0, out.output
    assert "scheduled 'heartbeat@every 250ms'" in out.output
    assert out.output.count("schedule-fired heartbeat@every 250ms") == 3
