"""What ``import kitium_queue`` and the command line load, and that what they leave out
loads, and works, when it is used.

Every worker subprocess, CLI call and test subprocess pays the package's import. It
loads the core only: the features (their names in ``kitium_queue`` and in each feature
package are imported on first use) and the optional packages some of them need
(croniter, httpx, Starlette and Jinja2, prometheus-client) are left out. A feature
registers nothing when imported (its manager's constructor installs its options, hooks
and Lua slots on a queue), so a feature first named after the queue was built works as
before. Each test runs in a fresh interpreter: what an import loads shows only there.
No test times anything; which modules are loaded is the measure.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

#: Packages the core never needs: each is loaded by the feature that uses it.
OPTIONAL = ("croniter", "httpx", "httpcore", "jinja2", "starlette", "prometheus_client", "uvicorn")


def _run(code: str) -> dict[str, object]:
    """Run ``code`` in a fresh interpreter; it ends by printing one JSON object."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def _modules(code: str) -> set[str]:
    listing = "\nimport json, sys\nprint(json.dumps({'m': sorted(sys.modules)}))"
    found = _run(textwrap.dedent(code) + listing)
    return set(found["m"])  # type: ignore[call-overload]


def test_import_loads_the_core_only() -> None:
    loaded = _modules("import kitium_queue")
    assert not loaded & set(OPTIONAL)
    assert not [m for m in loaded if m.startswith("kitium_queue.features.")]
    assert not loaded & {"kitium_queue.cli", "kitium_queue.dashboard", "kitium_queue.sync"}
    assert "kitium_queue.queue" in loaded  # JobQueue itself is there at once


def test_the_command_line_and_its_help_load_no_feature_nor_optional_package() -> None:
    loaded = _modules(
        """
        from kitium_queue.cli import main
        try:
            main(["--help"], prog_name="kitium-queue")
        except SystemExit as exc:
            assert exc.code == 0, exc.code
        """
    )
    assert not loaded & set(OPTIONAL)
    # Each feature's command is built from its cli.py; its manager loads when it runs.
    assert not [m for m in loaded if m.startswith("kitium_queue.features.") and "manager" in m]
    assert "kitium_queue.features.webhooks.cli" in loaded


def test_every_public_name_resolves_in_a_fresh_process() -> None:
    got = _run(
        """
        import importlib, json, pkgutil
        import kitium_queue
        from kitium_queue import *  # noqa: F403
        names = set(kitium_queue.__all__)
        missing = sorted(n for n in names if n not in globals())
        not_listed = sorted(names - set(dir(kitium_queue)))
        import kitium_queue.features as features
        unresolved = []
        found = pkgutil.iter_modules(features.__path__)
        packages = [f"{features.__name__}.{m.name}" for m in found]
        for name in [*packages, "kitium_queue.dashboard", "kitium_queue.features.webhooks.ssrf"]:
            module = importlib.import_module(name)
            listed = getattr(module, "__all__", ())
            unresolved += [f"{name}.{n}" for n in listed if not hasattr(module, n)]
        # Modules of the package are attributes as they were when the package imported them.
        groups = kitium_queue.features.groups
        modules = [kitium_queue.worker.Worker.__name__, groups.manager.__name__]
        print(json.dumps({"missing": missing, "not_listed": not_listed, "unresolved": unresolved,
                          "modules": modules, "count": len(names)}))
        """
    )
    assert got["missing"] == [] and got["not_listed"] == [] and got["unresolved"] == [], got
    assert got["modules"] == ["Worker", "kitium_queue.features.groups.manager"]
    assert got["count"] == 123


