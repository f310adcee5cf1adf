"""Optional extras at their edges, and the examples' ``KQ_REDIS_URL``.

* ``kitium-queue webhooks list|show|history|dlq`` read registrations and deliveries from
  Redis: they need no HTTP client, so they work without httpx (the ``webhooks`` extra).
  They used to build a full ``WebhookManager``, which refuses to exist without httpx,
  and exited 2 ("webhook delivery needs httpx"). ``replay`` (it schedules deliveries)
  still needs the extra, and names it.
* ``advanced.monitoring.tracing`` was checked with ``find_spec("opentelemetry")``: any
  distribution of the ``opentelemetry`` namespace passed it, and a partial install
  (no API, no ``trace``) failed later with an ``ImportError``, after the sections before
  ``monitoring`` were installed. The check imports what tracing uses now, and refuses
  such an install with the ``ConfigurationError`` naming the ``otel`` extra.
* The examples took ``KQ_REDIS_URL=`` (empty) as a URL and failed; empty or blank is
  unset now (``memory://``).

The extras' cases run in a fresh interpreter where the package cannot be imported (a
meta-path finder refusing it) or is replaced by a partial one put first on ``sys.path``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path

import pytest

from helpers import app_module
from kitium_queue import JobQueue
from kitium_queue.features.webhooks import WebhookConfig, WebhookManager
from test_examples import check_output, run_example
from test_missing_extras import _BLOCK


def _python(
    code: str, path: Sequence[str] = (), blocked: Collection[str] = ()
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter with ``path`` first on ``sys.path`` and the
    ``blocked`` packages not importable."""
    prelude = _BLOCK.format(blocked=set(blocked)) + f"sys.path[:0] = {list(path)!r}\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
    )


# ------------------------------------------------------------------ webhooks without httpx
@pytest.fixture
def hooked_app(tmp_path: Path, redis_url: str, prefix: str) -> Iterator[tuple[str, str]]:
    """An APP module whose queue constructs no manager, on a queue with one endpoint
    registered (by a process with httpx): ``(folder, "module:queue")``."""

    async def register() -> None:
        q = JobQueue("edges", redis=redis_url, prefix=prefix)
        m = WebhookManager(q, run_service=False)
        await m.register_webhook(
            WebhookConfig(
                url="https://hooks.example.com/orders",
                id="billing",
                events=["invoice-paid"],
                description="billing service",
            )
        )
        await q.close()

    asyncio.run(register())
    source = (
        "from kitium_queue import JobQueue\n"
        f"queue = JobQueue('edges', redis={redis_url!r}, prefix={prefix!r})\n"
    )
    with app_module(tmp_path, source, "kq_edges") as module:
        yield str(tmp_path), f"{module}:queue"


def _cli_without_httpx(folder: str, *args: str) -> subprocess.CompletedProcess[str]:
    return _python(
        f"""
        try:
            import httpx
        except ImportError:
            pass
        else:
            raise SystemExit("httpx is importable: the test proves nothing")
        from kitium_queue.cli import main
        main({list(args)!r}, prog_name="kitium-queue")
        """,
        path=[folder],
        blocked={"httpx", "httpcore"},
    )


@pytest.mark.redis_only
def test_webhooks_list_and_show_read_registrations_without_httpx(
    hooked_app: tuple[str, str],
) -> None:
    folder, app = hooked_app
    done = _cli_without_httpx(folder, "webhooks", "list", app, "--json")
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)
    assert [(h["id"], h["url"], h["events"]) for h in listed] == [
        ("billing", "https://hooks.example.com/orders", ["invoice-paid"])
    ]

    done = _cli_without_httpx(folder, "webhooks", "list", app)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("billing\tguaranteed\tactive\tinvoice-paid\t"), done.stdout

    done = _cli_without_httpx(folder, "webhooks", "show", app, "billing", "--json")
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["id"] == "billing" and shown["description"] == "billing service"
    assert shown["stats"]["webhooks"] == 1

    # The other commands that only read Redis.
    done = _cli_without_httpx(folder, "webhooks", "history", app, "billing")
    assert done.returncode == 0 and "no deliveries recorded" in done.stdout, done.stderr
    done = _cli_without_httpx(folder, "webhooks", "dlq", app)
    assert done.returncode == 0 and "the webhook DLQ is empty" in done.stdout, done.stderr


