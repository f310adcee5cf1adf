"""The package as a user installs it, with some of an optional extra's packages missing.

``kitium-queue dashboard`` serves with uvicorn, one of the ``dashboard`` extra's three
packages. With Starlette and Jinja2 installed (a FastAPI application's environment) and
uvicorn not, the command used to fail after connecting to Redis with "unexpected error:
ModuleNotFoundError" (exit 1), naming neither uvicorn's extra nor how to install it.
Each case runs in a fresh interpreter where the package cannot be imported
(``sys.modules[name] = None``).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


def _cli(tmp_path: Path, hidden: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "h5app.py").write_text(
        'from kitium_queue import JobQueue\nqueue = JobQueue("shop", redis="memory://extras")\n'
    )
    code = textwrap.dedent(
        f"""
        import sys
        for name in {hidden!r}:
            sys.modules[name] = None
        sys.path.insert(0, {str(tmp_path)!r})
        from kitium_queue.cli import main
        main({list(args)!r}, prog_name="kitium-queue")
        """
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_dashboard_without_uvicorn_names_the_extra(tmp_path: Path) -> None:
    done = _cli(
        tmp_path, ["uvicorn"], "dashboard", "h5app:queue", "--insecure-local", "--port", "0"
    )
    assert done.returncode == 2, done.stderr
    assert "uvicorn" in done.stderr and "kitium-job-queue[dashboard]" in done.stderr, done.stderr
    assert "unexpected error" not in done.stderr, done.stderr


def test_dashboard_once_needs_no_uvicorn(tmp_path: Path) -> None:
    """``--once`` checks the configuration and Redis only: it serves nothing."""
    done = _cli(tmp_path, ["uvicorn"], "dashboard", "h5app:queue", "--insecure-local", "--once")
    assert done.returncode == 0, done.stderr
    assert "ready" in done.stdout, done.stdout


@pytest.mark.parametrize(
    ("hidden", "args", "extra"),
    [
        (["jinja2"], ["dashboard", "h5app:queue", "--insecure-local"], "dashboard"),
        (["starlette"], ["dashboard", "h5app:queue", "--insecure-local"], "dashboard"),
        (["prometheus_client"], ["metrics", "h5app:queue", "--once"], "prometheus"),
    ],
)
def test_a_package_looked_for_but_not_imported_is_named_when_hidden(
    tmp_path: Path, hidden: list[str], args: list[str], extra: str
) -> None:
    """The extras' packages are looked for (``importlib.util.find_spec``), not imported,
    when the CLI starts: a package that cannot be imported is still found missing."""
    done = _cli(tmp_path, hidden, *args)
    assert done.returncode == 2, done.stderr
    assert f"kitium-job-queue[{extra}]" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
