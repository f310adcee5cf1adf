"""Queue-level commands (issue 16, item 4): ``stats`` (``--watch``), ``health`` probes
and their exit codes, ``pause``/``resume`` of a queue and of a group, ``events --json``,
``worker`` in a real process; ``--json`` on the action verbs of the feature commands;
rich tables on a terminal, plain rows without ``rich``; shell completion."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner, Result

from _redis import RedisServer
from helpers import app_module
from kitium_queue import JobQueue, JobStatus
from kitium_queue.cli import EXIT_NOT_READY, EXIT_UNREACHABLE, main
from kitium_queue.features.groups import FIFOQueueManager

pytestmark = pytest.mark.redis_only
SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture
def app(tmp_path: Path, redis_url: str, prefix: str) -> Iterator[str]:
    source = (
        "from kitium_queue import JobQueue\n"
        "from kitium_queue.features.groups import FIFOQueueManager\n"
        f"queue = JobQueue('cq', redis={redis_url!r}, prefix={prefix!r})\n"
        "FIFOQueueManager(queue)\n"
        "@queue.process('double')\n"
        "async def double(job):\n"
        "    return job.data['n'] * 2\n"
    )
    with app_module(tmp_path, source, "kq_cli_queue") as module:
        yield module


def _ok(*args: str) -> Result:
    result = CliRunner().invoke(main, list(args), env={"COLUMNS": "200"})
    assert result.exit_code == 0, (result.output, result.stderr)
    return result


def _queue(redis_url: str, prefix: str) -> JobQueue:
    return JobQueue("cq", redis=redis_url, prefix=prefix)


def _kq(
    *args: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    code: str = "from kitium_queue.cli import main; main()",
) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, str(cwd)]), **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=full,
    )


def test_stats_table_json_and_watch(app: str, redis_url: str, prefix: str) -> None:
    target = f"{app}:queue"

    async def fill() -> None:
        q = _queue(redis_url, prefix)
        await q.add_jobs([("double", {"n": i}) for i in range(4)])
        await q.add_job("double", {"n": 9}, delay=600_000)
        await q.close()

    asyncio.run(fill())
    lines = _ok("stats", target).stdout.splitlines()
    assert lines[0].split("\t")[:3] == ["queue", "waiting", "active"]
    assert lines[1].split("\t")[:4] == ["cq", "4", "0", "1"]
    counts = json.loads(_ok("stats", target, "--json").stdout)
    assert counts["waiting"] == 4 and counts["delayed"] == 1 and counts["is_paused"] is False

    # --watch --json: one document a line; the rate column counts what finished between.
    docs = [
        json.loads(x)
        for x in _ok(
            "stats", target, "--watch", "--count", "3", "--interval", "0.1", "--json"
        ).stdout.splitlines()
    ]
    assert len(docs) == 3 and all(d["waiting"] == 4 for d in docs)
    watched = _ok("--plain", "stats", target, "-w", "--count", "2", "-i", "0.1").stdout
    tables = watched.split("\n\n")
    assert len(tables) == 2 and all(t.startswith("queue\twaiting") for t in tables)
    assert tables[1].splitlines()[1].endswith("\t0.0")  # done/s: nothing ran meanwhile
    rich = _ok("--rich", "stats", target).stdout
    assert "┃ queue" in rich and "│ cq " in rich and "\t" not in rich


def test_health_probes_and_exit_codes(app: str, redis_url: str, prefix: str) -> None:
    target = f"{app}:queue"
    ready = json.loads(_ok("health", target, "--json").stdout)
    assert ready["verdict"] == "ready" and ready["ready"] is True
    assert {c["name"] for c in ready["checks"]} >= {
        "queue readable",
        "memory",
        "eviction policy",
        "primary",
    }
    alive = _ok("health", target, "--probe", "liveness").stdout
    assert "verdict\thealthy" in alive

    async def backlog() -> None:
        q = _queue(redis_url, prefix)
        await q.add_job("double", {"n": 2})
        await q.close()

    asyncio.run(backlog())
    time.sleep(0.05)
    slow = CliRunner().invoke(main, ["health", target, "--max-latency", "1ms"])
    assert slow.exit_code == EXIT_NOT_READY, slow.output
    assert "verdict\tnot ready" in slow.stdout and "latency\tFAILED: oldest waiting" in slow.stdout
    # Liveness ignores the thresholds: Redis answers.
    _ok("health", target, "--probe", "liveness", "--max-latency", "1ms")
    assert _ok("health", target, "--max-dlq", "0").exit_code == 0


def test_health_sees_memory_replicas_and_eviction(tmp_path: Path) -> None:
    with (
        RedisServer() as srv,
        app_module(
            tmp_path,
            f"from kitium_queue import JobQueue\nqueue = JobQueue('h', redis={srv.url!r})\n",
            "kq_cli_health",
        ) as module,
    ):
        target = f"{module}:queue"
        admin = redis.Redis(port=srv.port)
        _ok("health", target)
        admin.config_set("maxmemory", "1mb")  # less than in use: nearly full, and more
        out = CliRunner().invoke(main, ["health", target, "--json"])
        assert out.exit_code == EXIT_NOT_READY
        memory = next(c for c in json.loads(out.stdout)["checks"] if c["name"] == "memory")
        assert memory["ok"] is False and "of maxmemory used" in memory["detail"]
        assert (
            CliRunner().invoke(main, ["health", target, "--max-memory", "1"]).exit_code
            == EXIT_NOT_READY
        )
        admin.config_set("maxmemory", "0")
        admin.config_set("maxmemory-policy", "allkeys-lru")
        out = CliRunner().invoke(main, ["health", target])
        assert out.exit_code == EXIT_NOT_READY and "maxmemory-policy" in out.stdout
        admin.config_set("maxmemory-policy", "noeviction")
        admin.execute_command("REPLICAOF", "127.0.0.1", "1")  # a replica of nothing
        out = CliRunner().invoke(main, ["health", target])
        assert out.exit_code == EXIT_NOT_READY and "primary\tFAILED" in out.stdout
        admin.execute_command("REPLICAOF", "NO", "ONE")
        _ok("health", target)
        admin.close()
        srv.kill()
        gone = CliRunner().invoke(main, ["health", target, "--probe", "liveness"])
        assert gone.exit_code == EXIT_UNREACHABLE and "verdict\tunreachable" in gone.stdout


def test_pause_resume_queue_and_group(app: str, redis_url: str, prefix: str) -> None:
    target = f"{app}:queue"
    assert _ok("pause", target).stdout == "paused\n"
    assert json.loads(_ok("stats", target, "--json").stdout)["is_paused"] is True
    assert json.loads(_ok("resume", target, "--json").stdout) == {
        "action": "resumed",
        "queue": "cq",
        "group": None,
    }
    assert _ok("pause", target, "--group", "cust-9").stdout == "paused\tgroup\tcust-9\n"

    async def group_paused() -> bool:
        q = _queue(redis_url, prefix)
        paused = (await FIFOQueueManager(q).get_group_stats("cust-9")).paused
        await q.close()
        return paused

    assert asyncio.run(group_paused()) is True
    assert json.loads(_ok("resume", target, "-g", "cust-9", "--json").stdout)["group"] == "cust-9"
    assert asyncio.run(group_paused()) is False
    # The feature commands' action verbs print JSON too.
    paused = json.loads(_ok("groups", "pause", target, "g2", "--json").stdout)
    assert paused == {"action": "paused", "group": "g2"}
    shown = json.loads(_ok("groups", "set", target, "g2", "--concurrency", "2", "--json").stdout)
    assert shown["group_concurrency"] == 2 and shown["paused"] is True
    # The features' lists print through the CLI's tables: rich, or plain rows.
    boxed = _ok("--rich", "groups", "list", target).stdout
    assert "┃ group" in boxed and "│ g2 " in boxed and "\t" not in boxed
    plain = _ok("groups", "list", target).stdout.splitlines()
    # cust-9, resumed with no jobs and no settings, has left the list; g2 is paused.
    assert plain[0].startswith("group\tstate\t") and plain[1].startswith("g2\tpaused\t")
    assert len(plain) == 2


def test_events_json_and_a_worker_process(
    app: str, redis_url: str, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = f"{app}:queue"
    proc = subprocess.Popen(
        [sys.executable, "-m", "kitium_queue.cli", "worker", target, "-c", "2"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([SRC, str(tmp_path)])},
    )
    try:

        async def run_one() -> Any:
            q = _queue(redis_url, prefix)
            jid = await q.add_job("double", {"n": 21})
            for _ in range(400):
                info = await q.get_job_status(jid)
                if info is not None and info.status is JobStatus.COMPLETED:
                    break
                await asyncio.sleep(0.025)
            await q.close()
            return info

        info = asyncio.run(run_one())
        assert info.status is JobStatus.COMPLETED and info.result == 42
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err

    original = JobQueue.events

    def replay_once(self: JobQueue, **kw: Any) -> Any:
        return original(self, last_id="0", block_ms=50, follow=False)

    monkeypatch.setattr(JobQueue, "events", replay_once)
    lines = _ok("events", target, "--from-start", "--json").stdout.splitlines()
    events = [json.loads(x) for x in lines]
    assert [e["event"] for e in events][:1] == ["job-added"]
    assert "job-completed" in {e["event"] for e in events}


def test_rich_tables_and_progress_and_plain_without_rich(
    app: str, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    target = f"{app}:queue"

    async def fill() -> None:
        q = _queue(redis_url, prefix)
        await q.add_jobs([("double", {"n": i, "who": "evil[bold]x\x1b[31m"}) for i in range(3)])
        await q.add_jobs([("later", {}, {"delay": 600_000}) for _ in range(3)])
        await q.close()

    asyncio.run(fill())
    table = _ok("--rich", "jobs", "list", target).stdout
    assert "┃ id" in table and "│ double" in table and "\x1b" not in table
    done = CliRunner().invoke(
        main, ["--rich", "jobs", "promote", target, "--yes"], env={"COLUMNS": "200"}
    )
    assert done.exit_code == 0 and done.stdout.strip() == "promoted 3 job(s)"
    assert "promote" in done.stderr and "3/3" in done.stderr  # the bar, on stderr
    shown = _ok("--rich", "jobs", "show", target, "1").stdout
    assert "evil[bold]x" in shown and "\x1b" not in shown  # markup not read, ESC escaped

    # On a terminal: rich tables when rich is installed, plain rows when it is not.
    block = "import sys; sys.modules['rich'] = None; "
    for code, boxed in (("", True), (block, False)):
        out = _on_a_terminal(["stats", target], tmp_path, code)
        assert ("┃" in out) is boxed and ("\t" in out) is not boxed, out
    refused = _kq(
        "--rich",
        "stats",
        target,
        cwd=tmp_path,
        code=block + "from kitium_queue.cli import main; main()",
    )
    assert refused.returncode == 2 and "needs the optional package 'rich'" in refused.stderr


def _on_a_terminal(args: list[str], cwd: Path, prelude: str) -> str:
    """What the CLI prints when its stdout is a terminal (a pseudo-terminal here)."""
    master, slave = pty.openpty()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, str(cwd)]), "COLUMNS": "160"}
    proc = subprocess.Popen(
        [sys.executable, "-c", prelude + "from kitium_queue.cli import main; main()", *args],
        cwd=cwd,
        stdout=slave,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    os.close(slave)
    chunks = []
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 30)
            if not ready:
                break
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
        proc.wait(timeout=30)
    assert proc.returncode == 0
    return b"".join(chunks).decode()


def test_shell_completion() -> None:
    runner = CliRunner()
    script = runner.invoke(
        main, [], prog_name="kitium-queue", env={"_KITIUM_QUEUE_COMPLETE": "bash_source"}
    )
    assert script.exit_code == 0 and "_kitium_queue_completion" in script.output
    words = runner.invoke(
        main,
        [],
        prog_name="kitium-queue",
        env={
            "_KITIUM_QUEUE_COMPLETE": "bash_complete",
            "COMP_WORDS": "kitium-queue jo",
            "COMP_CWORD": "1",
        },
    )
    assert words.output.split() == ["plain,job", "plain,jobs"]
    states = runner.invoke(
        main,
        [],
        prog_name="kitium-queue",
        env={
            "_KITIUM_QUEUE_COMPLETE": "bash_complete",
            "COMP_WORDS": "kitium-queue jobs list app -s d",
            "COMP_CWORD": "5",
        },
    )
    assert states.output.split() == ["plain,delayed", "plain,dlq"]


def test_metrics_json(app: str, redis_url: str, prefix: str) -> None:
    async def fill() -> None:
        q = _queue(redis_url, prefix)
        await q.add_jobs([("double", {"n": i}) for i in range(3)])
        await q.close()

    asyncio.run(fill())
    samples = json.loads(_ok("metrics", f"{app}:queue", "--json").stdout)
    got = {(s["name"], tuple(sorted(s["labels"].items()))): s["value"] for s in samples}
    assert got[("kitium_queue_up", (("queue", "cq"),))] == 1
    assert got[("kitium_queue_jobs", (("queue", "cq"), ("state", "waiting")))] == 3
    assert got[("kitium_queue_fifo_groups", (("queue", "cq"),))] == 0
