"""An optional extra that is not installed is named, with how to install it (from the
package index, or ``pip install -e ".[extra]"`` in a clone, which works before the
package is published).

Before: without httpx a ``WebhookManager`` was built and every delivery failed later in
a log line (the README example hung); without prometheus-client or opentelemetry-api
their imports failed with a bare ``ModuleNotFoundError``; without them the CLI said
"No such command" for ``metrics`` and ``dashboard``, which the README documents. Each
case runs in a fresh interpreter where the extra's package cannot be imported.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

_BLOCK = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, _Block())
"""


def _run(blocked: set[str], body: str) -> subprocess.CompletedProcess[str]:
    code = _BLOCK.format(blocked=blocked) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("command", "blocked", "extra"),
    [("metrics", {"prometheus_client"}, "prometheus"), ("dashboard", {"starlette"}, "dashboard")],
)
def test_a_command_of_a_missing_extra_says_which_to_install(
    command: str, blocked: set[str], extra: str
) -> None:
    done = _run(
        blocked,
        f"""
        from kitium_queue.cli import main
        main([{command!r}, "app:queue", "--port", "9"], prog_name="kitium-queue")
        """,
    )
    assert done.returncode == 2, done.stderr
    assert f'pip install "kitium-job-queue[{extra}]"' in done.stderr, done.stderr
    assert f'pip install -e ".[{extra}]" in a clone' in done.stderr, done.stderr
    assert "No such command" not in done.stderr


def test_webhooks_without_httpx_refuse_the_manager() -> None:
    done = _run(
        {"httpx"},
        """
        from kitium_queue import ConfigurationError, JobQueue
        from kitium_queue.features.webhooks import WebhookManager
        try:
            WebhookManager(JobQueue("x", redis="memory://extras"))
        except ConfigurationError as exc:
            print("refused:", exc)
        """,
    )
    assert "refused:" in done.stdout and "kitium-job-queue[webhooks]" in done.stdout, (
        done.stdout + done.stderr
    )
    assert 'pip install -e ".[webhooks]"' in done.stdout, done.stdout


@pytest.mark.parametrize(
    ("module", "blocked", "extra"),
    [
        ("kitium_queue.features.prometheus", {"prometheus_client"}, "prometheus"),
        ("kitium_queue.features.tracing", {"opentelemetry"}, "otel"),
    ],
)
def test_a_feature_of_a_missing_extra_names_it_on_import(
    module: str, blocked: set[str], extra: str
) -> None:
    done = _run(blocked, f"import {module}")
    assert done.returncode == 1
    assert f'pip install "kitium-job-queue[{extra}]"' in done.stderr, done.stderr
    assert f'pip install -e ".[{extra}]" in a clone' in done.stderr, done.stderr


def test_python_dash_m_runs_the_command_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "kitium_queue", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and "kitium-queue" in done.stdout, done.stderr
