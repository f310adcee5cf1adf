"""``kitium-queue memory`` / ``measure_footprint`` (issue 22, cost optimization): Redis
memory by state from ``MEMORY USAGE`` samples, bounded; the CLI views of compliance and
alerts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from helpers import app_module
from kitium_queue import ConfigurationError, JobQueue
from kitium_queue.cli import main
from kitium_queue.features.footprint import measure_footprint

pytestmark = pytest.mark.redis_only


async def test_memory_by_state(redis_url: str, prefix: str) -> None:
    q = JobQueue("mem", redis=redis_url, prefix=prefix)
    try:
        await q.add_jobs([("n", {"pad": "x" * 2000}, {}) for _ in range(300)])
        await q.add_jobs([("n", {"pad": "y" * 100}, {"delay": 60_000}) for _ in range(50)])
        fp = await measure_footprint(q, samples=20)
        by = {s.state: s for s in fp.states}
        assert by["waiting"].jobs == 300 and by["waiting"].sampled == 20
        assert by["delayed"].jobs == 50 and by["delayed"].sampled == 20
        assert by["completed"].jobs == 0 and by["completed"].estimated_bytes == 0
        # The estimate is the sampled average times the count: a 2 KB payload per job.
        assert 2000 < by["waiting"].bytes_per_job < 6000
        assert by["waiting"].estimated_bytes > 300 * 2000
        assert by["delayed"].bytes_per_job < by["waiting"].bytes_per_job
        assert fp.structures["wait"] > 0 and fp.structures["events"] > 0
        assert fp.total_bytes > fp.jobs_bytes
        for bad in (0, 1001, True):
            with pytest.raises(ConfigurationError):
                await measure_footprint(q, samples=bad)
    finally:
        await q.clear(force=True)
        await q.close()


async def test_memory_needs_a_server() -> None:
    q = JobQueue("mem")
    with pytest.raises(ConfigurationError, match="needs a Redis server"):
        await measure_footprint(q)


@pytest.fixture
def app(tmp_path: Path, redis_url: str, prefix: str) -> Iterator[str]:
    source = (
        "from kitium_queue import JobQueue\n"
        f"queue = JobQueue('views', redis={redis_url!r}, prefix={prefix!r}, advanced={{\n"
        "    'compliance': {'enabled': True},\n"
        "    'monitoring': {'enabled': True, 'alerts': [\n"
        "        {'name': 'backlog', 'metric': 'queue_depth', 'threshold': 2}]}})\n"
    )
    with app_module(tmp_path, source, "kq_cli_views") as module:
        yield f"{module}:queue"


def test_cli_memory_compliance_and_alerts(app: str, redis_url: str, prefix: str) -> None:
    import asyncio

    async def fill() -> list[str]:
        q = JobQueue(
            "views",
            redis=redis_url,
            prefix=prefix,
            advanced={"compliance": {"enabled": True}},
        )
        ids = [await q.add_job("n", {"v": i}, subject_id="u-1") for i in range(3)]
        await q.add_job("n", {"v": 9}, subject_id="u-2")
        await q.close()
        return ids

    ids = asyncio.run(fill())
    runner = CliRunner()
    out = runner.invoke(main, ["memory", app, "--samples", "5"])
    assert out.exit_code == 0, out.output
    assert out.stdout.splitlines()[0].startswith("waiting\tjobs=4\tsampled=4")
    as_json = json.loads(runner.invoke(main, ["memory", app, "--json"]).stdout)
    assert as_json["queue"] == "views" and as_json["states"][0]["jobs"] == 4

    alerts = runner.invoke(main, ["alerts", app, "--values"])
    assert alerts.exit_code == 0, alerts.output
    assert alerts.stdout.startswith("backlog\tok\tqueue_depth >= 2\tsince=-\tvalue=4.0")

    listed = runner.invoke(main, ["compliance", "jobs", app, "u-1"])
    assert sorted(listed.stdout.split()) == sorted(ids)
    refused = runner.invoke(main, ["compliance", "erase", app, "u-1"], input="n\n")
    assert refused.exit_code == 1 and "Aborted" in refused.output
    done = runner.invoke(
        main, ["compliance", "erase", app, "u-1", "--yes", "--principal", "dpo", "--json"]
    )
    assert done.exit_code == 0, done.output
    report: dict[str, Any] = json.loads(done.stdout)
    assert report["jobs"] == 3 and "u-1" not in done.output
    assert runner.invoke(main, ["compliance", "jobs", app, "u-1"]).stdout == ""
    ret = runner.invoke(main, ["compliance", "retention", app, "--json"])
    assert ret.exit_code == 0 and json.loads(ret.stdout)["erased"] == {}
    bad = runner.invoke(main, ["compliance", "erase", app, "bad\x00id", "--yes"])
    assert bad.exit_code == 2 and "subject_id" in bad.output
