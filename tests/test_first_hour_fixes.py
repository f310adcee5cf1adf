"""What a newcomer meets in the first hour, said so that it can be acted on.

* A missing optional extra names both ways to install it: from the package index and,
  while the package is not published, from a clone (``pip install -e ".[extra]"``).
* ``kitium-queue --help`` and every command that takes APP say what APP is (and what
  its module must not do on import); ``--redis`` names ``KITIUM_QUEUE_REDIS``.
* An APP whose module is not found says where to run from; a module that is found but
  fails to import one of its own dependencies does not.
* Redis asking for a password when none was given says so, and how to give one,
  instead of "check the username and password".
* The documentation, the examples and the docstrings speak of the project itself.
"""

from __future__ import annotations

import importlib.util
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from redis.asyncio import Redis
from redis.exceptions import AuthenticationError

from kitium_queue import ConfigurationError, JobQueue
from kitium_queue.cli import EXIT_USAGE, main
from kitium_queue.connection import ConnectionFactory
from test_missing_extras import _run

ROOT = Path(__file__).resolve().parents[1]


def _clone_form(extra: str) -> str:
    return f'pip install -e ".[{extra}]" in a clone'


# ------------------------------------------------------------------ 1. missing extras
@pytest.mark.parametrize(
    ("module", "blocked", "extra"),
    [
        ("kitium_queue.features.prometheus", "prometheus_client", "prometheus"),
        ("kitium_queue.dashboard", "starlette", "dashboard"),
    ],
)
def test_a_missing_extra_says_how_to_install_it_from_a_clone(
    module: str, blocked: str, extra: str
) -> None:
    done = _run({blocked}, f"import {module}")
    assert done.returncode == 1, done.stderr
    assert f'pip install "kitium-job-queue[{extra}]"' in done.stderr, done.stderr
    assert _clone_form(extra) in done.stderr, done.stderr


def test_an_advanced_section_without_its_extra_says_how_to_install_it_from_a_clone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = importlib.util.find_spec

    def without(name: str, *args: Any, **kwargs: Any) -> Any:
        return None if name == "cryptography" else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", without)
    with pytest.raises(ConfigurationError) as err:
        JobQueue("fh-extra", redis="memory://fh-extra", advanced={"encryption": {"enabled": True}})
    text = str(err.value)
    assert 'pip install "kitium-job-queue[encryption]"' in text, text
    assert _clone_form("encryption") in text, text


# ------------------------------------------------------------------ 2. what APP is
def _flat(text: str) -> str:
    return " ".join(text.split())


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, cmd in sorted(group.commands.items()):
        yield (*path, name)
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*path, name))


def _help(path: tuple[str, ...]) -> tuple[click.Command, str]:
    cmd: click.Command = main
    for name in path:
        assert isinstance(cmd, click.Group)
        cmd = cmd.commands[name]
    done = CliRunner().invoke(main, [*path, "--help"])
    assert done.exit_code == 0, done.output
    return cmd, _flat(done.output)


def test_the_top_level_help_says_what_app_is_and_names_the_environment_variable() -> None:
    done = CliRunner().invoke(main, ["--help"])
    text = _flat(done.output)
    assert "APP is module:attribute naming a JobQueue" in text, text
    assert "importable from the current directory" in text, text
    assert 'if __name__ == "__main__":' in text and "asyncio.run" in text, text
    assert "KITIUM_QUEUE_REDIS" in text, text


def test_every_command_that_takes_app_says_what_it_is() -> None:
    checked = 0
    for path in _commands(main):
        cmd, text = _help(path)
        if not any(isinstance(p, click.Argument) and p.name == "app" for p in cmd.params):
            continue
        checked += 1
        assert "APP is module:attribute naming" in text, (path, text)
        assert 'if __name__ == "__main__":' in text, (path, text)
        if path[0] == "regions":
            assert "GlobalQueueManager" in text, (path, text)
        if any(p.name == "redis" for p in cmd.params):
            assert "KITIUM_QUEUE_REDIS" in text, (path, text)
    assert checked > 40, checked


def test_the_app_line_is_added_once_and_keeps_the_docstring_layout() -> None:
    _, text = _help(("jobs", "list"))
    assert text.count("APP is module:attribute") == 1, text
    done = CliRunner().invoke(main, ["jobs", "list", "--help"])
    # The docstring's indented lines are dedented as click does (no stray indentation).
    assert "\n      Plain output" not in done.output, done.output


# ------------------------------------------------------------------ 3. APP not found
@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_an_app_module_not_found_says_where_to_run_from(in_tmp: Path) -> None:
    done = CliRunner().invoke(main, ["stats", "kq_fh_absent_pkg.tasks:queue"])
    assert done.exit_code == EXIT_USAGE, done.output
    text = _flat(done.stderr)
    assert "cannot import 'kq_fh_absent_pkg.tasks'" in text, text
    assert "run from the directory that holds the module, or set PYTHONPATH" in text, text


def test_a_missing_dependency_inside_the_app_module_gives_no_directory_hint(
    in_tmp: Path,
) -> None:
    (in_tmp / "kq_fh_broken_app.py").write_text("import kq_fh_absent_dependency\n")
    done = CliRunner().invoke(main, ["stats", "kq_fh_broken_app:queue"])
    assert done.exit_code == EXIT_USAGE, done.output
    text = _flat(done.stderr)
    assert "kq_fh_absent_dependency" in text, text
    assert "PYTHONPATH" not in text, text


# ------------------------------------------------------------------ 4. no password given
_NOAUTH = "Authentication required."


def _said(redis: Any) -> str:
    err = ConnectionFactory(redis).error(AuthenticationError(_NOAUTH), "fh")
    assert err is not None
    return str(err)


@pytest.mark.parametrize(
    "redis",
    ["redis://127.0.0.1:29601/0", {"host": "127.0.0.1", "port": 29601}],
    ids=["url", "dict"],
)
def test_redis_asking_for_a_password_when_none_was_given_says_so(redis: Any) -> None:
    text = _said(redis)
    assert "requires a password and none was given" in text, text
    assert "redis://:PASSWORD@host:port/db" in text, text
    assert "check the username and password" not in text, text


def test_a_refused_password_still_says_to_check_it_and_never_shows_it() -> None:
    text = _said("redis://:kq-fh-secret-pw@127.0.0.1:29601/0")
    assert "refused the credentials" in text and "check the username and password" in text
    assert "none was given" not in text and "kq-fh-secret-pw" not in text, text
    text = _said({"host": "127.0.0.1", "port": 29601, "password": "kq-fh-secret-pw"})
    assert "refused the credentials" in text and "kq-fh-secret-pw" not in text, text


async def test_a_client_given_is_not_said_to_lack_a_password() -> None:
    # Its credentials are its own: the queue cannot tell whether it holds one.
    client = Redis(host="127.0.0.1", port=29601)
    try:
        text = _said(client)
        assert "none was given" not in text and "refused the credentials" in text, text
    finally:
        await client.aclose()


# ------------------------------------------------------------------ 5. the project itself
def test_the_docs_examples_and_docstrings_speak_of_the_project_itself() -> None:
    found = []
    files = [*ROOT.glob("docs/*.md"), *ROOT.glob("examples/**/*.py")]
    files += [*ROOT.glob("src/**/*.py"), ROOT / "README.md"]
    for path in files:
        for n, line in enumerate(path.read_text("utf-8").splitlines(), 1):
            if re.search(r"\bthe brief\b", line, re.IGNORECASE):
                found.append(f"{path.relative_to(ROOT)}:{n}: {textwrap.shorten(line, 80)}")
    assert not found, "\n".join(found)
