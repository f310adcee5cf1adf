"""``kitium-queue breakers list|show|reset|open APP`` and the README's breaker example."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from kitium_queue import CircuitBreakerManager, JobQueue
from kitium_queue.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
pytestmark = [pytest.mark.redis_only]


def _create(redis_url: str, prefix: str) -> None:
    async def go() -> None:
        q = JobQueue("cli", redis=redis_url, prefix=prefix)
        m = CircuitBreakerManager(q, events=False)
        await m.create_breaker({"id": "api", "job_name": "charge", "timeout": 60_000})
        await q.close()

    asyncio.run(go())


def test_breakers_commands(cli_app: str, redis_url: str, prefix: str) -> None:
    app = cli_app
    runner = CliRunner()
    empty = runner.invoke(main, ["breakers", "list", app])
    assert empty.exit_code == 0 and "no circuit breakers in queue 'cli'" in empty.output
    _create(redis_url, prefix)
    out = runner.invoke(main, ["breakers", "list", app])
    assert out.exit_code == 0, out.output
    assert out.output.startswith("api\tclosed\tsince=")
    assert "held=0" in out.output and "job_name=charge" in out.output

    opened = runner.invoke(
        main,
        ["breakers", "open", app, "api", "--duration", "600000", "--reason", "drill", "--json"],
    )
    assert opened.exit_code == 0, opened.output
    data = json.loads(opened.output)
    assert data["state"] == "open" and data["reason"] == "drill"
    assert data["open_until_ms"] - data["since_ms"] == 600_000

    show = runner.invoke(main, ["breakers", "show", app, "api"])
    assert show.exit_code == 0, show.output
    lines = show.output.strip().splitlines()
    assert lines[0].startswith("api\topen\t")
    assert "closed -> open\tdrill" in show.output
    shown = json.loads(runner.invoke(main, ["breakers", "show", app, "api", "--json"]).output)
    assert [(h["from"], h["to"]) for h in shown["history"]] == [("closed", "open")]

    reset = runner.invoke(main, ["breakers", "reset", app, "api"])
    assert reset.exit_code == 0 and reset.output.startswith("api\tclosed\t")
    listed = json.loads(runner.invoke(main, ["breakers", "list", app, "--json"]).output)
    assert [(b["id"], b["state"], b["transitions"]) for b in listed] == [("api", "closed", 2)]

    missing = runner.invoke(main, ["breakers", "show", app, "nope"])
    assert missing.exit_code == 1 and "no circuit breaker 'nope'" in missing.output

    # A negative history count is refused by the option itself, naming the option.
    neg = runner.invoke(main, ["breakers", "show", app, "api", "-n", "-1"])
    assert neg.exit_code == 2 and "--history" in neg.output and "limit" not in neg.output


def test_readme_example_runs(tmp_path: Path, redis_url: str) -> None:
    text = README.read_text()
    start = text.index("## Circuit breakers")
    section = text[start : text.index("\n## ", start)]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    # On the real server as well as on memory:// (its default).
    code = code.replace(
        'JobQueue("payments", ',
        f'JobQueue("payments-{uuid.uuid4().hex[:6]}", redis={redis_url!r}, ',
    )
    script = tmp_path / "breaker_example.py"
    script.write_text(code)
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines() == ["pending 0", "refused: payments-api open", "inline call 0"]
