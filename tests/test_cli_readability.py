"""What the command line says, read by a person: four texts that were hard to read or
misleading, each against a real Redis through the CLI's ``main()``.

* ``events``: a field with spaces printed every space as ``\\x20``
  (``reason=LookupError:\\x20no\\x20processor...``). Values are now logfmt style:
  bare when plain, else double-quoted with ``"`` escaped; still no value forges a pair.
* A malformed Redis URL without credentials had its port masked
  (``Port could not be cast to integer value as '***'`` for ``host:6380 /0``), hiding
  the stray space the parser complains of; a port number hides nothing and is shown.
* ``result APP ID`` of an unknown id printed ``... record for<TAB>ID``.
* ``groups show APP G`` of a group nobody knows exited 0 with a table of zeros;
  ``groups pause APP G`` of a group with no jobs pauses it ahead (kept, documented in
  docs/groups.md) and now says that the group has no jobs yet.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from helpers import app_module, wait_until
from kitium_queue import ConfigurationError, JobQueue
from kitium_queue.cli import main
from kitium_queue.cli.base import cell
from kitium_queue.features.groups import FIFOQueueManager

pytestmark = pytest.mark.redis_only

NAME = "readable"


@pytest.fixture
def app(tmp_path: Path, redis_url: str, prefix: str) -> Iterator[str]:
    source = (
        "from kitium_queue import IdempotencyManager, JobQueue\n"
        "from kitium_queue.features.groups import FIFOQueueManager\n"
        f"queue = JobQueue({NAME!r}, redis={redis_url!r}, prefix={prefix!r})\n"
        "fifo = FIFOQueueManager(queue)\n"
        "idem = IdempotencyManager(queue)\n"
    )
    with app_module(tmp_path, source, "kq_cli_readable") as module:
        yield f"{module}:queue"


def _queue(redis_url: str, prefix: str) -> JobQueue:
    q = JobQueue(NAME, redis=redis_url, prefix=prefix)
    FIFOQueueManager(q)
    return q


# ------------------------------------------------------------------ events: logfmt pairs

#: A bare key or value: printable ASCII but space, '"', '=' and '\'.
_BARE = re.compile(r"[!#-<>-\[\]-~]+")


def _logfmt(text: str) -> list[tuple[str, str]]:
    """The ``k=v`` pairs of ``text``, read strictly: a part is bare (printable ASCII
    but space, ``=``, ``"``, ``\\``) or double-quoted, where a backslash starts a
    two-character escape and only ``\\"`` is undone (the rest is ``cell``'s escaping,
    kept). Fails on anything else, so a forged or broken pair cannot pass."""
    pairs: list[tuple[str, str]] = []
    pos = 0

    def part() -> str:
        nonlocal pos
        if text[pos : pos + 1] != '"':
            m = _BARE.match(text, pos)
            assert m is not None, (text, pos)
            pos = m.end()
            return m.group()
        out: list[str] = []
        pos += 1
        while True:
            ch = text[pos]
            if ch == '"':
                pos += 1
                return "".join(out)
            if ch == "\\":
                nxt = text[pos + 1]
                out.append('"' if nxt == '"' else ch + nxt)
                pos += 2
                continue
            out.append(ch)
            pos += 1

    while pos < len(text):
        if pairs:
            assert text[pos] == " ", (text, pos)
            pos += 1
        key = part()
        assert text[pos] == "=", (text, pos)
        pos += 1
        pairs.append((key, part()))
    return pairs


def _event_lines(app: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """``events APP --from-start``, reading what the stream holds and stopping."""
    original = JobQueue.events

    def replay_once(self: JobQueue, **kw: Any) -> Any:
        return original(self, last_id=kw.get("last_id", "0"), block_ms=50, follow=False)

    monkeypatch.setattr(JobQueue, "events", replay_once)
    got = CliRunner().invoke(main, ["--plain", "events", app, "--from-start"])
    assert got.exit_code == 0, got.output
    return got.stdout.splitlines()


def test_events_fields_are_readable_and_cannot_forge_pairs(
    app: str, redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    hand_written = {
        "reason": 'a b=c "q" \\ end\nFAKE\tROW\x1b[2J',
        "k ey": "v",
        "forge": "x extra=1",
        "quote": 'tail\\"',  # a backslash before a quote: neither may end the value
        "empty": "",
        "nbsp": "a\u00a0b\uff1dc",  # a look-alike space and '='
        "plain": "ok-1.5:x/y",
    }

    async def go() -> str:
        async with _queue(redis_url, prefix) as q:
            q.process("known")(lambda job: None)
            jid = await q.add_job("nohandler", {}, attempts=1)
            await q.start(concurrency=1)

            async def failed() -> bool:
                info = await q.get_job_status(jid)
                return info is not None and info.status.value in ("failed", "dlq")

            await wait_until(failed, 10)
            await q.worker.stop()
            client = await q.client()
            await client.xadd(q.keys.events, {"e": "job-failed", "id": "hand", **hand_written})
            return jid

    jid = asyncio.run(go())
    lines = _event_lines(app, monkeypatch)
    assert "\\x20" not in "\n".join(lines)
    pairs_of: dict[str, dict[str, str]] = {}
    for line in lines:
        columns = line.split("\t")
        assert len(columns) == 4, line
        if columns[1] == "job-failed":
            pairs = _logfmt(columns[3])
            assert len({k for k, _ in pairs}) == len(pairs), line
            pairs_of[columns[2]] = dict(pairs)
    # A real failure reads as written: spaces as spaces, inside quotes.
    reason = pairs_of[jid]["reason"]
    assert reason.startswith("LookupError: no processor"), reason
    assert f'reason="{reason}"' in next(ln for ln in lines if f"job-failed\t{jid}\t" in ln)
    # The hand-written entry: exactly its own pairs, each value as ``cell`` shows it.
    assert pairs_of["hand"] == {cell(k): cell(v) for k, v in hand_written.items()}
    hand = next(ln for ln in lines if "\thand\t" in ln)
    assert "plain=ok-1.5:x/y" in hand and 'empty=""' in hand
    assert ' "k ey"=v ' in hand and "\x1b" not in hand


# ------------------------------------------------------------------ URLs: ports shown

S = "S3cr3tQx"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6380 /0", "'6380 '"),
        ("redis://127.0.0.1:6380/x", "redis://127.0.0.1:6380/x"),
        ("redis://myhost:6380/0?socket_timeout=abc", "redis://myhost:6380/0"),
        ("redis://[::1]:6380 /0", "'6380 '"),
    ],
)
def test_a_malformed_url_shows_its_port(url: str, shown: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        JobQueue("r-port", redis=url)
    assert shown in str(info.value) and "***" not in str(info.value), info.value


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        (f"redis://:{S}", S),  # the '@' forgotten: a password where the port goes
        (f"redis://127.0.0.1:{S}/0", S),
        (f"redis://127.0.0.1:6380:{S}/0", S),
        (f"redis://127.0.0.1:{S} /0", S),
        ("redis://:123456789/0", "123456789"),  # digits, but too many for a port
        ("redis://h:6380 12/0", "6380 12"),
    ],
)
def test_what_may_be_a_password_stays_masked(url: str, secret: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        JobQueue("r-port", redis=url)
    assert secret not in str(info.value) and "***" in str(info.value), info.value


def test_the_cli_names_the_stray_space_of_a_redis_url(app: str) -> None:
    got = CliRunner().invoke(main, ["stats", app, "--redis", "redis://127.0.0.1:6380 /0"])
    assert got.exit_code != 0
    assert "'6380 '" in got.output and "***" not in got.output, got.output


# ------------------------------------------------------------------ result of an unknown id


def test_result_of_an_unknown_id_reads_as_a_sentence(app: str) -> None:
    got = CliRunner().invoke(main, ["result", app, "11"])
    assert got.exit_code == 1
    assert got.stderr == f"no completed job or execution record for '11' in queue '{NAME}'\n"
    # A key that would colour or reorder the terminal stays escaped, in the sentence.
    odd = CliRunner().invoke(main, ["result", app, "a\u202eb"])
    assert odd.exit_code == 1, odd.output
    assert "record for 'a\\u202eb' in queue" in odd.stderr and "\u202e" not in odd.stderr


# ------------------------------------------------------------------ groups: show, pause


def test_groups_show_of_an_unknown_group_exits_1(app: str, redis_url: str, prefix: str) -> None:
    runner = CliRunner()
    for extra in ([], ["--json"]):
        got = runner.invoke(main, ["groups", "show", app, "nope", *extra])
        assert got.exit_code == 1, got.output
        assert f"group 'nope' not found in queue '{NAME}'" in got.output
        assert not got.stdout

    async def add() -> None:
        async with _queue(redis_url, prefix) as q:
            await q.add_job("n", {}, message_group_id="known", delay=60_000)

    asyncio.run(add())
    shown = runner.invoke(main, ["groups", "show", app, "known", "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["size"] == 1


def test_pausing_a_group_with_no_jobs_says_so_and_is_kept(
    app: str, redis_url: str, prefix: str
) -> None:
    runner = CliRunner()
    got = runner.invoke(main, ["groups", "pause", app, "later"])
    assert got.exit_code == 0, got.output
    assert got.stdout == "paused\tlater\n"
    assert "group 'later' has no jobs yet" in got.stderr and "resumed" in got.stderr
    as_json = runner.invoke(main, ["groups", "pause", app, "later", "--json"])
    assert json.loads(as_json.stdout) == {"action": "paused", "group": "later"}
    assert "has no jobs yet" in as_json.stderr
    top = runner.invoke(main, ["pause", app, "--group", "later"])
    assert top.exit_code == 0 and "has no jobs yet" in top.stderr, top.output
    # A pause ahead is kept: shown, and the group's first job waits for the resume.
    shown = runner.invoke(main, ["groups", "show", app, "later", "--json"])
    assert shown.exit_code == 0 and json.loads(shown.stdout)["paused"] is True

    async def first_job_waits() -> None:
        async with _queue(redis_url, prefix) as q:
            await q.add_job("n", {}, message_group_id="later")
            stats = await FIFOQueueManager.for_queue(q).get_group_stats("later")
            assert stats.paused and stats.size == 1 and stats.waiting == 1

    asyncio.run(first_job_waits())
    # A group with jobs: no note.
    again = runner.invoke(main, ["groups", "pause", app, "later"])
    assert again.exit_code == 0 and again.stdout == "paused\tlater\n" and not again.stderr
    assert not runner.invoke(main, ["pause", app, "--group", "later"]).stderr
