"""``kitium-queue regions status|failover|stranded|resubmit|discard APP`` (issue 21), with
three databases of the test Redis standing for three regions."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from helpers import app_module
from kitium_queue.cli import main
from kitium_queue.features.regions import GlobalQueueManager

NAMES = ("us-east-1", "eu-west-1", "ap-southeast-1")


def _config(redis_url: str, prefix: str) -> dict[str, Any]:
    base = redis_url.rsplit("/", 1)[0]
    return {
        "name": "cr",
        "regions": [
            {"region": n, "redis": f"{base}/{i + 4}", "is_primary": i == 0, "priority": i or 9}
            for i, n in enumerate(NAMES)
        ],
        "queue_options": {"prefix": prefix},
    }


@pytest.fixture
def apps(tmp_path: Path, redis_url: str, prefix: str) -> Iterator[tuple[str, str]]:
    cfg = _config(redis_url, prefix)
    base = redis_url.rsplit("/", 1)[0]
    source = (
        "from kitium_queue import JobQueue\n"
        "from kitium_queue.features.regions import GlobalQueueManager\n"
        f"regions = GlobalQueueManager({cfg!r})\n"
        f"copy = JobQueue('cr', redis={base + '/5'!r}, prefix={prefix!r})\n"
    )
    with app_module(tmp_path, source, "kq_cli_regions") as module:
        yield f"{module}:regions", f"{module}:copy"


def _setup(redis_url: str, prefix: str) -> str:
    async def go() -> str:
        m = GlobalQueueManager()
        await m.initialize({**_config(redis_url, prefix), "background": False})
        jid = await m.add_job("n", {"secret": "not shown"})
        await m.replicate_job(jid, [NAMES[1], NAMES[2]])
        await m.close()
        return jid

    return asyncio.run(go())


@pytest.mark.redis_only
def test_regions_commands(apps: tuple[str, str], redis_url: str, prefix: str) -> None:
    app, copy = apps
    jid = _setup(redis_url, prefix)
    runner = CliRunner()
    out = runner.invoke(main, ["regions", "status", app])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0] == "queue\tcr\tprimary\tus-east-1\tepoch\t1"
    rows = {line.split("\t")[0]: line.split("\t") for line in lines[3:]}
    assert rows["us-east-1"][1:4] == ["primary", "True", "1"]
    assert rows["eu-west-1"][1] == "secondary" and rows["eu-west-1"][7] == "1"
    shown = json.loads(runner.invoke(main, ["regions", "status", app, "--json"]).output)
    assert shown["primary"] == "us-east-1" and len(shown["regions"]) == 3
    assert "not shown" not in out.output

    # A JobQueue APP: the record of that one copy.
    one = json.loads(runner.invoke(main, ["regions", "status", copy, "--json"]).output)
    assert (one["region"], one["primary"], one["epoch"]) == ("eu-west-1", "us-east-1", "1")

    moved = runner.invoke(main, ["regions", "failover", app, "eu-west-1"])
    assert moved.exit_code == 0, moved.output
    assert moved.output.startswith("primary\teu-west-1\tepoch\t2\twas\tus-east-1\t")
    after = json.loads(runner.invoke(main, ["regions", "status", app, "--json"]).output)
    assert after["primary"] == "eu-west-1" and after["epoch"] == 2

    assert json.loads(runner.invoke(main, ["regions", "stranded", app, "--json"]).output) == []
    none = runner.invoke(main, ["regions", "resubmit", app, "--all"])
    assert none.exit_code == 0 and none.output == ""
    not_stranded = runner.invoke(main, ["regions", "discard", app, jid])
    assert not_stranded.exit_code == 1 and "is not a stranded job" in not_stranded.output
    bad = runner.invoke(main, ["regions", "failover", app, "mars-1"])
    assert bad.exit_code == 2 and "unknown region 'mars-1'" in bad.output
    wrong = runner.invoke(main, ["regions", "status", app, "--redis", redis_url])
    assert wrong.exit_code == 2 and "--redis applies to a JobQueue APP" in wrong.output
