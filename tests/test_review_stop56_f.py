"""What APP and the password hint say in the cases a newcomer meets first.

* A file path given as APP's module (``./tasks.py:queue``, ``tasks.py:queue``,
  ``sub/tasks.py:queue``) is refused with the module:attribute form to use, without
  running the file; it is not said to have "failed" nor to need another directory.
* ``pkg.sub:queue`` where ``pkg`` is found but has no ``sub`` names the package found
  (perhaps another of that name) instead of saying where to run from.
* Redis asking for a password when a username but no password was given keeps the
  username in the form to use; a Unix socket's or a TLS URL's form keeps its scheme.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from redis.exceptions import AuthenticationError

from kitium_queue.cli import EXIT_USAGE, main
from kitium_queue.connection import ConnectionFactory


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    # A module that must never be run: importing it leaves a mark.
    body = "import pathlib\npathlib.Path('kq_r56_ran').write_text('ran')\nqueue = None\n"
    (tmp_path / "kq_r56_tasks.py").write_text(body)
    (tmp_path / "kq_r56_sub").mkdir()
    (tmp_path / "kq_r56_sub" / "kq_r56_tasks.py").write_text(body)
    return tmp_path


def _stats(app: str) -> str:
    done = CliRunner().invoke(main, ["stats", app])
    assert done.exit_code == EXIT_USAGE, done.output
    return _flat(done.stderr)


@pytest.mark.parametrize(
    ("app", "form"),
    [
        ("./kq_r56_tasks.py:queue", "kq_r56_tasks:queue"),
        ("kq_r56_tasks.py:queue", "kq_r56_tasks:queue"),
        ("kq_r56_sub/kq_r56_tasks.py:queue", "kq_r56_sub.kq_r56_tasks:queue"),
    ],
)
def test_a_file_path_as_app_names_the_module_form_without_running_it(
    in_tmp: Path, app: str, form: str
) -> None:
    text = _stats(app)
    assert "is a file path: APP is module:attribute" in text, text
    assert f"e.g. {form}" in text, text
    assert "failed" not in text and "PYTHONPATH" not in text, text
    assert not (in_tmp / "kq_r56_ran").exists(), "the file was run"


def test_an_absolute_file_path_as_app_says_where_to_run_from(in_tmp: Path) -> None:
    text = _stats(f"{in_tmp / 'kq_r56_tasks.py'}:queue")
    assert "is a file path" in text and "e.g. kq_r56_tasks:queue, run from the directory" in text


def test_a_package_found_without_the_submodule_names_the_package(in_tmp: Path) -> None:
    (in_tmp / "kq_r56_pkg").mkdir()
    (in_tmp / "kq_r56_pkg" / "__init__.py").write_text("")
    text = _stats("kq_r56_pkg.absent:queue")
    assert "the package 'kq_r56_pkg' found (at " in text, text
    assert "has no module 'absent'" in text, text
    assert "run from the directory" not in text, text


def _said(redis: Any) -> str:
    err = ConnectionFactory(redis).error(AuthenticationError("Authentication required."), "r56")
    assert err is not None
    return _flat(str(err))


@pytest.mark.parametrize(
    ("redis", "form"),
    [
        ("redis://kq-r56-user@127.0.0.1:29601/0", "redis://USERNAME:PASSWORD@host:port/db"),
        ({"host": "127.0.0.1", "username": "kq-r56-user"}, "redis://USERNAME:PASSWORD@"),
        ("unix:///tmp/kq-r56-absent.sock", "unix://:PASSWORD@/path/to/socket"),
        ("rediss://127.0.0.1:29601/0", "rediss://:PASSWORD@host:port/db"),
        ({"host": "127.0.0.1", "ssl": True}, "rediss://:PASSWORD@host:port/db"),
    ],
    ids=["url-username", "dict-username", "unix", "rediss", "dict-ssl"],
)
def test_the_password_form_keeps_the_username_and_the_scheme(redis: Any, form: str) -> None:
    text = _said(redis)
    assert "requires a password and none was given" in text, text
    assert f"use {form}" in text, text