def test_a_feature_named_after_the_queue_was_built_registers_all_it_did(
    redis_url: str, prefix: str
) -> None:
    """Only ``kitium_queue`` imported: the queue knows the features' options by name, and
    a feature's manager made later installs them (options, Lua slots) as before; a cron
    schedule loads croniter then."""
    got = _run(
        f"""
        import asyncio, json, sys
        import kitium_queue
        from kitium_queue import ConfigurationError, JobQueue

        async def main():
            q = JobQueue("imp", redis={redis_url!r}, prefix={prefix!r})
            said = []
            for option in ("tenant_id", "message_group_id", "tenant_idd"):
                try:
                    await q.add_job("n", {{}}, **{{option: "a"}})
                except ConfigurationError as exc:
                    said.append(str(exc))
            before = sorted(m for m in sys.modules if m.startswith("kitium_queue.features."))
            registry = kitium_queue.TenantRegistry(q)
            await registry.create_tenant({{"tenant_id": "a"}})
            kitium_queue.FIFOQueueManager(q)
            tenant = await q.add_job("n", {{}}, tenant_id="a")
            grouped = await q.add_job("n", {{}}, message_group_id="g")
            cron = "croniter" in sys.modules
            schedule = await q.schedule_job("tick", {{}}, "*/5 * * * *")
            info = await q.get_job_status(tenant)
            await q.close()
            print(json.dumps({{
                "said": said, "before": before, "tenant": info.options.get("tenant_id"),
                "grouped": bool(grouped), "cron_before": cron,
                "cron_after": "croniter" in sys.modules, "next": schedule.next_run_at,
            }}))

        asyncio.run(main())
        """
    )
    said = got["said"]
    assert isinstance(said, list) and len(said) == 3
    assert "'tenant_id' needs multi-tenancy" in said[0]
    assert "'message_group_id' needs FIFO groups" in said[1]
    assert "unknown job option: 'tenant_idd' (did you mean 'tenant_id'?)" in said[2]
    assert got["before"] == []
    assert got["tenant"] == "a" and got["grouped"] is True
    assert got["cron_before"] is False and got["cron_after"] is True
    assert isinstance(got["next"], int) and got["next"] > 0


def test_optional_packages_load_when_their_feature_is_used(redis_url: str, prefix: str) -> None:
    for package in ("httpx", "starlette", "jinja2", "prometheus_client"):
        pytest.importorskip(package)
    got = _run(
        f"""
        import asyncio, json, sys
        from kitium_queue import JobQueue

        def has(*names):
            return all(n in sys.modules for n in names)

        async def main():
            q = JobQueue("imp2", redis={redis_url!r}, prefix={prefix!r})
            seen = {{"at_start": has("httpx") or has("starlette") or has("prometheus_client")}}
            from kitium_queue import WebhookManager
            from kitium_queue.features.webhooks import AddressPolicy
            seen["webhooks_imported"] = has("httpx")
            WebhookManager(q, run_service=False)
            from kitium_queue.features.webhooks import GuardedTransport
            transport = GuardedTransport(AddressPolicy())
            await transport.aclose()
            seen["webhooks_used"] = has("httpx", "httpcore")
            from kitium_queue.dashboard import DashboardToken
            seen["dashboard_imported"] = has("starlette.applications")
            from kitium_queue.dashboard import create_dashboard
            create_dashboard(queues=[q], tokens=[DashboardToken("t" * 32, "ada", "admin")])
            seen["dashboard_used"] = has("starlette.applications", "jinja2")
            from kitium_queue.features.prometheus import PrometheusExporter
            text = (await PrometheusExporter([q], subscribe=False).render()).decode()
            seen["metrics"] = has("prometheus_client") and "imp2" in text
            await q.close()
            print(json.dumps(seen))

        asyncio.run(main())
        """
    )
    assert got == {
        "at_start": False,
        "webhooks_imported": False,
        "webhooks_used": True,
        "dashboard_imported": False,
        "dashboard_used": True,
        "metrics": True,
    }, got


def test_a_type_checker_still_sees_every_lazy_name_and_flags_a_misspelled_one(
    tmp_path: Path, mypy_cache: Path
) -> None:
    """The packages load their names on first use (a module ``__getattr__``), hidden from
    type checkers: a misspelled import is an error, a real one keeps its type."""
    from test_typing import _mypy

    snippet = tmp_path / "lazy_names.py"
    snippet.write_text(
        "from kitium_queue import JobQueu\n"
        "from kitium_queue.features.regions import GlobalQueueManagr\n"
        "from kitium_queue import WebhookManager\n"
        "from kitium_queue.features.regions import GlobalQueueManager\n"
        "reveal_type(WebhookManager)\n"
        "reveal_type(GlobalQueueManager)\n"
    )
    code, out = _mypy(snippet, mypy_cache)
    assert code == 1, out
    assert 'Module "kitium_queue" has no attribute "JobQueu"' in out
    assert 'Module "kitium_queue.features.regions" has no attribute "GlobalQueueManagr"' in out
    assert "-> kitium_queue.features.webhooks.manager.WebhookManager" in out
    assert "-> kitium_queue.features.regions.manager.GlobalQueueManager" in out
