"""Compliance (issue 22): erasure by subject, redaction of named fields.

* ``erase_subject`` leaves no trace of the subject's data anywhere in Redis (every key
  read whole, by type, and DUMPed uncompressed): job records in every state, results,
  log lines, the DLQ entry, the stored exactly-once result and its key, a workflow's
  copy of a result, the subject index, events; while another subject's jobs, running
  ones included, are untouched and finish normally. A running job of the subject is
  erased at once: its worker's progress, log and outcome writes are refused and
  nothing of it comes back.
* The erasure passes the admin choke point: an audit subscriber records who erased
  (the principal) and the subject's digest, never the subject id or its data.
* Redaction: the CLI and tools (``redact_payloads``) show masked fields; with
  ``redact_everywhere`` every query and ``queue.on`` handler too; progress read from
  the event stream and JSON log lines are masked; the library's logs never hold them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from click.testing import CliRunner

from _keyspace import holding, raw_keyspace, uncompressed_dump  # noqa: F401 (fixture)
from helpers import QueueFactory, app_module, wait_for_status, wait_until
from kitium_queue import (
    ComplianceManager,
    ConfigurationError,
    JobQueue,
    JobStatus,
    LeaseLostError,
    acting_as,
)
from kitium_queue.cli import main
from kitium_queue.features.compliance import PathRedactor, subject_digest
from kitium_queue.hooks import AdminCall, Subscriber

A, B = "ALICE-7c1f", "BOB-29ad"  # markers in each subject's data
SUBJECT_A, SUBJECT_B = f"alice-{A}", f"bob-{B}"


class Audit(Subscriber):
    def __init__(self) -> None:
        self.calls: list[AdminCall] = []

    def admin(self, call: AdminCall) -> None:
        self.calls.append(call)


@pytest.mark.redis_only
@pytest.mark.usefixtures("uncompressed_dump")
async def test_erasure_leaves_no_trace_and_spares_other_subjects(
    make_queue: QueueFactory,
    prefix: str,
    redis_client: aioredis.Redis,
) -> None:
    q = make_queue(
        "gdpr",
        settings={"lock_duration": 1000, "lock_renew_time": 200},
        worker={"concurrency": 20, "scheduler": False},
        retry={"max_attempts": 1},
        advanced={
            "exactly_once": {"enabled": True},
            "fifo": {"enabled": True},
            "workflows": {"enabled": True},
            "compliance": {"enabled": True},
        },
    )
    audit = Audit()
    q.subscribe(audit)
    release = asyncio.Event()
    runs: dict[str, int] = {}
    refused: list[str] = []

    async def process(job: Any) -> Any:
        runs[job.id] = runs.get(job.id, 0) + 1
        mark = job.data["m"]
        await job.log(f"working for {mark}")
        await job.update_progress({"who": mark})
        if job.name == "fail":
            raise ValueError(f"cannot serve {mark}")
        if job.name == "hang":
            try:
                await release.wait()
            except asyncio.CancelledError:
                refused.append(job.id)  # abandoned at a renewal: its lease was gone
                raise
            try:
                await job.log(f"late line {mark}")
                await job.update_progress({"late": mark})
            except (LeaseLostError, asyncio.CancelledError):
                # Refused (fenced), or abandoned by a renewal that found the lease gone
                # while this write was under way (a loaded machine).
                refused.append(job.id)
                raise
        return {"echo": mark}

    q.process("*", process)

    def opts(subject: str) -> dict[str, Any]:
        return {"subject_id": subject}

    ids: dict[str, dict[str, str]] = {A: {}, B: {}}
    # Workflow ids and group ids are the application's names, not the subject's data:
    # neutral here (docs/compliance.md: keep personal data out of identifiers; the
    # idempotency key, per job, is erased with it and may carry it).
    names = {A: "one", B: "two"}
    await q.start()
    for mark, subject in ((A, SUBJECT_A), (B, SUBJECT_B)):
        d = {"m": mark}
        ids[mark]["completed"] = await q.add_job("ok", d, **opts(subject))
        ids[mark]["dlq"] = await q.add_job("fail", d, **opts(subject))
        ids[mark]["eo"] = await q.add_job(
            "ok",
            d,
            delivery_guarantee="exactly-once",
            idempotency_key=f"eo-{mark}",
            remove_on_complete=True,
            **opts(subject),
        )
        wf = await q.advanced.workflows.execute_workflow(
            f"wf-{names[mark]}",
            [
                {"name": "a", "job_name": "ok", "data": d, "options": opts(subject)},
                {
                    "name": "b",
                    "job_name": "hang",
                    "data": d,
                    "depends_on": ["a"],
                    "options": opts(subject),
                },
            ],
        )
        ids[mark]["wf-a"], ids[mark]["active"] = wf["a"], wf["b"]
        ids[mark]["group-head"] = await q.add_job(
            "hang", d, message_group_id=f"g-{names[mark]}", **opts(subject)
        )
    for mark in (A, B):
        await wait_for_status(q, ids[mark]["completed"], JobStatus.COMPLETED)
        await wait_for_status(q, ids[mark]["dlq"], JobStatus.DLQ)
        await wait_for_status(q, ids[mark]["active"], JobStatus.ACTIVE)
        await wait_for_status(q, ids[mark]["group-head"], JobStatus.ACTIVE)
    await q.pause()
    for mark, subject in ((A, SUBJECT_A), (B, SUBJECT_B)):
        d = {"m": mark}
        ids[mark]["waiting"] = await q.add_job("ok", d, **opts(subject))
        ids[mark]["delayed"] = await q.add_job("ok", d, delay=3_600_000, **opts(subject))
        ids[mark]["pending"] = await q.add_job(
            "ok", d, message_group_id=f"g-{names[mark]}", **opts(subject)
        )
    assert (await q.get_job_status(ids[A]["pending"])).status is JobStatus.PENDING  # type: ignore[union-attr]

    before = await raw_keyspace(redis_client, prefix)
    held_a = holding(before, A)
    # The test can fail: the marker is in records, results, logs, the DLQ reason, the
    # stored exactly-once result and its key, the workflow's copy, the index, events.
    kinds = {k.decode().split("}:", 1)[1].split(":", 1)[0] for k in held_a}
    assert {"job", "logs", "idem-r", "idem", "dep", "subj", "events", "subjects"} <= kinds, kinds

    with acting_as("dpo@acme.example"):
        report = await q.advanced.compliance.erase_subject(SUBJECT_A)
    assert report.jobs == len(ids[A]) and report.active == 2
    assert report.subject_digest == subject_digest(SUBJECT_A)

    # The subject's running jobs try to write after the erasure: refused (fenced), or
    # their run is abandoned first, at the worker's next lease renewal.
    release.set()
    await q.resume()
    for key in ("waiting", "pending", "active", "group-head"):
        await wait_for_status(q, ids[B][key], JobStatus.COMPLETED)
    # Let the abandoned runs of the erased jobs notice (a renewal or two).
    await asyncio.sleep(0.6)

    after = await raw_keyspace(redis_client, prefix)
    assert holding(after, A) == [], holding(after, A)
    assert holding(after, SUBJECT_A) == []
    assert all(runs.get(i, 0) <= 1 for i in ids[A].values()), runs
    for key in ("waiting", "delayed", "pending"):
        assert ids[A][key] not in runs
    for jid in ids[A].values():
        assert await q.get_job_status(jid) is None
    assert sorted(refused) == sorted([ids[A]["active"], ids[A]["group-head"]])

    # The other subject is untouched, running jobs included.
    b_after = holding(after, B)
    assert len(b_after) >= len(holding(before, B)) - 1  # its stream entries only grew
    expect = {
        "completed": JobStatus.COMPLETED,
        "dlq": JobStatus.DLQ,
        "wf-a": JobStatus.COMPLETED,
        "active": JobStatus.COMPLETED,
        "group-head": JobStatus.COMPLETED,
        "waiting": JobStatus.COMPLETED,
        "pending": JobStatus.COMPLETED,
        "delayed": JobStatus.DELAYED,
    }
    for key, status in expect.items():
        info = await q.get_job_status(ids[B][key])
        assert info is not None and info.status is status, (key, info)
        assert info.data == {"m": B}
    stored = await q.advanced.exactly_once.get_result(f"eo-{B}")
    assert stored is not None and stored.result == {"echo": B}
    assert await q.get_job_logs(ids[B]["completed"]) == [f"working for {B}"]
    assert sorted(await q.advanced.compliance.subject_jobs(SUBJECT_B)) == sorted(ids[B].values())

    # Audited through the admin choke point: who, and a digest, never the data.
    (call,) = [c for c in audit.calls if c.command == "erase_subject"]
    assert call.principal == "dpo@acme.example" and call.error is None
    assert call.args == {"subject_digest": subject_digest(SUBJECT_A)}
    assert call.result["jobs"] == len(ids[A])
    assert A not in repr(call) and SUBJECT_A not in repr(call)


async def test_erasure_is_refused_by_a_guard_and_audited(make_queue: QueueFactory) -> None:
    q = make_queue("guarded", advanced={"compliance": {"enabled": True}})
    audit = Audit()
    q.subscribe(audit)
    jid = await q.add_job("n", {"m": A}, subject_id=SUBJECT_A)

    def deny(call: AdminCall) -> None:
        if call.command == "erase_subject" and call.principal != "dpo":
            from kitium_queue import PermissionDeniedError

            raise PermissionDeniedError(f"{call.principal} may not erase")

    q.admin.add_guard(deny)
    with acting_as("intern"), pytest.raises(Exception, match="intern may not erase"):
        await q.advanced.compliance.erase_subject(SUBJECT_A)
    assert await q.get_job_status(jid) is not None
    with acting_as("dpo"):
        report = await q.advanced.compliance.erase_subject(SUBJECT_A)
    assert report.jobs == 1 and await q.get_job_status(jid) is None
    assert [(c.principal, c.error is None) for c in audit.calls] == [
        ("intern", False),
        ("dpo", True),
    ]


async def test_erasure_of_an_unknown_subject_and_bad_ids(make_queue: QueueFactory) -> None:
    q = make_queue("unknown", advanced={"compliance": {"enabled": True}})
    keep = await q.add_job("n", {"x": 1}, subject_id="someone")
    report = await q.advanced.compliance.erase_subject("nobody")
    assert report.jobs == 0 and report.active == 0
    assert await q.get_job_status(keep) is not None
    for bad in ("", "a\x00b", "\ud800", "x" * 300, 5, None):
        with pytest.raises(ConfigurationError):
            await q.advanced.compliance.erase_subject(bad)  # type: ignore[arg-type]
        if bad is not None:  # None leaves the option unset
            with pytest.raises(ConfigurationError):
                await q.add_job("n", {}, subject_id=bad)
    # Glob and brace characters are plain text in a subject id: only that subject goes.
    for odd in ("*", "a*", "{x}", "[ab]", "a?c"):
        await q.add_job("n", {}, subject_id=odd)
    await q.advanced.compliance.erase_subject("*")
    assert sorted(await q.advanced.compliance.subject_jobs("a*")) != []
    assert await q.advanced.compliance.subject_jobs("*") == []
    assert await q.get_job_status(keep) is not None


async def test_subject_option_needs_the_feature(make_queue: QueueFactory) -> None:
    q = make_queue("plain")
    with pytest.raises(ConfigurationError, match=r"needs compliance .* ComplianceManager"):
        await q.add_job("n", {}, subject_id="u")


async def test_erasure_picks_up_jobs_deleted_the_ordinary_way(make_queue: QueueFactory) -> None:
    """An exactly-once job removed at completion leaves its result under its key: the
    subject index still names it, so the erasure deletes that result too; the index's
    garbage collection keeps such entries until the key is gone."""
    q = make_queue(
        "eo",
        advanced={"exactly_once": {"enabled": True}, "compliance": {"enabled": True}},
    )
    q.process("n", lambda job: {"r": job.data["m"]})
    jid = await q.add_job(
        "n",
        {"m": A},
        delivery_guarantee="exactly-once",
        idempotency_key="k-1",
        remove_on_complete=True,
        subject_id=SUBJECT_A,
    )
    plain = await q.add_job("n", {"m": A}, remove_on_complete=True, subject_id=SUBJECT_A)
    await q.start()
    await wait_until(lambda: q.advanced.exactly_once.get_result("k-1"))
    await wait_until(lambda: _gone(q, plain))
    assert await q.get_job_status(jid) is None
    # GC: the plain job's entry goes (nothing left of it), the exactly-once one stays
    # (the retention service's first pass may have dropped it already).
    assert sorted(await q.advanced.compliance.subject_jobs(SUBJECT_A)) in (
        [jid],
        sorted([jid, plain]),
    )
    assert await q.advanced.compliance.collect_garbage() in (0, 1)
    assert await q.advanced.compliance.subject_jobs(SUBJECT_A) == [jid]
    report = await q.advanced.compliance.erase_subject(SUBJECT_A)
    assert report.jobs == 1
    assert await q.advanced.exactly_once.get_result("k-1") is None
    client = await q.client()
    assert await client.exists(q.keys.idempotency("k-1")) == 0


async def _gone(q: JobQueue, jid: str) -> bool:
    return await q.get_job_status(jid) is None


# ---------------------------------------------------------------------------- redaction
def test_path_redactor() -> None:
    r = PathRedactor(["user.email", "items.*.card", "**.password", "top"])
    value = {
        "user": {"email": "a@b", "name": "n"},
        "items": [{"card": "4111", "sku": 1}, {"card": {"n": 2}}],
        "deep": {"x": [{"password": "p1"}], "password": "p2"},
        "password": "p3",
        "top": [1, 2],
        "email": "kept",
    }
    out = r(value)
    assert out == {
        "user": {"email": "***", "name": "n"},
        "items": [{"card": "***", "sku": 1}, {"card": "***"}],
        "deep": {"x": [{"password": "***"}], "password": "***"},
        "password": "***",
        "top": "***",
        "email": "kept",
    }
    assert value["user"]["email"] == "a@b"  # the original is unchanged
    assert r("plain") == "plain" and r(None) is None and r([1]) == [1]
    assert PathRedactor(["**"])({"a": {"b": 1}}) == {"a": "***"}
    deep: Any = {"k": 1}
    for _ in range(200):
        deep = {"d": deep}
    assert "***" in json.dumps(PathRedactor(["**.k"])(deep))


@pytest.fixture
def app(tmp_path: Path, redis_url: str, prefix: str) -> Iterator[str]:
    source = (
        "from kitium_queue import JobQueue\n"
        f"queue = JobQueue('red', redis={redis_url!r}, prefix={prefix!r},\n"
        "    advanced={'compliance': {'enabled': True,\n"
        "        'redact_fields': ['user.email', '**.card']}})\n"
    )
    with app_module(tmp_path, source, "kq_cli_red") as module:
        yield f"{module}:queue"


async def test_redaction_in_the_cli_queries_events_and_logs(
    app: str, redis_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="kitium_queue")
    q = JobQueue(
        "red",
        redis=redis_url,
        prefix=prefix,
        retry={"max_attempts": 1},
        advanced={"compliance": {"enabled": True, "redact_fields": ["user.email", "**.card"]}},
    )
    got: list[Any] = []
    q.on("job-completed", lambda ev: got.append(ev.result))

    async def process(job: Any) -> Any:
        await job.update_progress({"card": A, "step": 1})
        await job.log(json.dumps({"user": {"email": A}, "note": "ok"}))
        if job.data.get("fail"):
            raise ValueError("declined")
        return {"user": {"email": A}, "card": A, "ok": True}

    q.process("pay", process)
    jid = await q.add_job("pay", {"user": {"email": A, "id": 1}, "card": A})
    bad = await q.add_job("pay", {"user": {"email": A}, "fail": True})
    await q.start()
    info = await wait_for_status(q, jid, JobStatus.COMPLETED)
    await wait_for_status(q, bad, JobStatus.DLQ)
    # The application itself sees the data (redact_everywhere is off).
    assert info.data["user"]["email"] == A and got == [info.result]
    assert (await q.get_job_logs(jid))[0].count(A) == 1
    # Tools showing jobs to people: masked.
    out = await asyncio.to_thread(CliRunner().invoke, main, ["job", app, jid])
    assert out.exit_code == 0, out.output
    shown = json.loads(out.stdout)
    assert shown["data"] == {"user": {"email": "***", "id": 1}, "card": "***"}
    assert shown["result"] == {"user": {"email": "***"}, "card": "***", "ok": True}
    assert shown["progress"] == {"card": "***", "step": 1}
    assert A not in out.output
    q.ctx.redact_payloads = True
    assert json.loads((await q.get_job_logs(jid))[0]) == {"user": {"email": "***"}, "note": "ok"}
    q.ctx.redact_payloads = False
    # Progress read back from the event stream is masked.
    progress = [
        ev.fields["progress"]
        async for ev in q.events(last_id="0", follow=False)
        if ev.event == "job-progress"
    ]
    assert progress and all(A not in p for p in progress)
    assert json.loads(progress[0]) == {"card": "***", "step": 1}
    await q.close()
    # The library's own logs never carried the data (they did log the run's failure).
    assert any("declined" in r.getMessage() for r in caplog.records)
    assert all(A not in r.getMessage() for r in caplog.records)


async def test_redact_everywhere(make_queue: QueueFactory) -> None:
    q = make_queue(
        "everywhere",
        advanced={
            "compliance": {"enabled": True, "redact_fields": ["secret"], "redact_everywhere": True}
        },
    )
    results: list[Any] = []
    progress: list[Any] = []
    q.on("job-completed", lambda ev: results.append(ev.result))
    q.on("job-progress", lambda ev: progress.append(ev.progress))

    async def process(job: Any) -> Any:
        assert job.data["secret"] == A  # the processor itself gets the data
        await job.update_progress({"secret": A})
        return {"secret": A, "n": 1}

    q.process("n", process)
    jid = await q.add_job("n", {"secret": A})
    await q.start()
    info = await wait_for_status(q, jid, JobStatus.COMPLETED)
    assert info.data == {"secret": "***"} and info.result == {"secret": "***", "n": 1}
    await wait_until(lambda: results and progress)
    assert results == [{"secret": "***", "n": 1}] and progress == [{"secret": "***"}]


async def test_compliance_manager_by_hand(make_queue: QueueFactory) -> None:
    q = make_queue("byhand")
    m = ComplianceManager(q, retention={"completed": 1000}, redact_fields=["a"])
    assert ComplianceManager.for_queue(q) is m
    with pytest.raises(ConfigurationError, match="already has a ComplianceManager"):
        ComplianceManager(q)
    with pytest.raises(ConfigurationError, match="unknown state"):
        ComplianceManager(make_queue("other"), retention={"done": 5})
    assert m.to_dict()["retention_periods_ms"] == {"completed": 1000}
