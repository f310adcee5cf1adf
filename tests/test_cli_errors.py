"""Every CLI subcommand fails with one line on stderr and a documented exit code
(issue 11, items 1 and 7): unreachable Redis, a server that never answers, refused
credentials, a wrong database, an HTTP server on the port; the traceback only with
``--debug`` / ``-v``."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import redis
from click.testing import CliRunner, Result

from _loopback import HttpServer, SilentServer, closed_port
from _redis import RedisServer
from helpers import app_module
from kitium_queue.cli import EXIT_CODES, EXIT_ERROR, EXIT_UNREACHABLE, EXIT_USAGE, main

README = Path(__file__).resolve().parents[1] / "README.md"
# A short deadline for the server that never answers (the default is 10 s).
FAST = "socket_timeout=0.5&socket_connect_timeout=0.5"
# Shorter still where every subcommand meets the server that never answers: each waits
# the whole deadline once (a loopback server that answers does so in microseconds).
SILENT_FAST = "socket_timeout=0.1&socket_connect_timeout=0.5"


def _leaves(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            yield from _leaves(cmd, (*path, name))
        else:
            yield (*path, name)


SUBCOMMANDS = list(_leaves(main))


def _command(path: tuple[str, ...]) -> click.Command:
    cmd: click.Command = main
    for name in path:
        assert isinstance(cmd, click.Group)
        cmd = cmd.commands[name]
    return cmd


def _argv(path: tuple[str, ...], app: str, url: str) -> list[str]:
    """The subcommand's command line: APP for ``app``, a placeholder for any other
    argument, ``--redis url``. Every subcommand must take ``--redis``."""
    cmd = _command(path)
    names = {p.name for p in cmd.params}
    assert "redis" in names, f"{' '.join(path)} has no --redis option"
    args = [app if p.name == "app" else "x-1" for p in cmd.params if isinstance(p, click.Argument)]
    return [*path, *args, "--redis", url]


@pytest.fixture
def app(tmp_path: Path) -> Iterator[str]:
    """A module with a memory:// queue; each test points it elsewhere with --redis."""
    source = "from kitium_queue import JobQueue\nqueue = JobQueue('cli')\n"
    with app_module(tmp_path, source, "kq_cli_err") as module:
        yield f"{module}:queue"


def _one_line_error(result: Result, code: int, *needles: str) -> str:
    """The run exited with ``code``, wrote no traceback, and (unless it is ``health``,
    which reports on stdout) one ``Error:`` line on stderr containing ``needles``."""
    assert result.exit_code == code, (result.exit_code, result.output, result.stderr)
    # In-process, an exception that escaped would be result.exception itself.
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output + result.stderr
    lines = [
        line
        for line in result.stderr.splitlines()
        if line.strip() and not line.startswith("note: ")
    ]  # the memory:// note
    if not lines:  # health: its verdict on stdout is the report
        assert "verdict\tunreachable" in result.stdout, result.stdout
        text = result.stdout
    else:
        assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
        text = lines[0]
    for needle in needles:
        assert needle in text, text
    return text


@pytest.fixture(autouse=True)
def _no_audit_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """The audit key commands read from the environment is not set here (whatever the
    developer's shell holds): they refuse before connecting (``CHECKED_FIRST``)."""
    monkeypatch.delenv("KITIUM_QUEUE_AUDIT_KEY", raising=False)


def test_every_subcommand_is_covered() -> None:
    flat = {" ".join(p) for p in SUBCOMMANDS}
    assert {"worker", "stats", "health", "events", "dlq list", "schedules pause"} <= flat


#: Subcommands that refuse what they were given before connecting (still one line) ->
#: the exit code and the text of that refusal.
CHECKED_FIRST: dict[tuple[str, ...], tuple[int, str]] = {
    ("encryption", "rotate"): (2, "is not held by this process"),
    ("webhooks", "deliver"): (1, "constructs no WebhookManager"),
    # Deployment-wide commands: options they need, and the audit key (from the
    # environment or a file; never from the command line).
    ("access", "grant"): (2, "allows nothing: give a role"),
    ("access", "revoke"): (2, "needs the audit key"),
    ("audit", "verify"): (2, "needs the audit key"),
    ("audit", "trim"): (2, "give --max-age-days or --max-entries"),
    ("acl", "redis-rules"): (2, "give --user"),
    ("dashboard",): (2, "the dashboard needs --token"),
    ("regions", "failover"): (2, "needs a GlobalQueueManager"),
    ("regions", "stranded"): (2, "needs a GlobalQueueManager"),
    ("regions", "resubmit"): (2, "needs a GlobalQueueManager"),
    ("regions", "discard"): (2, "needs a GlobalQueueManager"),
}


@pytest.mark.parametrize("path", SUBCOMMANDS, ids=" ".join)
def test_closed_port_is_one_line_and_exit_3(app: str, path: tuple[str, ...]) -> None:
    url = f"redis://127.0.0.1:{closed_port()}/0?{FAST}"
    result = CliRunner().invoke(main, _argv(path, app, url))
    if path in CHECKED_FIRST:
        _one_line_error(result, *CHECKED_FIRST[path])
        return
    _one_line_error(result, EXIT_UNREACHABLE, "cannot reach Redis at", "check the redis=")


@pytest.mark.parametrize("path", SUBCOMMANDS, ids=" ".join)
def test_silent_server_is_one_line_and_exit_3(app: str, path: tuple[str, ...]) -> None:
    with SilentServer() as srv:
        url = f"redis://127.0.0.1:{srv.port}/0?{SILENT_FAST}"
        result = CliRunner().invoke(main, _argv(path, app, url))
    if path in CHECKED_FIRST:
        _one_line_error(result, *CHECKED_FIRST[path])
        return
    _one_line_error(result, EXIT_UNREACHABLE, "accepted the connection but did not answer")


