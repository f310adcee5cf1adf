"""``kitium-queue dashboard``: what it refuses before serving (no token, an exposed
``--insecure-local``, a weak token) and its ``--once`` check. Serving itself is
exercised by tests/test_dashboard_e2e.py, which starts this command."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from kitium_queue.cli import main

TOKEN = "t" * 32


def run(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(main, ["dashboard", *args])
    return r.exit_code, r.stdout, r.stderr


def test_it_refuses_to_serve_without_a_token(cli_app: str) -> None:
    code, _, err = run(cli_app)
    assert code == 2 and err.count("\n") == 1
    assert "the dashboard needs --token" in err and "--insecure-local" in err


def test_insecure_local_stays_on_loopback(cli_app: str) -> None:
    code, _, err = run(cli_app, "--insecure-local", "--host", "0.0.0.0")
    assert code == 2 and "loopback address only" in err
    code, out, _ = run(cli_app, "--insecure-local", "--once", "--port", "8123")
    assert code == 0 and out.split("\t")[:2] == ["ready", "http://127.0.0.1:8123/"]


def test_tokens_are_checked_and_may_come_from_a_file(cli_app: str, tmp_path: Path) -> None:
    code, _, err = run(cli_app, "--token", "weak:alice:admin")
    assert code == 2 and "16 to" in err
    code, _, err = run(cli_app, "--token", f"{TOKEN}:alice:overlord")
    assert code == 2 and "unknown dashboard role" in err
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# who may sign in\n{TOKEN}:alice@example.com:viewer\n")
    code, out, _ = run(cli_app, cli_app, "--tokens-file", str(tokens), "--once")
    assert code == 0 and out.strip().split("\t") == ["ready", "http://127.0.0.1:8080/", "2"]
    code, _, err = run(cli_app, "--tokens-file", str(tmp_path / "missing"))
    assert code == 2 and "cannot read" in err


def test_access_and_audit_take_the_key_from_the_environment_or_a_file(
    cli_app: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KITIUM_QUEUE_AUDIT_KEY", raising=False)
    token = f"{TOKEN}:ada@example.com:admin"
    for flag in ("--access", "--audit"):
        code, _, err = run(cli_app, "--token", token, flag, "--once")
        assert code == 2 and "needs the audit key: set KITIUM_QUEUE_AUDIT_KEY" in err
    keyfile = tmp_path / "audit.key"
    keyfile.write_text("k" * 64 + "\n")
    code, out, _ = run(cli_app, "--token", token, "--access", "--audit-key-file", str(keyfile),
                       "--once")  # fmt: skip
    assert code == 0 and out.startswith("ready\t")
    monkeypatch.setenv("KITIUM_QUEUE_AUDIT_KEY", "e" * 64)
    code, out, _ = run(cli_app, "--token", token, "--audit", "--once")
    assert code == 0 and out.startswith("ready\t")
    code, _, err = run(cli_app, "--token", token, "--audit-key-file", str(keyfile), "--once")
    assert code == 2 and "--audit-key-file goes with --access or --audit" in err
    # The key is never an option of its own (no way to put it on the command line).
    code, _, err = run(cli_app, "--token", token, "--audit-key", "x" * 64)
    assert code == 2 and "No such option" in err
