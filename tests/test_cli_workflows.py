"""``kitium-queue workflows list|show|cancel APP``."""

from __future__ import annotations

import asyncio
import json

import pytest
from click.testing import CliRunner

from kitium_queue import JobChainManager, JobQueue, WorkflowStep
from kitium_queue.cli import main

pytestmark = [pytest.mark.redis_only]


def _fill(redis_url: str, prefix: str) -> None:
    async def go() -> None:
        q = JobQueue("cli", redis=redis_url, prefix=prefix)
        chains = JobChainManager(q)
        await chains.execute_workflow(
            "order-7",
            [
                WorkflowStep("validate", "validate"),
                WorkflowStep("charge", "charge", depends_on=["validate"]),
                WorkflowStep("evil\u202estep", "ship", depends_on=["charge"]),
            ],
        )
        # A step added later with add_job shows like the others.
        await q.add_job(
            "audit",
            {},
            job_id="audit-7",
            workflow_id="order-7",
            workflow_step="audit",
            depends_on=["order-7:charge"],
        )
        await q.close()

    asyncio.run(go())


def test_workflows_commands(cli_app: str, redis_url: str, prefix: str) -> None:
    app = cli_app  # a queue without a manager: the CLI enables workflows on it
    runner = CliRunner()
    _fill(redis_url, prefix)
    out = runner.invoke(main, ["workflows", "list", app])
    assert out.exit_code == 0, out.output
    lines = out.output.strip().splitlines()
    assert lines[0] == "workflow\tstate\tsteps\tunfinished\tcreated\tfinished"
    assert lines[1].startswith("order-7\trunning\t4\t4\t")

    out = runner.invoke(main, ["workflows", "show", app, "order-7"])
    assert out.exit_code == 0, out.output
    assert "state\trunning" in out.output
    assert "step\tstate\tattempts\tdepends on\tjob id\terror" in out.output
    assert "validate\twaiting\t0\t-\torder-7:validate\t-" in out.output
    assert "charge\tpending\t0\tvalidate\torder-7:charge\t-" in out.output
    assert "audit\tpending\t0\tcharge\taudit-7\t-" in out.output
    assert "\u202e" not in out.output and "evil" in out.output

    out = runner.invoke(main, ["workflows", "show", app, "order-7", "--json"])
    data = json.loads(out.output)
    assert data["state"] == "running" and data["steps"]["charge"]["depends_on"] == ["validate"]

    out = runner.invoke(main, ["workflows", "cancel", app, "order-7"])
    assert out.output == "cancelled\torder-7\t4 step(s) removed\n"
    out = runner.invoke(main, ["workflows", "list", app, "--json"])
    assert json.loads(out.output)[0]["state"] == "cancelled"

    out = runner.invoke(main, ["workflows", "show", app, "nope"])
    assert out.exit_code != 0 and "workflow 'nope' not found" in out.output
