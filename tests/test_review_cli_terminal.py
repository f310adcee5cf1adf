"""The command line's text output against job records written by hand: terminal
escapes, markup and megabytes.

Each field of text output is escaped and bounded (``cli.base.cell``, at most
``MAX_FIELD_CHARS``), and each block of ``jobs show`` (data, result, traceback, logs)
shows at most ``MAX_BLOCK_CHARS`` characters; ``--json`` keeps every value whole.

Once wrong: a failure reason of 1 MB printed 1 MB per row of ``jobs list`` and ``dlq
list``; ``jobs show`` printed a 50 MB payload whole (and with ``--rich`` spent minutes
laying it out in a panel).
"""

from __future__ import annotations

import asyncio
import json
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from helpers import app_module
from kitium_queue import JobQueue
from kitium_queue.cli import main
from kitium_queue.cli.base import MAX_FIELD_CHARS, cell
from kitium_queue.cli.output import MAX_BLOCK_CHARS
from kitium_queue.cli.queue import _pair_part

pytestmark = pytest.mark.redis_only

#: An OSC 52 clipboard write, a screen clear, a cursor move, a C1 CSI, NUL, a bidi
#: override, a line break, and rich markup (a style and a link).
HOSTILE = (
    "a\x1b]52;c;ZXZpbA==\x07b\x1b[2J\x1b[10;1H\x9b31m\x00\u202e\nc"
    "[bold red]X[/bold red][link=https://evil.example]y[/link]"
)
MB = 1_000_000


@pytest.fixture
def app(tmp_path: Path, redis_url: str, prefix: str) -> Iterator[str]:
    source = (
        "from kitium_queue import JobQueue\n"
        f"queue = JobQueue('term', redis={redis_url!r}, prefix={prefix!r})\n"
    )
    with app_module(tmp_path, source, "kq_cli_term") as module:
        yield f"{module}:queue"


def _run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def _controls(text: str) -> list[str]:
    """The control, format (bidi) and separator characters of ``text`` other than the
    line breaks and tabs that separate its lines and columns."""
    return [
        c
        for c in text
        if c not in "\n\t" and unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp")
    ]


def _plant(redis_url: str, prefix: str, fields: dict[str, object], n: int = 1) -> list[str]:
    """``n`` failed jobs whose hash has ``fields`` written over what the queue wrote,
    also in the DLQ; their ids."""

    async def go() -> list[str]:
        q = JobQueue("term", redis=redis_url, prefix=prefix)
        try:
            client = await q.client()
            ids = []
            for i in range(n):
                jid = await q.add_job("task", {"i": i}, job_id=f"j{i}")
                await client.zrem(q.keys.wait, jid)
                await client.zadd(q.keys.failed, {jid: 1_700_000_000_000 + i})
                await client.zadd(q.keys.dlq, {jid: 1_700_000_000_000 + i})
                await client.hset(
                    q.keys.job(jid),
                    mapping={"st": "failed", "a": "3", "f": str(1_700_000_000_000 + i), **fields},  # type: ignore[dict-item]
                )
                ids.append(jid)
            return ids
        finally:
            await q.close()

    return asyncio.run(go())


def test_cell_escapes_and_bounds_a_field() -> None:
    assert cell("plain") == "plain"
    shown = cell(HOSTILE * 100_000)
    assert not _controls(shown)
    assert len(shown) < MAX_FIELD_CHARS + 100
    assert shown.endswith(f"[cut, {len(HOSTILE) * 100_000:,} characters in all]")
    # A short text that escaping makes long is cut too.
    assert len(cell("\x00" * MAX_FIELD_CHARS)) < MAX_FIELD_CHARS + 100
    # The k=v pairs of ``events`` (a field of the stream written by hand) too: quoted
    # whole (it holds '=', escapes and the cut's spaces), no quote inside left bare.
    pair = _pair_part(HOSTILE * 100_000)
    assert not _controls(pair) and len(pair) < 5 * MAX_FIELD_CHARS
    assert pair[0] == pair[-1] == '"' and '"' not in pair[1:-1].replace('\\"', "")


@pytest.mark.parametrize("style", ["--plain", "--rich"])
def test_listings_cut_a_megabyte_failure_reason(
    app: str, redis_url: str, prefix: str, style: str
) -> None:
    _plant(redis_url, prefix, {"e": HOSTILE + "R" * MB, "n": HOSTILE}, n=3)
    for args in (["jobs", "list", app, "-s", "failed"], ["dlq", "list", app]):
        got = _run(style, *args)
        assert got.exit_code == 0, got.output[:2000]
        out = got.stdout
        # Three rows, each with one field cut at MAX_FIELD_CHARS (which a rich table
        # folds into a narrow column, borders and padding added): well below the 3 MB
        # of the three reasons.
        assert len(out) < 3 * 8 * MAX_FIELD_CHARS, (args, len(out))
        assert not _controls(out), _controls(out)[:10]
        if style == "--plain":  # one line per job: nothing in a value starts another
            assert len(out.splitlines()) == 3
            assert "\\x1b]52;c;" in out and "\\u202e" in out
            assert out.count("characters in all]") == 3
            assert "[bold red]X[/bold red]" in out
    # --json keeps the reason whole.
    whole = _run("jobs", "list", app, "-s", "failed", "--json")
    assert whole.exit_code == 0
    reasons = [j["failed_reason"] for j in json.loads(whole.stdout)["jobs"]]
    assert reasons == [HOSTILE + "R" * MB] * 3


@pytest.mark.parametrize("style", ["--plain", "--rich"])
def test_jobs_show_bounds_data_traceback_and_logs(
    app: str, redis_url: str, prefix: str, style: str
) -> None:
    data = json.dumps({"blob": ["x" * 100] * 30_000, "evil": HOSTILE})  # 3 MB
    (jid,) = _plant(
        redis_url,
        prefix,
        {"d": data, "e": HOSTILE * 50_000, "tb": (HOSTILE + "\n") * 50_000, "n": HOSTILE},
    )

    async def logs() -> None:
        q = JobQueue("term", redis=redis_url, prefix=prefix)
        client = await q.client()
        await client.rpush(q.keys.logs(jid), *([HOSTILE * 1000] * 30))
        await q.close()

    asyncio.run(logs())
    got = _run(style, "jobs", "show", app, jid, "--logs", "30")
    assert got.exit_code == 0, got.output[:2000]
    out = got.stdout
    # Three blocks and a few fields, each bounded: not the megabytes stored.
    assert len(out) < 4 * (MAX_BLOCK_CHARS * 2 + MAX_FIELD_CHARS), len(out)
    assert "more characters not shown (--json prints it all)" in out
    assert "more line(s) not shown (--json prints it all)" in out
    assert not _controls(out), _controls(out)[:10]
    whole = _run("jobs", "show", app, jid, "--json", "--logs", "30")
    assert whole.exit_code == 0
    doc = json.loads(whole.stdout)
    assert doc["data"]["blob"] == ["x" * 100] * 30_000
    assert doc["stacktrace"] == (HOSTILE + "\n") * 50_000