@pytest.mark.redis_only
def test_refused_password_wrong_db_and_http_server(app: str) -> None:
    with RedisServer() as srv:
        with redis.Redis(port=srv.port) as admin:
            admin.config_set("requirepass", "right-one")
        result = CliRunner().invoke(
            main, ["stats", app, "--redis", f"redis://:wrong-one@127.0.0.1:{srv.port}/0"]
        )
        text = _one_line_error(result, EXIT_UNREACHABLE, "refused the credentials")
        assert "wrong-one" not in text
        result = CliRunner().invoke(
            main, ["events", app, "--redis", f"redis://:right-one@127.0.0.1:{srv.port}/99"]
        )
        _one_line_error(result, EXIT_USAGE, "has no such database", "0..15")
    with HttpServer() as http:
        result = CliRunner().invoke(
            main, ["dlq", "list", app, "--redis", f"redis://127.0.0.1:{http.port}/0"]
        )
        _one_line_error(result, EXIT_UNREACHABLE, "does not speak the Redis protocol")


def test_debug_and_verbose_show_the_traceback(app: str) -> None:
    url = f"redis://127.0.0.1:{closed_port()}/0?{FAST}"
    for flag in ("--debug", "-v"):
        result = CliRunner().invoke(main, [flag, "stats", app, "--redis", url])
        assert result.exit_code == EXIT_UNREACHABLE
        assert "Traceback (most recent call last)" in result.stderr, result.stderr
        assert result.stderr.rstrip().splitlines()[-1].startswith("Error: cannot reach")


def test_usage_and_plain_errors_have_their_codes(app: str, tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["stats", "no_such_module_kq:queue"]).exit_code == EXIT_USAGE
    bad_url = runner.invoke(main, ["stats", app, "--redis", "http://x"])
    assert bad_url.exit_code == EXIT_USAGE and "Traceback" not in bad_url.stderr
    missing = runner.invoke(main, ["job", app, "job-1"])
    assert missing.exit_code == EXIT_ERROR and "not found" in missing.stderr


def _kq(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, str(cwd)])}
    return subprocess.run(
        [sys.executable, "-m", "kitium_queue.cli", *args],
        capture_output=True, text=True, timeout=60, cwd=cwd, env=env,
    )  # fmt: skip


def test_a_real_process_prints_no_traceback(app: str, tmp_path: Path) -> None:
    """Outside CliRunner: what a shell sees (stderr, $?), for events and stats."""
    with SilentServer() as srv:
        url = f"redis://127.0.0.1:{srv.port}/0?{FAST}"
        for cmd in ("events", "stats"):
            proc = _kq(cmd, app, "--redis", url, cwd=tmp_path)
            assert proc.returncode == EXIT_UNREACHABLE, proc.stderr
            assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.redis_only
def test_events_losing_the_server_is_one_line(app: str, tmp_path: Path) -> None:
    """The stream is being tailed when Redis goes away: a library error, not redis-py's."""
    srv = RedisServer().start()
    try:
        # The CLI's bound on reconnecting (10 s) shortened to 0.5 s: the same give-up.
        source = (
            "import kitium_queue.cli.queue as q\nq.EVENTS_GIVE_UP_S = 0.5\n"
            "from kitium_queue.cli import main\nmain()\n"
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", source, "events", app, "--redis", srv.url],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(
                [str(Path(__file__).resolve().parents[1] / "src"), str(tmp_path)])},
        )  # fmt: skip
        client = redis.Redis.from_url(srv.url)
        for _ in range(200):  # until the tail is connected (its XREAD is blocking)
            if any(c.get("cmd") == "xread" for c in client.client_list()):
                break
            time.sleep(0.05)
        else:
            pytest.fail("the events tail never started reading")
        client.close()
        srv.kill()
        _, err = proc.communicate(timeout=60)
    finally:
        srv.close()
    assert proc.returncode == EXIT_UNREACHABLE, err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("Error: "), err


def test_exit_codes_are_documented() -> None:
    help_text = CliRunner().invoke(main, ["--help"]).output
    readme = README.read_text()
    section = readme[readme.index("## Command line") :]
    section = section[: section.index("\n## ", 3)]
    for code, meaning in EXIT_CODES.items():
        assert f"{code}  {meaning}" in help_text, help_text
        assert f"| {code} | {meaning} |" in section, code
    assert "--debug" in section


def test_memory_app_says_where_its_data_lives(app: str) -> None:
    result = CliRunner().invoke(main, ["stats", app, "--json"])
    assert result.exit_code == 0
    assert "lives only in the process that created it" in result.stderr
    assert result.stdout.lstrip().startswith("{")  # stdout stays pure JSON


def test_schedule_subcommands_have_help() -> None:
    for verb in ("pause", "resume", "remove"):
        out = CliRunner().invoke(main, ["schedules", verb, "--help"]).output
        assert "SCHEDULE_ID of APP" in out, out
    listing = CliRunner().invoke(main, ["schedules", "--help"]).output
    for verb in ("pause", "resume", "remove"):
        line = next(line for line in listing.splitlines() if line.strip().startswith(verb))
        assert len(line.split()) > 1, listing


def test_bad_concurrency_is_a_usage_error(app: str) -> None:
    """Item 2 (done before, checked here through the CLI): one check for every entry."""
    for value in ("0", "-5"):
        result = CliRunner().invoke(main, ["worker", app, "-c", value])
        _one_line_error(result, EXIT_USAGE, "concurrency must be an int >= 1")
