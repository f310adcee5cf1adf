"""The command line and the explainers under hostile input: APP modules that print,
raise or exit while they load, records damaged by hand, ids written by anyone,
arguments as long as the shell allows.

Each case was once wrong: a module's prints went into ``--json`` output; a module that
raised on import was an "unexpected error" (exit 1) and one calling ``sys.exit`` ended
the command silently; one damaged schedule record made ``schedules list`` fail for
every schedule; ``explain`` raised WRONGTYPE on a job key of another type and quoted
worker ids and error texts unescaped; error lines quoted a 100 KB argument whole.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from helpers import app_module
from kitium_queue import JobQueue
from kitium_queue.cli import EXIT_USAGE, main

pytestmark = pytest.mark.redis_only

CLI = [sys.executable, "-m", "kitium_queue.cli"]
EVIL = "w\x1b[31m\u202e\nX"


def _run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def _clean(text: str) -> bool:
    """No control, format (bidi) or line-separator character in ``text``."""
    return not any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in text)


@pytest.fixture
def app(tmp_path: Path, redis_url: str, prefix: str) -> Iterator[str]:
    source = (
        "print('loading the app')\n"
        "from kitium_queue import JobQueue\n"
        f"queue = JobQueue('ho', redis={redis_url!r}, prefix={prefix!r})\n"
        "def broken():\n"
        "    raise ValueError('no queue today')\n"
    )
    with app_module(tmp_path, source, "kq_cli_hostile") as module:
        yield module


def test_what_an_app_module_prints_while_loading_stays_out_of_stdout(
    app: str, tmp_path: Path
) -> None:
    done = subprocess.run(
        [*CLI, "stats", f"{app}:queue", "--json"],
        capture_output=True,
        cwd=tmp_path,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["waiting"] == 0
    assert b"loading the app" in done.stderr


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ("raise RuntimeError('boom \\x1b[31m')\n", "RuntimeError: boom \\x1b[31m"),
        ("import sys\nsys.exit(5)\n", "sys.exit(5)"),
        ("def x(:\n", "SyntaxError"),
    ],
)
def test_an_app_module_that_fails_to_load_is_a_usage_error(
    tmp_path: Path, body: str, said: str
) -> None:
    with app_module(tmp_path, body, "kq_cli_broken") as module:
        got = _run("stats", f"{module}:queue")
    assert got.exit_code == EXIT_USAGE, got.output
    assert f"importing '{module}' failed" in got.stderr and said in got.stderr
    assert "unexpected error" not in got.stderr and "\x1b" not in got.stderr


def test_an_app_factory_that_raises_is_a_usage_error(app: str) -> None:
    got = _run("stats", f"{app}:broken")
    assert got.exit_code == EXIT_USAGE, got.output
    assert "ValueError: no queue today" in got.stderr
    assert "unexpected error" not in got.stderr


def test_an_argument_as_long_as_the_shell_allows_gives_a_short_error_line(app: str) -> None:
    big = "x" * 100_000
    for args in (
        ["jobs", "list", f"{app}:queue", "--older-than", big],
        ["jobs", "show", f"{app}:queue", big],
        ["schedules", "pause", f"{app}:queue", big],
        ["stats", f"{app}:{big}"],
    ):
        got = _run(*args)
        assert got.exit_code != 0, (args[:2], got.output[:200])
        line = got.stderr.strip().splitlines()[-1]
        assert len(line) < 1100 and "characters cut" in line, (args[:2], len(line))


def _plant_schedules(redis_url: str, prefix: str) -> None:
    async def go() -> None:
        q = JobQueue("ho", redis=redis_url, prefix=prefix)
        for sid in ("s-good", "s-count", "s-def", "s-type"):
            await q.schedule_every("tick", {"a": 1}, 60_000, schedule_id=sid)
        client = await q.client()
        await client.hset(q.keys.schedule("s-count"), "cnt", "NaN")
        await client.hset(q.keys.schedule("s-def"), "def", "[1]")
        await client.delete(q.keys.schedule("s-type"))
        await client.set(q.keys.schedule("s-type"), "x")
        await q.close()

    asyncio.run(go())


def test_damaged_schedule_records_are_listed_next_to_the_others(
    app: str, redis_url: str, prefix: str
) -> None:
    _plant_schedules(redis_url, prefix)
    got = _run("schedules", "list", f"{app}:queue", "--json")
    assert got.exit_code == 0, got.output
    by_id = {s["id"]: s for s in json.loads(got.stdout)}
    assert set(by_id) == {"s-good", "s-count", "s-def", "s-type"}
    assert by_id["s-good"]["damaged"] is None and by_id["s-good"]["every_ms"] == 60_000
    assert "runs is not a number" in by_id["s-count"]["damaged"]
    assert by_id["s-count"]["every_ms"] == 60_000
    assert "not a JSON object" in by_id["s-def"]["damaged"]
    assert "another type" in by_id["s-type"]["damaged"]
    plain = _run("schedules", "list", f"{app}:queue")
    assert plain.exit_code == 0, plain.output
    assert "damaged=definition is not a JSON object" in plain.stdout
    # Pausing works on any record; resuming needs its timing, which cannot be trusted.
    refused = _run("schedules", "resume", f"{app}:queue", "s-def")
    assert refused.exit_code == EXIT_USAGE, refused.output
    assert "damaged record" in refused.stderr and "remove it" in refused.stderr
    assert _run("schedules", "remove", f"{app}:queue", "s-type").exit_code == 0


async def test_explain_answers_for_a_job_key_of_another_type(redis_url: str, prefix: str) -> None:
    q = JobQueue("ho", redis=redis_url, prefix=prefix)
    try:
        jid = await q.add_job("task", {})
        client = await q.client()
        await client.delete(q.keys.job(jid))
        await client.rpush(q.keys.job(jid), "x")
        why = await q.explain(jid)
        assert why.status is not None
        assert any(r.code == "damaged" and "another type" in r.message for r in why.reasons)
    finally:
        await q.close()


async def test_explain_messages_quote_worker_ids_and_errors_escaped(
    redis_url: str, prefix: str
) -> None:
    q = JobQueue("ho", redis=redis_url, prefix=prefix)
    try:
        client = await q.client()
        running = await q.add_job("task", {}, job_id="running")
        await client.zrem(q.keys.wait, running)
        await client.zadd(q.keys.active, {running: 9_999_999_999_999})
        await client.hset(q.keys.job(running), mapping={"st": "active", "w": EVIL, "ps": "1"})
        retrying = await q.add_job("task", {}, job_id="retrying", delay=60_000)
        await client.hset(q.keys.job(retrying), mapping={"e": EVIL, "a": "1"})
        held = (await q.explain(running)).reasons
        assert [r.code for r in held] == ["lease-held"]
        assert held[0].refs == (("worker", EVIL),)  # a link keeps the id as stored
        delayed = (await q.explain(retrying)).reasons
        assert delayed[0].code == "delayed" and "backoff" in delayed[0].message
        for reason in (held[0], delayed[0]):
            assert _clean(reason.message), reason.message
            assert "\\x1b[31m\\u202e\\nX" in reason.message, reason.message
    finally:
        await q.close()


def test_an_interrupted_stats_read_is_not_a_success(tmp_path: Path) -> None:
    """Ctrl-C (here: raised while APP loads) during a one-off ``stats`` is not exit 0;
    only ``--watch`` ends on Ctrl-C as its normal way to stop."""
    with app_module(tmp_path, "raise KeyboardInterrupt\n", "kq_cli_interrupted") as module:
        got = _run("stats", f"{module}:queue")
        assert got.exit_code != 0, got.output
        watched = _run("stats", f"{module}:queue", "--watch")
        assert watched.exit_code == 0, watched.output
