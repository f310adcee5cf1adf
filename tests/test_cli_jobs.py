"""``kitium-queue jobs list|show|retry|remove|promote|cancel`` and ``dlq list|replay``
(issue 16, item 4): filters by name, data field, error text and age; pages that neither
repeat nor skip; bulk actions behind a confirmation; a partitioned queue's full ids."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from helpers import app_module, wait_until
from kitium_queue import JobQueue, JobStatus, NonRetryableError
from kitium_queue.cli import EXIT_ERROR, EXIT_USAGE, main
from kitium_queue.features.partitioned import PartitionedQueue

pytestmark = pytest.mark.redis_only


@pytest.fixture
def app(tmp_path: Path, redis_url: str, prefix: str) -> Iterator[str]:
    source = (
        "from kitium_queue import JobQueue\n"
        "from kitium_queue.features.partitioned import PartitionedQueue\n"
        f"queue = JobQueue('cj', redis={redis_url!r}, prefix={prefix!r})\n"
        # A factory: each command builds its own (a queue's shared client belongs to the
        # event loop of the command that used it; CliRunner runs them all in one process).
        "def parts():\n"
        f"    return PartitionedQueue('cjp', partitions=3, redis={redis_url!r}, "
        f"prefix={prefix!r})\n"
        f"one_partition = PartitionedQueue('cjp', partitions=3, redis={redis_url!r}, "
        f"prefix={prefix!r})\n"
    )
    with app_module(tmp_path, source, "kq_cli_jobs") as module:
        yield module


def _run(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=input)


def _ok(*args: str, input: str | None = None) -> Result:
    result = _run(*args, input=input)
    assert result.exit_code == 0, (result.output, result.stderr)
    return result


def _json(*args: str) -> Any:
    return json.loads(_ok(*args, "--json").stdout)


def _queue(redis_url: str, prefix: str) -> JobQueue:
    return JobQueue("cj", redis=redis_url, prefix=prefix)


def _fail_into_dlq(
    redis_url: str, prefix: str, jobs: list[tuple[str, dict[str, Any]]]
) -> list[str]:
    """Add ``jobs`` and run them to the DLQ: each fails with ``data['why']``."""

    async def go() -> list[str]:
        q = _queue(redis_url, prefix)

        async def fail(job: Any) -> None:
            await job.log(f"attempt for {job.data['why']}")
            raise NonRetryableError(job.data["why"])

        for name in {n for n, _ in jobs}:
            q.process(name, fail)
        ids = [await q.add_job(n, d) for n, d in jobs]
        await q.start(concurrency=4)
        await wait_until(lambda: _all_in(q, ids, JobStatus.DLQ), 15)
        await q.close()
        return ids

    return asyncio.run(go())


async def _all_in(q: JobQueue, ids: list[str], status: JobStatus) -> bool:
    infos = [await q.get_job_status(i) for i in ids]
    return all(i is not None and i.status is status for i in infos)


def _statuses(redis_url: str, prefix: str, ids: list[str]) -> list[str | None]:
    async def go() -> list[str | None]:
        q = _queue(redis_url, prefix)
        infos = [await q.get_job_status(i) for i in ids]
        await q.close()
        return [None if i is None else i.status.value for i in infos]

    return asyncio.run(go())


def test_list_filters_and_pages(app: str, redis_url: str, prefix: str) -> None:
    target = f"{app}:queue"

    async def fill() -> list[str]:
        q = _queue(redis_url, prefix)
        ids = await q.add_jobs(
            [
                (
                    "mail",
                    {
                        "to": f"u{i}",
                        "n": i,
                        "tier": "gold" if i % 3 == 0 else "free",
                        "user": {"id": str(i)},
                    },
                )
                for i in range(30)
            ]
        )
        ids += await q.add_jobs([("sms", {"n": i}) for i in range(5)])
        await q.close()
        return ids

    ids = asyncio.run(fill())
    first = _ok("jobs", "list", target)
    lines = first.stdout.splitlines()
    assert len(lines) == 20 and "next page: --cursor" in first.stderr
    assert lines[0].split("\t")[:4] == [ids[0], "mail", "waiting", "0/3"]

    # Pages by cursor: every job once, in order, however the pages are cut.
    seen: list[str] = []
    cursor: str | None = None
    while True:
        page = _json("jobs", "list", target, "-n", "7", *(["--cursor", cursor] if cursor else []))
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids

    # Filtered pages: the cursor points right after the last job shown.
    gold: list[str] = []
    cursor = None
    while True:
        page = _json(
            "jobs",
            "list",
            target,
            "--data",
            "tier=gold",
            "-n",
            "4",
            *(["--cursor", cursor] if cursor else []),
        )
        assert len(page["jobs"]) <= 4
        gold += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if not page["jobs"] or cursor is None:
            break
    assert gold == [ids[i] for i in range(0, 30, 3)]

    names = _json("jobs", "list", target, "--name", "sm*", "-n", "100")["jobs"]
    assert [j["id"] for j in names] == ids[30:]
    # A number on the command line matches the number and its text; nested fields.
    assert [j["id"] for j in _json("jobs", "list", target, "--data", "n=7")["jobs"]] == [ids[7]]
    assert [
        j["id"]
        for j in _json("jobs", "list", target, "--data", "user.id=12", "--data", "tier=gold")[
            "jobs"
        ]
    ] == [ids[12]]
    assert _json("jobs", "list", target, "--data", "to=u7", "--name", "sms")["jobs"] == []
    assert _json("jobs", "list", target, "--older-than", "1h")["jobs"] == []
    assert len(_json("jobs", "list", target, "--newer-than", "1h", "-n", "100")["jobs"]) == 35
    assert _json("jobs", "list", target, "-s", "delayed")["jobs"] == []
    assert "no delayed jobs match" in _ok("jobs", "list", target, "-s", "delayed").stdout

    for bad in (
        ["--older-than", "soon"],
        ["--data", "novalue"],
        ["-s", "sleeping"],
        ["-n", "0"],
        ["--cursor", "garbage"],
    ):
        result = _run("jobs", "list", target, *bad)
        assert result.exit_code == EXIT_USAGE, (bad, result.output)
        assert "Traceback" not in result.output


def test_show_a_failed_and_a_running_job(app: str, redis_url: str, prefix: str) -> None:
    target = f"{app}:queue"
    (dead,) = _fail_into_dlq(redis_url, prefix, [("bad", {"why": "card declined"})])

    async def running() -> str:
        q = _queue(redis_url, prefix)
        jid = await q.add_job("long", {"step": 1}, job_id="long-1")
        # A worker claims it under a 60 s lease (and is gone): holder and deadline.
        assert (await q.run("claim", [1, 60_000, 0, 0, 2, "1", "worker-x", 100]))[0] == b"ok"
        await q.close()
        return jid

    live = asyncio.run(running())
    text = _ok("--plain", "jobs", "show", target, dead).stdout
    rows = dict(line.split("\t", 1) for line in text.splitlines() if "\t" in line)
    assert rows["state"] == "dlq" and rows["attempts"] == "1 of 3"
    assert rows["failed reason"] == "NonRetryableError: card declined"
    assert "traceback\tTraceback (most recent call last):" in text
    assert "logs\tattempt for card declined" in text
    assert '"why": "card declined"' in text and rows["worker"] != "-"

    shown = _json("jobs", "show", target, dead)
    assert shown["status"] == "dlq" and shown["logs"] == ["attempt for card declined"]
    assert "NonRetryableError" in shown["stacktrace"] and shown["data"] == {"why": "card declined"}

    held = _json("jobs", "show", target, live)
    assert held["status"] == "active" and held["worker"] == "worker-x"
    assert held["lease_deadline"] > held["started_at"]
    text = _ok("--plain", "jobs", "show", target, live).stdout
    assert "worker\tworker-x" in text and "lease deadline\t" in text and " (in " in text

    missing = _run("jobs", "show", target, "nope")
    assert missing.exit_code == EXIT_ERROR and "job nope not found" in missing.stderr


def test_why_a_job_is_not_running(app: str, redis_url: str, prefix: str) -> None:
    target = f"{app}:queue"

    async def setup() -> tuple[str, str]:
        q = _queue(redis_url, prefix)
        later = await q.add_job("later", {}, delay=3_600_000)
        held = await q.add_job("long", {}, job_id="held-1")
        assert (await q.run("claim", [1, 60_000, 0, 0, 2, "1", "worker-x", 100]))[0] == b"ok"
        await q.close()
        return later, held

    later, held = asyncio.run(setup())
    why = _json("jobs", "why", target, later)
    codes = {r["code"]: r for r in why["reasons"]}
    assert why["status"] == "delayed" and why["blocked"] is True, why
    assert codes["delayed"]["blocking"] and codes["delayed"]["until_ms"] > why["now_ms"]
    assert "no-worker" in codes  # nobody consumes the queue
    text = _ok("--plain", "jobs", "why", target, later).stdout
    assert "held back\tyes" in text and "delayed\tyes\t" in text and " (in " in text
    leased = _json("jobs", "why", target, held)
    assert leased["status"] == "active"
    assert any("worker-x" in r["message"] for r in leased["reasons"]), leased
    missing = _run("jobs", "why", target, "nope")
    assert missing.exit_code == EXIT_ERROR and "job nope not found" in missing.stderr


def test_bulk_retry_remove_promote_cancel(app: str, redis_url: str, prefix: str) -> None:
    target = f"{app}:queue"
    dead = _fail_into_dlq(
        redis_url, prefix, [("bad-a", {"why": "a"})] * 3 + [("bad-b", {"why": "b"})] * 2
    )

    # Without --yes the bulk action asks; "n" (or no terminal) changes nothing.
    asked = _run("jobs", "retry", target, "-s", "dlq", "--name", "bad-a", input="n\n")
    assert asked.exit_code == 1 and "Retry 3 dlq job(s) (name bad-a)" in asked.stderr
    assert _statuses(redis_url, prefix, dead) == ["dlq"] * 5
    done = _ok("jobs", "retry", target, "-s", "dlq", "--name", "bad-a", input="y\n")
    assert done.stdout.strip() == "retried 3 job(s)"
    assert _statuses(redis_url, prefix, dead) == ["waiting"] * 3 + ["dlq"] * 2

    # Ids: one retried, one that cannot be (waiting), one unknown: exit 1, said which.
    mixed = _run("jobs", "retry", target, dead[3], dead[0], "x-404", "--json")
    assert mixed.exit_code == 1
    report = json.loads(mixed.stdout)
    assert report["done"] == [dead[3]] and {f["id"] for f in report["failed"]} == {dead[0], "x-404"}

    assert _run("jobs", "remove", target).exit_code == EXIT_USAGE  # no ids, no state
    both = _run("jobs", "remove", target, dead[0], "-s", "waiting")
    assert both.exit_code == EXIT_USAGE and "not both" in both.output
    removed = _json("jobs", "remove", target, "-s", "waiting", "--name", "bad-*", "--yes")
    assert sorted(removed["done"]) == sorted(dead[:4]) and removed["failed"] == []
    assert _statuses(redis_url, prefix, dead) == [None] * 4 + ["dlq"]
    nothing = _ok("jobs", "remove", target, "-s", "waiting", "--yes")
    assert nothing.stdout.startswith("no waiting jobs match")

    async def delayed() -> list[str]:
        q = _queue(redis_url, prefix)
        ids = [await q.add_job("later", {"k": i}, delay=600_000) for i in range(3)]
        ids.append(await q.add_job("now", {}))
        await q.close()
        return ids

    later = asyncio.run(delayed())
    one = _json("jobs", "promote", target, "--data", "k=1", "--yes")
    assert one["done"] == [later[1]]
    assert _statuses(redis_url, prefix, later) == ["delayed", "waiting", "delayed", "waiting"]
    assert _ok("jobs", "promote", target, later[0]).stdout.strip() == "promoted 1 job(s)"
    wrong = _run("jobs", "promote", target, later[3])
    assert wrong.exit_code == 1 and "only delayed jobs can be promoted" in wrong.stderr

    cancelled = _json("jobs", "cancel", target, later[2])
    assert cancelled["done"] == [{"id": later[2], "outcome": "removed"}]
    assert _run("jobs", "cancel", target, "x-404").exit_code == EXIT_ERROR


def test_dlq_list_and_replay_by_filter(app: str, redis_url: str, prefix: str) -> None:
    target = f"{app}:queue"
    dead = _fail_into_dlq(
        redis_url,
        prefix,
        [
            ("call", {"why": "timeout talking to A"}),
            ("call", {"why": "refused by B"}),
            ("call", {"why": "Timeout again"}),
            ("other", {"why": "refused by C"}),
        ],
    )
    rows = _ok("dlq", "list", target, "--error", "TIMEOUT").stdout.splitlines()
    assert sorted(r.split("\t")[0] for r in rows) == sorted([dead[0], dead[2]])
    assert all(r.split("\t")[2] == "attempts=1" for r in rows)
    listed = _json("dlq", "list", target, "--name", "call", "--error", "refused")
    assert [j["id"] for j in listed["jobs"]] == [dead[1]]
    assert _json("dlq", "list", target, "--older-than", "1h")["jobs"] == []

    replayed = _json("dlq", "replay", target, "--error", "timeout", "--yes")
    assert sorted(replayed["done"]) == sorted([dead[0], dead[2]])
    assert _statuses(redis_url, prefix, dead) == ["waiting", "dlq", "waiting", "dlq"]
    refused = _run("dlq", "replay", target)  # no terminal to answer: nothing moves
    assert refused.exit_code == 1 and "Replay 2 dead-lettered job(s)" in refused.stderr
    assert _ok("dlq", "replay", target, "-y").stdout.strip() == "replayed 2 job(s)"
    assert _statuses(redis_url, prefix, dead) == ["waiting"] * 4
    assert _json("dlq", "replay", target, "--yes") == {
        "action": "replayed",
        "matched": 0,
        "replayed": 0,
    }


def test_a_partitioned_queue(app: str, redis_url: str, prefix: str) -> None:
    target = f"{app}:parts"

    async def fill() -> list[str]:
        q = PartitionedQueue("cjp", partitions=3, redis=redis_url, prefix=prefix)
        ids = [await q.add_job("p", {"i": i}, delay=600_000 if i % 2 else 0) for i in range(9)]
        await q.close()
        return ids

    ids = asyncio.run(fill())
    delayed = {ids[i] for i in range(1, 9, 2)}
    assert all(":" in i for i in ids)
    listed = _json("jobs", "list", target, "-s", "delayed", "-n", "2")
    assert listed["next_cursor"] == "@2"
    rest = _json("jobs", "list", target, "-s", "delayed", "--cursor", "@2")
    assert {j["id"] for j in listed["jobs"] + rest["jobs"]} == delayed
    assert _json("jobs", "show", target, ids[1])["delayed_until"] is not None
    promoted = _json("jobs", "promote", target, "--yes")
    assert set(promoted["done"]) == delayed
    stats = _json("stats", target)
    assert stats["total"]["waiting"] == 9 and len(stats["partitions"]) == 3
    assert sum(p["waiting"] for p in stats["partitions"]) == 9
    removed = _json("jobs", "remove", target, ids[0], ids[1])
    assert removed["done"] == ids[:2]
    assert _run("jobs", "show", target, "7").exit_code == EXIT_ERROR  # not a full id
    exported = json.loads(_ok("metrics", target, "--json").stdout)
    waiting = {
        s["labels"]["queue"]: s["value"]
        for s in exported
        if s["name"] == "kitium_queue_jobs" and s["labels"]["state"] == "waiting"
    }
    assert len(waiting) == 3 and sum(waiting.values()) == 7  # per partition, 2 removed

    # A group lives in one partition: pause and resume go there.
    home = PartitionedQueue("cjp", partitions=3).partition_of("cust-1")
    paused = _json("pause", target, "--group", "cust-1")
    assert paused["queue"].startswith(f"cjp#{home}") and paused["group"] == "cust-1"
    member = f"{app}:one_partition.queues.{home}"
    shown = _json("groups", "show", member, "cust-1", "--redis", redis_url)
    assert shown["paused"] is True
    assert _json("resume", target, "--group", "cust-1")["queue"] == paused["queue"]
    # Resumed there, the group (no jobs, no settings) is forgotten: no pause is left.
    gone = _run("groups", "show", member, "cust-1", "--redis", redis_url)
    assert gone.exit_code == EXIT_ERROR and "group 'cust-1' not found" in gone.stderr

    # One partition's commands: a clear usage error, and how to name a partition.
    whole = _run("schedules", "list", target)
    assert whole.exit_code == EXIT_USAGE and "queues.0" in whole.stderr
    one = _run("schedules", "list", f"{app}:one_partition.queues.1", "--redis", redis_url)
    assert one.exit_code == 0 and "no schedules in queue 'cjp#1" in one.stdout