@pytest.mark.redis_only
def test_webhooks_replay_without_httpx_names_the_extra(hooked_app: tuple[str, str]) -> None:
    folder, app = hooked_app
    done = _cli_without_httpx(folder, "webhooks", "replay", app)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "kitium-job-queue[webhooks]" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr


# ------------------------------------------------------------------ a partial OpenTelemetry
#: Partial installs of ``opentelemetry``, each put first on ``sys.path`` (a regular
#: package there hides the installed namespace): files relative to the folder.
PARTIAL_OTEL = {
    # Another distribution's package only: no API (no context, no trace).
    "no-api": {"opentelemetry/__init__.py": "", "opentelemetry/semconv/__init__.py": ""},
    # The API's modules there, ``trace`` broken (a dependency it imports is missing).
    "broken-trace": {
        "opentelemetry/__init__.py": "",
        "opentelemetry/context/__init__.py": "",
        "opentelemetry/trace/__init__.py": "import kq_missing_dependency_of_otel_trace\n",
    },
}


def _write(folder: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)


_CONFIGURE = """
import sys
from kitium_queue import ConfigurationError, JobQueue
try:
    JobQueue(
        "traced",
        redis="memory://edges-otel",
        advanced={
            "exactly_once": {"enabled": True},
            "monitoring": {"enabled": True, "tracing": True},
        },
    )
except ConfigurationError as exc:
    print("refused:", exc)
    # Refused before any section was installed (exactly_once comes first).
    print("idempotency loaded:", "kitium_queue.features.idempotency.manager" in sys.modules)
"""


@pytest.mark.parametrize("variant", sorted(PARTIAL_OTEL))
def test_a_partial_opentelemetry_is_refused_naming_the_extra(tmp_path: Path, variant: str) -> None:
    _write(tmp_path, PARTIAL_OTEL[variant])
    # The check the switchboard used to make passes for it:
    found = _python(
        "import importlib.util; print(importlib.util.find_spec('opentelemetry'))", [str(tmp_path)]
    )
    assert str(tmp_path) in found.stdout, found.stdout + found.stderr

    done = _python(_CONFIGURE, [str(tmp_path)])
    assert "refused: advanced.monitoring.tracing:" in done.stdout, done.stdout + done.stderr
    assert "kitium-job-queue[otel]" in done.stdout, done.stdout
    assert "idempotency loaded: False" in done.stdout, done.stdout
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr


def test_opentelemetry_missing_entirely_gets_the_same_error() -> None:
    done = _python(_CONFIGURE, blocked={"opentelemetry"})
    assert "refused: advanced.monitoring.tracing:" in done.stdout, done.stdout + done.stderr
    assert "kitium-job-queue[otel]" in done.stdout, done.stdout
    assert "idempotency loaded: False" in done.stdout, done.stdout


def test_tracing_imported_directly_from_a_partial_install_names_what_is_missing(
    tmp_path: Path,
) -> None:
    _write(tmp_path, PARTIAL_OTEL["broken-trace"])
    done = _python("import kitium_queue.features.tracing", [str(tmp_path)])
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError:") and "kitium-job-queue[otel]" in last, done.stderr
    assert "kq_missing_dependency_of_otel_trace" in last, last


# ------------------------------------------------------------------ examples, KQ_REDIS_URL=''
@pytest.mark.parametrize(
    ("name", "value"),
    [("basic_usage.py", ""), ("regions.py", "  "), ("enterprise_setup.py", "")],
)
def test_an_empty_kq_redis_url_runs_the_example_on_memory(name: str, value: str) -> None:
    code, out, err, _ = run_example(name, value)
    check_output(name, code, out, err)
