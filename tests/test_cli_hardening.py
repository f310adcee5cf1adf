"""The command line under bad or unusual input: exit code 3 only for Redis, usage errors
as exit 2 before anything is done, bounded limits, prompts on stderr and escaped.

Each case was once wrong: a closed stdout or a port in use reported as "cannot reach
Redis" (exit 3); one undecodable id among several left the earlier ones acted on; lone
surrogates and odd APP attributes ended in "unexpected error" (exit 1); negative limits
sliced webhook lists; NaN slipped through float ranges; the compliance prompt went to
stdout.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from helpers import app_module
from kitium_queue import JobQueue, JobStatus
from kitium_queue.cli import EXIT_ERROR, EXIT_UNREACHABLE, EXIT_USAGE, main

pytestmark = pytest.mark.redis_only

CLI = [sys.executable, "-m", "kitium_queue.cli"]


@pytest.fixture
def app(tmp_path: Path, redis_url: str, prefix: str) -> Iterator[str]:
    source = (
        "from kitium_queue import JobQueue\n"
        "from kitium_queue.features.partitioned import PartitionedQueue\n"
        f"queue = JobQueue('ch', redis={redis_url!r}, prefix={prefix!r})\n"
        f"parts = PartitionedQueue('chp', partitions=2, redis={redis_url!r}, prefix={prefix!r})\n"
        "def needs_arg(x):\n"
        "    return queue\n"
        "items = [1, 2]\n"
    )
    with app_module(tmp_path, source, "kq_cli_hard") as module:
        yield module


def _run(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=input)


def _queue(redis_url: str, prefix: str) -> JobQueue:
    return JobQueue("ch", redis=redis_url, prefix=prefix)


def _add(redis_url: str, prefix: str, n: int, **opts: object) -> list[str]:
    async def go() -> list[str]:
        q = _queue(redis_url, prefix)
        ids = [await q.add_job("task", {"i": i}, **opts) for i in range(n)]  # type: ignore[arg-type]
        await q.close()
        return ids

    return asyncio.run(go())


def _status(redis_url: str, prefix: str, job_id: str) -> JobStatus | None:
    async def go() -> JobStatus | None:
        q = _queue(redis_url, prefix)
        info = await q.get_job_status(job_id)
        await q.close()
        return None if info is None else info.status

    return asyncio.run(go())


def test_a_closed_stdout_ends_quietly_and_is_not_called_unreachable(
    app: str, tmp_path: Path, redis_url: str, prefix: str
) -> None:
    _add(redis_url, prefix, 50)
    for args in (["jobs", "list", f"{app}:queue", "-s", "waiting"], ["stats", f"{app}:queue"]):
        read, write = os.pipe()
        os.close(read)  # the reader is gone before the command writes
        try:
            done = subprocess.run(
                [*CLI, *args],
                stdout=write,
                stderr=subprocess.PIPE,
                cwd=tmp_path,
                timeout=60,
                env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
            )
        finally:
            os.close(write)
        err = done.stderr.decode()
        assert done.returncode == EXIT_ERROR, (args, done.returncode, err)
        assert "cannot reach" not in err and "Traceback" not in err, err
        assert "unexpected error" not in err, err


def test_a_metrics_port_in_use_is_a_usage_error_not_redis(app: str) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        got = _run("metrics", f"{app}:queue", "--port", str(port))
        assert got.exit_code == EXIT_USAGE, got.output
        assert f"cannot listen on 127.0.0.1:{port}" in got.stderr
        assert "cannot reach Redis" not in got.stderr
        unresolvable = _run("metrics", f"{app}:queue", "--host", "256.1.1.1", "--port", "0")
        assert unresolvable.exit_code == EXIT_USAGE, unresolvable.output
        assert "cannot listen on 256.1.1.1:0" in unresolvable.stderr
    finally:
        busy.close()


def test_the_dashboard_binds_before_it_says_serving(app: str, tmp_path: Path) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        done = subprocess.run(
            [*CLI, "dashboard", f"{app}:queue", "--port", str(port), "--insecure-local"],
            capture_output=True,
            cwd=tmp_path,
            timeout=60,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
    finally:
        busy.close()
    assert done.returncode == EXIT_USAGE, (done.stdout, done.stderr)
    assert b"serving" not in done.stdout
    assert f"cannot listen on 127.0.0.1:{port}".encode() in done.stderr


def test_one_undecodable_id_among_several_acts_on_none(
    app: str, redis_url: str, prefix: str
) -> None:
    ids = _add(redis_url, prefix, 2, delay=60_000)
    got = _run("jobs", "cancel", f"{app}:queue", ids[0], "bad-\udcff", ids[1])
    assert got.exit_code == EXIT_USAGE, got.output
    assert "lone surrogate" in got.stderr
    assert [_status(redis_url, prefix, i) for i in ids] == [JobStatus.DELAYED] * 2
    got = _run("jobs", "remove", f"{app}:queue", ids[0], "x\udcff")
    assert got.exit_code == EXIT_USAGE, got.output
    assert _status(redis_url, prefix, ids[0]) is JobStatus.DELAYED


@pytest.mark.parametrize(
    "args",
    [
        ["schedules", "pause", "{app}:queue", "s-\udcff"],
        ["schedules", "remove", "{app}:queue", "s-\udcff"],
        ["webhooks", "show", "{app}:queue", "w-\udcff"],
    ],
)
def test_text_that_is_not_utf8_is_a_usage_error(app: str, args: list[str]) -> None:
    got = _run(*(a.replace("{app}", app) for a in args))
    assert got.exit_code == EXIT_USAGE, got.output
    assert "unexpected error" not in got.stderr
    assert "\\udcff" in got.stderr


@pytest.mark.parametrize(
    "target", ["{app}:needs_arg", "os:system", "{app}:items.\u00b2"]
)
def test_an_app_that_names_the_wrong_thing_is_a_usage_error(app: str, target: str) -> None:
    got = _run("stats", target.replace("{app}", app))
    assert got.exit_code == EXIT_USAGE, got.output
    assert "unexpected error" not in got.stderr


def test_partitioned_cursors_are_checked_and_bounded(app: str) -> None:
    bad = _run("jobs", "list", f"{app}:parts", "--cursor", "@\u00b2")
    assert bad.exit_code == EXIT_USAGE and "'@<offset>'" in bad.stderr
    deep = _run("jobs", "list", f"{app}:parts", "--cursor", "@100000")
    assert deep.exit_code == EXIT_USAGE, deep.output
    assert "list one partition" in deep.stderr and "limit must be" not in deep.stderr


def test_deep_json_in_a_data_filter_is_a_usage_error(app: str) -> None:
    got = _run("jobs", "list", f"{app}:queue", "--data", "x=" + "[" * 100_000)
    assert got.exit_code == EXIT_USAGE, got.output
    assert "nested too deeply" in got.stderr


def test_webhooks_refuse_a_partitioned_queue_and_bad_limits(app: str) -> None:
    parts = _run("webhooks", "list", f"{app}:parts")
    assert parts.exit_code == EXIT_USAGE, parts.output
    assert "queues.0" in parts.stderr and "AttributeError" not in parts.stderr
    for n in ("-1", "0"):
        got = _run("webhooks", "dlq", f"{app}:queue", "-n", n)
        assert got.exit_code == EXIT_USAGE, (n, got.output)
        got = _run("webhooks", "history", f"{app}:queue", "job", "-n", n)
        assert got.exit_code == EXIT_USAGE, (n, got.output)


def test_nan_is_not_a_number_for_float_options(app: str) -> None:
    for args in (["stats", f"{app}:queue", "--watch", "-i", "nan"],
                 ["health", f"{app}:queue", "--max-memory", "nan"]):
        got = _run(*args)
        assert got.exit_code == EXIT_USAGE, (args, got.output)
        assert "not a number" in got.stderr


def test_connection_settings_that_are_wrong_are_usage_errors(app: str, redis_url: str) -> None:
    spaced = _run("stats", f"{app}:queue", "--redis", f"{redis_url}?client_name=a%20b")
    assert spaced.exit_code == EXIT_USAGE, spaced.output
    assert "client_name" in spaced.stderr
    proto = _run("stats", f"{app}:queue", "--redis", f"{redis_url}?protocol=9")
    assert proto.exit_code == EXIT_USAGE, proto.output
    assert "protocol=2 or protocol=3" in proto.stderr


def test_an_unreachable_sentinel_is_one_short_line(app: str) -> None:
    got = _run("stats", f"{app}:queue", "--redis", "redis+sentinel://u:pw@127.0.0.1:1/mymaster")
    assert got.exit_code == EXIT_UNREACHABLE, got.output
    line = got.stderr.strip()
    assert "\n" not in line and len(line) < 400, line
    assert "pw" not in line and "<redis" not in line


def test_a_bad_environment_url_is_named_as_such(app: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KITIUM_QUEUE_REDIS", "bogus://x")
    got = _run("stats", f"{app}:queue")
    assert got.exit_code == EXIT_USAGE, got.output
    assert "KITIUM_QUEUE_REDIS" in got.stderr and "--redis" not in got.stderr


def test_the_erase_prompt_goes_to_stderr(app: str, redis_url: str, prefix: str) -> None:
    source_q = f"{app}:queue"
    got = _run("compliance", "erase", source_q, "subject-1", input="n\n")
    assert got.exit_code == EXIT_ERROR, got.output
    assert "erase every job of subject" in got.stderr
    assert "erase every job" not in got.stdout


def test_bulk_prompts_escape_the_filter_text(app: str, redis_url: str, prefix: str) -> None:
    async def fill() -> None:
        q = _queue(redis_url, prefix)

        async def fail(job: object) -> None:
            from kitium_queue import NonRetryableError

            raise NonRetryableError("no")

        q.process("task", fail)
        await q.add_job("task", {})
        await q.start()
        for _ in range(500):
            if (await q.get_stats()).dlq:
                break
            await asyncio.sleep(0.01)
        await q.close()

    asyncio.run(fill())
    got = _run("dlq", "replay", f"{app}:queue", "--name", "[!\x1b[31m\n]*", input="n\n")
    assert got.exit_code == EXIT_ERROR, got.output
    assert "\x1b" not in got.stderr and "\\x1b" in got.stderr, got.stderr


@pytest.mark.parametrize(
    "redis",
    [
        "redis://127.0.0.1:6379/0?client_name=a%20b",
        "redis://127.0.0.1:6379/0?protocol=9",
        {"host": "127.0.0.1", "client_name": "line\nbreak"},
    ],
)
def test_connection_settings_redis_would_refuse_are_refused_when_given(redis: object) -> None:
    from kitium_queue import ConfigurationError

    with pytest.raises(ConfigurationError, match=r"client_name|protocol=2 or protocol=3"):
        JobQueue("ch", redis=redis)  # type: ignore[arg-type]
