"""``kitium-queue tenants list|show APP``."""

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
from kitium_queue.features.tenancy import TenantRegistry


@pytest.fixture
def app(tmp_path: Path, redis_url: str, prefix: str) -> Iterator[str]:
    source = (
        "from kitium_queue import JobQueue\n"
        "from kitium_queue.features.tenancy import TenantRegistry\n"
        f"queue = JobQueue('ct', redis={redis_url!r}, prefix={prefix!r})\n"
        "TenantRegistry.enable(queue)\n"
    )
    with app_module(tmp_path, source, "kq_cli_tenants") as module:
        yield f"{module}:queue"


def _fill(redis_url: str, prefix: str) -> None:
    async def go() -> None:
        q = JobQueue("ct", redis=redis_url, prefix=prefix)
        reg = TenantRegistry(q)
        await reg.create_tenant({"tenant_id": "acme", "name": "ACME \u202eCorp<b>",
                                 "weight": 2,
                                 "quota": {"max_queue_size": 10, "max_concurrency": 1,
                                           "rate_limit": {"max": 5, "duration": 1000}}})
        await reg.create_tenant({"tenant_id": "beta"})
        await q.add_jobs([("n", {}, {"tenant_id": "acme"}) for _ in range(3)])
        await q.close()

    asyncio.run(go())


def test_tenants_commands(app: str, redis_url: str, prefix: str) -> None:
    runner = CliRunner()
    _fill(redis_url, prefix)
    out = runner.invoke(main, ["tenants", "list", app])
    assert out.exit_code == 0, out.output
    lines = out.output.strip().splitlines()
    assert lines[0].startswith("tenant\tweight\tmax_queue_size\tmax_concurrency")
    assert lines[1].startswith("acme\t2\t10\t1\t5/1000ms\t3\t0\t2\t0\t0\t0\t")
    assert lines[2].startswith("beta\t1\t-\t-\t-\t0\t0\t0\t")
    # Text from Redis is escaped: no raw bidi override reaches the terminal.
    assert "\u202e" not in out.output and "ACME" in out.output

    shown = runner.invoke(main, ["tenants", "show", app, "acme", "--json"])
    assert shown.exit_code == 0, shown.output
    data = json.loads(shown.output)
    assert data["tenant"]["quota"]["max_concurrency"] == 1
    assert data["usage"]["queues"]["ct"]["queued"] == 3
    text = runner.invoke(main, ["tenants", "show", app, "acme"]).output
    assert "ct\t3\t0\t2\t0\t0\t0" in text and "total\t3\t0\t2\t0\t0\t0" in text

    missing = runner.invoke(main, ["tenants", "show", app, "nope"])
    assert missing.exit_code == 1 and "no tenant 'nope'" in missing.output
    bad = runner.invoke(main, ["tenants", "show", app, "a*b"])
    assert bad.exit_code == 2 and "tenant_id" in bad.output
