"""Every CLI command is exercised by a behaviour test (issue 16, item 4): this map names,
for each subcommand, the test module that runs it against a real queue (besides
``test_cli_errors.py``, which runs every one of them against dead servers). A new
command must be added here with its test, and the test must invoke it."""

from __future__ import annotations

import re
from pathlib import Path

from test_cli_errors import SUBCOMMANDS

TESTS = Path(__file__).resolve().parent

#: Subcommand -> the test module that invokes it.
EXERCISED_BY: dict[str, str] = {
    "worker": "test_cli_queue.py",
    "stats": "test_cli_queue.py",
    "health": "test_cli_queue.py",
    "pause": "test_cli_queue.py",
    "resume": "test_cli_queue.py",
    "events": "test_cli_queue.py",
    "metrics": "test_cli_queue.py",
    "job": "test_cli_encryption.py",
    "demo": "test_cli_schedules.py",
    "jobs list": "test_cli_jobs.py",
    "jobs show": "test_cli_jobs.py",
    "jobs why": "test_cli_jobs.py",
    "jobs retry": "test_cli_jobs.py",
    "jobs remove": "test_cli_jobs.py",
    "jobs promote": "test_cli_jobs.py",
    "jobs cancel": "test_cli_jobs.py",
    "dlq list": "test_cli_jobs.py",
    "dlq replay": "test_cli_jobs.py",
    "schedules list": "test_cli_schedules.py",
    "schedules pause": "test_cli_schedules.py",
    "schedules resume": "test_cli_schedules.py",
    "schedules remove": "test_cli_schedules.py",
    "breakers list": "test_breakers_cli.py",
    "breakers show": "test_breakers_cli.py",
    "breakers reset": "test_breakers_cli.py",
    "breakers open": "test_breakers_cli.py",
    "parked rebuild": "test_parking_repair.py",
    "jobs orphans": "test_orphans.py",
    "parked list": "test_cli_parked.py",
    "parked show": "test_cli_parked.py",
    "limits": "test_cli_parked.py",
    "workers": "test_cli_workers.py",
    "groups list": "test_cli_groups.py",
    "groups show": "test_cli_groups.py",
    "groups pause": "test_cli_groups.py",
    "groups resume": "test_cli_groups.py",
    "groups set": "test_cli_groups.py",
    "groups heal": "test_groups_heal.py",
    "workflows list": "test_cli_workflows.py",
    "workflows show": "test_cli_workflows.py",
    "workflows cancel": "test_cli_workflows.py",
    "workflows heal": "test_workflows_heal.py",
    "webhooks list": "test_cli_webhooks.py",
    "webhooks show": "test_cli_webhooks.py",
    "webhooks history": "test_cli_webhooks.py",
    "webhooks dlq": "test_cli_webhooks.py",
    "webhooks replay": "test_cli_webhooks.py",
    "webhooks deliver": "test_cli_webhooks.py",
    "encryption status": "test_cli_encryption.py",
    "encryption rotate": "test_cli_encryption.py",
    "result": "test_effectively_once.py",
    "replicas": "test_replicas.py",
    "access list": "test_cli_access.py",
    "access grant": "test_cli_access.py",
    "access revoke": "test_cli_access.py",
    "access check": "test_cli_access.py",
    "audit query": "test_cli_access.py",
    "audit verify": "test_cli_access.py",
    "audit trim": "test_cli_access.py",
    "acl redis-rules": "test_cli_access.py",
    "dashboard": "test_dashboard_cli.py",
    "config show": "test_advanced_config.py",
    "memory": "test_footprint.py",
    "alerts": "test_footprint.py",
    "compliance erase": "test_footprint.py",
    "compliance jobs": "test_footprint.py",
    "compliance retention": "test_footprint.py",
    "regions status": "test_cli_regions.py",
    "regions failover": "test_cli_regions.py",
    "regions stranded": "test_cli_regions.py",
    "regions resubmit": "test_cli_regions.py",
    "regions discard": "test_cli_regions.py",
    "tenants list": "test_cli_tenants.py",
    "tenants show": "test_cli_tenants.py",
    "tenants sync": "test_cli_tenants.py",
}


def test_every_subcommand_has_a_behaviour_test() -> None:
    assert sorted(EXERCISED_BY) == sorted(" ".join(p) for p in SUBCOMMANDS)


def test_each_named_test_invokes_its_command() -> None:
    for command, module in EXERCISED_BY.items():
        source = (TESTS / module).read_text()
        # The words as consecutive items of an argument list: ["jobs", "list", ...],
        # _ok("jobs", "list", ...) or [..., "kitium_queue.cli", "worker", ...].
        words = r",\s*".join(f'"{re.escape(w)}"' for w in command.split())
        assert re.search(rf"[\[(,]\s*{words}\s*[,\])]", source), f"{module} never runs {command}"
