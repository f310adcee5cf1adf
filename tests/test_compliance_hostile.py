"""Compliance, retention and redaction under hostile or damaged input.

Each test pins one defect found by probing the feature with bad input:

* an erasure by subject leaves a later job alone that reused an erased job's id (its
  index entry was stale), and the index's garbage collection drops such entries;
* a subject id is never shown back in an error (it is personal data), from the API or
  the CLI, and the CLI checks it before loading anything or asking;
* a damaged subject index neither stops the retention pass (garbage collection) nor
  lets an erasure report success silently;
* erasing a running job whose state field is damaged still gives back its FIFO
  group's turn, so the group's next job runs;
* a ``ComplianceManager`` built by hand with a bad retention setting installs nothing
  (no period half applied to the queue's retention rules) and says what is wrong;
* JSON nested deeper than any payload neither breaks a redacted read of the job's log
  nor carries a field past the redactor.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import redis.asyncio as aioredis
from click.testing import CliRunner

from helpers import QueueFactory, wait_for_status
from kitium_queue import ComplianceManager, ConfigurationError, JobQueue, JobStatus
from kitium_queue.cli import main
from kitium_queue.errors import KitiumQueueError
from kitium_queue.features.compliance import PathRedactor
from kitium_queue.features.retention import Retention

pytestmark = pytest.mark.redis_only

SECRET = "ann@example.com"


def _compliance(make_queue: QueueFactory, name: str, **extra: Any) -> JobQueue:
    advanced = {"compliance": {"enabled": True, **extra.pop("compliance", {})}}
    advanced.update(extra.pop("advanced", {}))
    return make_queue(name, advanced=advanced, **extra)


async def test_erasure_spares_a_later_job_that_reused_the_id(make_queue: QueueFactory) -> None:
    q = _compliance(make_queue, "reuse")
    m = q.advanced.compliance
    # Without a window (job_id_window=False), the ids are free again once removed.
    old = await q.add_job(
        "n", {"m": "alice"}, job_id="order-1", subject_id="alice", job_id_window=False
    )
    assert await q.remove_job(old)
    # The id is free again: another subject's job, and a job without a subject, take it.
    await q.add_job("n", {"m": "bob"}, job_id="order-1", subject_id="bob")
    await q.add_job("n", {"m": "carol"}, job_id="order-2", subject_id="carol", job_id_window=False)
    assert await q.remove_job("order-2")
    await q.add_job("n", {"m": "plain"}, job_id="order-2")

    report = await m.erase_subject("alice")
    assert (report.jobs, report.events) == (0, 0)
    info = await q.get_job_status("order-1")
    assert info is not None and info.data == {"m": "bob"}
    assert await m.subject_jobs("bob") == ["order-1"]
    assert await m.subject_jobs("alice") == []
    # The garbage collection drops the stale entry too, and keeps bob's.
    assert await m.collect_garbage() == 1
    assert await m.subject_jobs("carol") == []
    info = await q.get_job_status("order-2")
    assert info is not None and info.data == {"m": "plain"}
    # Bob's own erasure still erases his job.
    assert (await m.erase_subject("bob")).jobs == 1
    assert await q.get_job_status("order-1") is None


async def test_subject_id_is_never_shown_back_in_errors(
    make_queue: QueueFactory, cli_app: str
) -> None:
    q = _compliance(make_queue, "echo")
    m = q.advanced.compliance
    for bad in (SECRET + "\n", SECRET + "\x1b[31m", SECRET + "\ud800", SECRET * 20):
        for call in (m.erase_subject(bad), m.subject_jobs(bad)):
            with pytest.raises(ConfigurationError) as got:
                await call
            assert "ann@" not in str(got.value), got.value
        with pytest.raises(ConfigurationError) as got:
            await q.add_job("n", {}, subject_id=bad)
        assert "ann@" not in str(got.value), got.value
    with pytest.raises(ConfigurationError, match="control character"):
        await m.erase_subject(SECRET + "\t")

    # The CLI checks the id first (nothing loaded, nothing asked) and never prints it.
    runner = CliRunner()
    for args in (
        ["compliance", "erase", "no_such_module:queue", SECRET + "\n"],
        ["compliance", "jobs", "no_such_module:queue", SECRET + "\x1b[2J"],
        ["compliance", "erase", cli_app, SECRET + "\udcff", "--yes"],
    ):
        out = await asyncio.to_thread(runner.invoke, main, args)
        assert out.exit_code == 2, out.output
        assert "ann@" not in out.output and "\x1b" not in out.output, out.output
        assert "subject_id must be" in out.output


async def test_a_damaged_subject_index_stops_neither_gc_nor_erasure_silently(
    make_queue: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q = _compliance(make_queue, "damaged", compliance={"retention": {"completed": 60_000}})
    m = q.advanced.compliance
    gone = await q.add_job("n", {}, subject_id="zed")
    assert await q.remove_job(gone)
    # Damaged by hand: an index of another type, and a subject name that is not UTF-8.
    await redis_client.zadd(q.keys.extra("subjects"), {"aaa": 1, b"\xff\xfe": 1})
    await redis_client.set(q.keys.extra("subj:aaa"), "garbage")
    await redis_client.hset(q.keys.extra("subj:").encode() + b"\xff\xfe", "x", "")

    await Retention.for_queue(q).run_once()  # the pass (and its GC) completes
    assert await m.subject_jobs("zed") == []
    assert await redis_client.exists(q.keys.extra("subj:").encode() + b"\xff\xfe") == 0
    assert await redis_client.get(q.keys.extra("subj:aaa")) == b"garbage"  # left as it was

    with pytest.raises(KitiumQueueError, match="not a hash") as got:
        await m.erase_subject("aaa")
    assert "aaa" not in str(got.value)
    assert await redis_client.get(q.keys.extra("subj:aaa")) == b"garbage"
    # A damaged 'subjects' key: the pass still completes.
    await redis_client.delete(q.keys.extra("subjects"))
    await redis_client.set(q.keys.extra("subjects"), "garbage")
    assert await m.collect_garbage() == 0
    await Retention.for_queue(q).run_once()


async def test_erasing_a_running_job_with_a_damaged_state_frees_its_group(
    make_queue: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q = _compliance(
        make_queue,
        "group",
        settings={"lock_duration": 1000, "lock_renew_time": 200},
        worker={"concurrency": 4, "scheduler": False},
        advanced={"fifo": {"enabled": True}},
    )
    gate = asyncio.Event()

    async def process(job: Any) -> Any:
        if job.data.get("hang"):
            await gate.wait()
        return 1

    q.process("n", process)
    await q.start()
    head = await q.add_job("n", {"hang": True}, message_group_id="g", subject_id="alice")
    await wait_for_status(q, head, JobStatus.ACTIVE)
    nxt = await q.add_job("n", {}, message_group_id="g", subject_id="bob")
    await wait_for_status(q, nxt, JobStatus.PENDING)
    await redis_client.hset(q.keys.job(head), "st", "bogus")

    report = await q.advanced.compliance.erase_subject("alice")
    assert (report.jobs, report.active) == (1, 1)
    await wait_for_status(q, nxt, JobStatus.COMPLETED)
    gate.set()


async def test_bad_retention_by_hand_installs_nothing(make_queue: QueueFactory) -> None:
    q = make_queue("byhand")
    with pytest.raises(ConfigurationError, match="failed retention period"):
        ComplianceManager(q, retention={"completed": 1000, "failed": "x"})
    # Nothing was installed: no retention rules, no period applied to completed jobs.
    assert Retention.of(q) is None
    cases: list[tuple[Any, str]] = [
        ("completed", "must be a dict"),
        ([("completed", 5)], "must be a dict"),
        (5, "must be a dict"),
        ({1: 5, "x": 2}, "unknown state"),
        ({"completed": float("nan")}, "completed retention period"),
        ({"dlq": True}, "dlq retention period"),
        ({"dlq": -1}, "dlq retention period"),
    ]
    for bad, message in cases:
        with pytest.raises(ConfigurationError, match=message):
            ComplianceManager(q, retention=bad)
        assert Retention.of(q) is None
    with pytest.raises(ConfigurationError, match="interval_ms"):
        ComplianceManager(q, interval_ms=float("inf"))
    assert Retention.of(q) is None
    m = ComplianceManager(q, retention={"completed": 1000, "failed": None})
    assert m.to_dict()["retention_periods_ms"] == {"completed": 1000}


async def test_deep_json_neither_breaks_nor_bypasses_redaction(make_queue: QueueFactory) -> None:
    q = _compliance(make_queue, "deep", compliance={"redact_fields": ["**.password"]})
    secret = {"password": "s3cret"}
    lines = [
        "[" * 300 + json.dumps(secret) + "]" * 300,  # deeper than JSON is written back
        "[" * 600 + json.dumps(secret) + "]" * 600,  # deeper than a Python walk goes
        "[" * 1100 + json.dumps(secret) + "]" * 1100,  # deeper than JSON is read
        json.dumps(secret),
        "[not json",
    ]

    async def process(job: Any) -> Any:
        for line in lines:
            await job.log(line)
        return 1

    q.process("n", process)
    jid = await q.add_job("n", {})
    await q.start()
    await wait_for_status(q, jid, JobStatus.COMPLETED)
    q.ctx.redact_payloads = True
    shown = await q.get_job_logs(jid)
    assert shown[:3] == ["***", "***", "***"]
    assert json.loads(shown[3]) == {"password": "***"} and shown[4] == "[not json"
    assert all("s3cret" not in line for line in shown)

    deep: Any = secret
    for _ in range(5000):
        deep = {"d": [deep]}
    assert "s3cret" not in repr(PathRedactor(["**.password"])(deep))


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("items[0].card", "brackets"),
        ("items[*].card", "brackets"),
        ("$.user['email']", "brackets"),
        ("user.e*", "'*' inside a name"),
        ("**password", "'*' inside a name"),
    ],
)
def test_a_path_that_would_silently_match_nothing_is_refused(
    make_queue: QueueFactory, path: str, why: str
) -> None:
    # Before: accepted, and the field it meant was shown unmasked everywhere.
    with pytest.raises(ConfigurationError, match=why):
        PathRedactor([path])
    with pytest.raises(ConfigurationError, match=why):
        _compliance(make_queue, "p", compliance={"redact_fields": ["user.email", path]})
    # The spelling the message suggests works.
    card = {"items": [{"card": "4111"}], "user": {"email": "a@b.c"}}
    assert PathRedactor(["items.*.card", "user.*"])(card) == {
        "items": [{"card": "***"}],
        "user": {"email": "***"},
    }
