"""Hostile and malformed input to tenancy, access control, the audit log and payload
encryption (a review's findings, each reproduced before it was fixed), against a real
Redis:

* an audit metadata key that names a secret past its 64th character is still masked,
  and two keys that read alike once cleaned are both kept;
* a principal the audit log could not tell from a look-alike (zero-width, bidi, C1
  control characters) is refused everywhere, as the log refuses it;
* a key rotation whose page holds more cells than one swap call takes finishes;
* tenancy's ``sync_interval_s``, a weight beyond any float and a single string for
  ``queues`` are refused with ``ConfigurationError``;
* 32 bytes of base64 text are not taken for a raw key.
"""

from __future__ import annotations

import base64
import math
import os
import secrets
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

import orjson
import pytest

from helpers import QueueFactory, wait_for_status, wait_until
from kitium_queue import ConfigurationError, JobQueue, JobStateError, JobStatus, acting_as
from kitium_queue.features.access import AccessControlManager
from kitium_queue.features.audit.chain import clean_metadata
from kitium_queue.features.breakers import CircuitBreakerManager
from kitium_queue.features.encryption import EncryptionManager, KeyConfig, generate_key
from kitium_queue.features.groups import FIFOQueueManager
from kitium_queue.features.idempotency import IdempotencyManager
from kitium_queue.features.regions.config import check_config
from kitium_queue.features.tenancy import TenantConfig, TenantRegistry
from kitium_queue.features.workflows import JobChainManager, WorkflowStep
from kitium_queue.features.workflows.lua import MAX_KIDS, MAX_PARENTS
from kitium_queue.features.workflows.model import plan
from kitium_queue.identity import check_principal
from kitium_queue.keys import MAX_KEY_PART


@pytest.fixture
async def acm(backend_url: str, prefix: str) -> AsyncIterator[AccessControlManager]:
    manager = AccessControlManager(backend_url, prefix=prefix, audit_key=secrets.token_hex(32))
    yield manager
    await manager.close()


# ---------------------------------------------------------------------- audit metadata
async def test_a_secret_named_past_the_key_clip_is_masked(acm: AccessControlManager) -> None:
    long_name = "upstream_reporting_service_connection_settings_for_nightly_export_db_password"
    assert len(long_name) > 64
    await acm.audit_access("root", "export", "q1", {long_name: "hunter2-SECRET", "k": 1})
    (entry,) = await acm.query_audit_log(principal="root")
    assert "hunter2-SECRET" not in orjson.dumps(entry.metadata).decode()
    assert list(entry.metadata.values()) == ["***", 1]
    report = await acm.verify_audit_log()
    assert report.ok


def test_keys_that_read_alike_once_cleaned_are_all_kept() -> None:
    meta = orjson.loads(clean_metadata({"k\n": 1, "k\t": 2, "k\u200b": 3}, strict=False))
    assert sorted(meta.values()) == [1, 2, 3]
    assert len(meta) == 3


# ---------------------------------------------------------------------- principals
@pytest.mark.parametrize("name", ["bob\u200b", "bob\u2060", "a\x85b", "a\u202eb", "\ufeffbob"])
async def test_a_principal_the_audit_log_could_not_tell_apart_is_refused(
    acm: AccessControlManager, name: str
) -> None:
    with pytest.raises(ConfigurationError, match="control or format character"):
        check_principal(name)
    with pytest.raises(ConfigurationError, match="control or format character"), acting_as(name):
        pass
    with pytest.raises(ConfigurationError):
        await acm.grant_access(principal_id=name, queue_pattern="q1", role="viewer")


def test_printable_principals_are_kept() -> None:
    for name in ("bob", "ana@example.com", "Zoë", "\u5f20\u4f1f", "svc:billing/eu-1"):
        assert check_principal(name) == name


# ---------------------------------------------------------------------- rotation
async def test_a_rotation_with_pages_larger_than_one_swap_call_finishes(
    redis_url: str, prefix: str
) -> None:
    factory = QueueFactory(redis_url, prefix)
    keep = {"remove_on_complete": False}
    q = factory("rot", worker={"concurrency": 50}, default_job_options=keep)
    k1, k2 = generate_key(), generate_key()
    m = EncryptionManager(
        q,
        keys=[KeyConfig("k1", k1), KeyConfig("k2", k2)],
        encrypt_all=True,
        run_rotation=False,
        rotation_grace_ms=0,
        rotation_batch=1000,
    )

    @q.process("w")
    async def w(job: Any) -> Any:
        return {"i": job.data["i"]}

    try:
        ids = await q.add_jobs([("w", {"i": i}) for i in range(600)])
        await q.start()
        await wait_until(lambda: _completed(q, 600), 30, message="600 jobs completed")
        await m.rotate_key("k1", "k2")
        final = await m.run_rotation()  # 1,200 cells (data and result) in one page
        assert final.state == "done" and final.undecryptable == 0
        assert final.reencrypted == 1200
        detail = await q.get_job_detail(ids[0])
        assert detail is not None and detail.result == {"i": 0}
    finally:
        await factory.aclose()


async def _completed(q: Any, n: int) -> bool:
    return (await q.get_stats()).completed == n


# ---------------------------------------------------------------------- tenancy
@pytest.mark.parametrize("interval", [0, -5, "30", True, math.nan, math.inf, 10**9])
async def test_the_tenancy_sync_interval_is_checked(
    make_queue: QueueFactory, backend_url: str, prefix: str, interval: Any
) -> None:
    reg = TenantRegistry(backend_url, prefix=prefix)
    try:
        with pytest.raises(ConfigurationError, match="sync_interval_s"):
            reg.enable(make_queue("tq"), sync_interval_s=interval)
    finally:
        await reg.close()


async def test_a_weight_beyond_any_float_and_a_single_queue_string_are_refused(
    backend_url: str, prefix: str
) -> None:
    with pytest.raises(ConfigurationError, match="weight"):
        TenantConfig("t", weight=10**400)
    reg = TenantRegistry(backend_url, prefix=prefix)
    try:
        await reg.create_tenant(TenantConfig("acme"))
        with pytest.raises(ConfigurationError, match="weight"):
            await reg.update_tenant("acme", weight=10**400)
        with pytest.raises(ConfigurationError, match=r"pass \['tq1'\]"):
            await reg.get_tenant_usage("acme", queues="tq1")
        usage = await reg.get_tenant_usage("acme", queues=["tq1"])
        assert list(usage.queues) == ["tq1"]
    finally:
        await reg.close()


# ---------------------------------------------------------------------- keys
def test_base64_text_given_as_bytes_is_not_a_raw_key(make_queue: QueueFactory) -> None:
    for text in (b"a" * 32, base64.b64encode(os.urandom(24))):
        assert len(text) == 32
        with pytest.raises(ConfigurationError, match="base64 text"):
            EncryptionManager(make_queue("k"), keys=[KeyConfig("k", text)])
    for good in (bytes(range(32)), os.urandom(32), generate_key()):
        EncryptionManager(make_queue("k"), keys=[KeyConfig("k", good)])


# ---------------------------------------------------------------------- workflows
def _record_runs(q: JobQueue, name: str) -> list[str]:
    """Process ``name`` on ``q``: each run appends its job id to the returned list."""
    ran: list[str] = []

    @q.process(name)
    async def record(job: Any) -> str:
        ran.append(job.id)
        return str(job.id)

    return ran


async def test_a_parent_named_twice_is_one_parent(make_queue: QueueFactory) -> None:
    q = make_queue("dup", worker={"concurrency": 4})
    JobChainManager(q)
    ran = _record_runs(q, "step")

    await q.add_job("step", job_id="p")
    await q.add_job("step", job_id="c", depends_on=["p", "p"])
    await q.start()
    info = await wait_for_status(q, "c", JobStatus.COMPLETED)  # released once p is done
    assert info.status is JobStatus.COMPLETED and ran == ["p", "c"]


@pytest.mark.parametrize(
    "depends_on, why",
    [(iter(["a"]), "list or tuple"), (None, "list or tuple"), ([["a"]], "depends_on item")],
)
def test_step_parents_must_be_a_list_of_names(depends_on: Any, why: str) -> None:
    steps = [WorkflowStep("a", "t"), {"name": "b", "job_name": "t", "depends_on": depends_on}]
    with pytest.raises(ConfigurationError, match=why):
        plan(steps)


def test_the_parent_and_dependent_limits_are_refused_not_cut() -> None:
    roots = [WorkflowStep(f"r{i}", "t") for i in range(MAX_PARENTS + 1)]
    child = WorkflowStep("c", "t", depends_on=[r.name for r in roots])
    with pytest.raises(ConfigurationError, match=f"at most {MAX_PARENTS}"):
        plan([*roots, child])
    fan = [WorkflowStep(f"k{i}", "t", depends_on=["r"]) for i in range(MAX_KIDS + 1)]
    with pytest.raises(ConfigurationError, match="dependents"):
        plan([WorkflowStep("r", "t"), *fan])


async def test_data_transformer_is_a_name(make_queue: QueueFactory) -> None:
    q = make_queue("dt")
    JobChainManager(q)
    for bad in ({"idempotency_window": "until_finished"}, 5, ["l"], ""):
        with pytest.raises(ConfigurationError, match="data_transformer"):
            await q.add_job("t", data_transformer=bad)


# ---------------------------------------------------------------------- breakers
class _OwnStop(BaseException):
    """An exception class of the caller's own, outside ``Exception``."""


async def test_a_raise_of_any_exception_class_counts_as_a_failure(
    make_queue: QueueFactory,
) -> None:
    m = CircuitBreakerManager(make_queue("br"), events=False)
    b = await m.create_breaker({"id": "dep", "failure_threshold": {"min_requests": 2}})

    async def stop() -> None:
        raise _OwnStop()

    for _ in range(2):
        with pytest.raises(_OwnStop):
            await b.execute(stop)
    assert (await b.get_stats()).state.value == "open"


async def test_breaker_names_and_reasons_are_checked_or_escaped(make_queue: QueueFactory) -> None:
    m = CircuitBreakerManager(make_queue("br2"), events=False)
    for name in ("a\udcff", "a\nb", "x" * 300):
        with pytest.raises(ConfigurationError, match="job_name"):
            await m.create_breaker({"id": "b", "job_name": name})
    await m.create_breaker({"id": "b"})
    await m.force_open("b", reason="\udcff\x1b[31m")
    stats = await m.reset("b", reason="line\nbreak")
    assert stats.state.value == "closed"


# ---------------------------------------------------------------------- effectively-once
async def test_execution_records_and_empty_keys_are_checked(make_queue: QueueFactory) -> None:
    q = make_queue("eo")
    idem = IdempotencyManager(q, exactly_once=True)
    with pytest.raises(ConfigurationError, match="job_id"):
        await idem.record_execution("k1", "\udcff", "t", 1)
    with pytest.raises(ConfigurationError, match="job_name"):
        await idem.record_execution("k1", "1", "a\nb", 1)
    with pytest.raises(ConfigurationError, match="idempotency"):
        await q.add_job("t", {"x": 1}, idempotency_key="")
    first = await q.add_job("t", {"x": 1})  # no key: derived from the data
    assert await q.add_job("t", {"x": 1}) == first


@pytest.mark.redis_only
async def test_a_job_key_of_another_type_is_a_damaged_record(make_queue: QueueFactory) -> None:
    q = make_queue("wt")
    jid = await q.add_job("t")
    client = await q.client()
    await client.delete(q.keys.job(jid))
    await client.set(q.keys.job(jid), "not a hash")
    for info in (await q.get_job_status(jid), await q.get_job_detail(jid)):
        assert info is not None and "another type" in (info.damaged or "")


async def test_a_workflow_whose_step_ids_read_like_another_s_is_refused(
    make_queue: QueueFactory,
) -> None:
    """Workflow "a" step "b:c" and workflow "a:b" step "c" both name job "a:b:c": once
    the first one's job record is gone (retention), its dependency record still holds
    the id, and the second workflow must not take it over."""
    q = make_queue("wfc", worker={"concurrency": 4})
    chains = JobChainManager(q, events=False)

    @q.process("x")
    async def x(job: Any) -> Any:
        return job.data

    await chains.execute_workflow(
        "a", [{"name": "b:c", "job_name": "x", "data": 1, "options": {"remove_on_complete": True}}]
    )
    await q.start()
    await wait_until(lambda: _step_done(chains, "a", "b:c"), 10, message="a's step b:c done")
    assert await q.get_job_status("a:b:c") is None  # removed on completion
    with pytest.raises(JobStateError, match="taken"):
        await chains.execute_workflow("a:b", [{"name": "c", "job_name": "x", "data": 2}])
    status = await chains.get_workflow_status("a")
    assert status is not None and status.steps["b:c"].state == "completed"


async def _step_done(chains: Any, wid: str, step: str) -> bool:
    status = await chains.get_workflow_status(wid)
    return status is not None and status.steps[step].state == "completed"


# ---------------------------------------------------------------------- groups
@pytest.mark.redis_only
@pytest.mark.parametrize("damage", ["overwritten", "deleted"])
async def test_a_damaged_head_of_a_group_gives_its_turn_back(
    make_queue: QueueFactory, damage: str
) -> None:
    q = make_queue("gpoison", worker={"concurrency": 4})
    FIFOQueueManager(q)
    ran = _record_runs(q, "x")

    await q.add_job("x", 1, message_group_id="G", job_id="j1")  # has the turn
    await q.add_job("x", 2, message_group_id="G", job_id="j2")  # in line behind it
    client = await q.client()
    await client.delete(q.keys.job("j1"))
    if damage == "overwritten":
        await client.set(q.keys.job("j1"), "garbage")
    await q.start()
    await q.add_job("x", 3, message_group_id="G", job_id="j3")
    await wait_until(lambda: len(ran) == 2, 10, message="the rest of the group to run")
    assert ran == ["j2", "j3"]  # in order, once the damaged head was dead-lettered


async def test_a_group_named_only_by_admin_calls_leaves_the_index(
    make_queue: QueueFactory,
) -> None:
    fifo = FIFOQueueManager(make_queue("gghost"))
    await fifo.pause_group("ghost-0")
    assert await fifo.count_groups() == 1  # paused: a setting, kept
    await fifo.resume_group("ghost-0")
    await fifo.set_group({"group_id": "s1", "group_concurrency": 3})
    assert (await fifo.list_groups()).groups == ["s1"]
    await fifo.set_group({"group_id": "s1"})  # back to the defaults
    assert await fifo.count_groups() == 0


# ---------------------------------------------------------------------- schedules
async def test_schedule_dates_out_of_range_are_configuration_errors(
    make_queue: QueueFactory,
) -> None:
    q = make_queue("sched")
    late = datetime(9999, 6, 1, tzinfo=timezone.utc)  # its next yearly tick is in 10000
    with pytest.raises(ConfigurationError, match="never fires"):
        await q.schedules.declare("job", {}, cron="0 0 1 1 *", start_date=late)
    for early in (datetime(1, 1, 1), datetime(1969, 1, 1, tzinfo=timezone.utc)):
        with pytest.raises(ConfigurationError, match="start_date must be"):
            await q.schedules.declare("job", {}, every=1000, start_date=early)
    end = datetime(2099, 1, 1, tzinfo=timezone.utc)
    with pytest.raises(ConfigurationError, match="never fires"):
        await q.schedules.declare("job", {}, cron="0 0 31 2 *", end_date=end)
    sid = await q.schedules.declare("job", {}, cron="0 0 1 1 *", end_date=end)
    assert sid


# ---------------------------------------------------------------------- names, regions
def test_queue_names_and_prefixes_are_bounded() -> None:
    assert JobQueue("q" * MAX_KEY_PART).name == "q" * MAX_KEY_PART
    for kw in ({"name": "q" * (MAX_KEY_PART + 1)}, {"name": "q", "prefix": "p" * 300}):
        with pytest.raises(ConfigurationError, match=f"at most {MAX_KEY_PART}"):
            JobQueue(**kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("redis", [123, "", "  ", "redis://x\n:1", object()])
def test_a_region_s_redis_setting_is_checked(redis: Any) -> None:
    cfg = {
        "name": "orders",
        "regions": [
            {"region": "us", "redis": "redis://127.0.0.1:1/0", "is_primary": True},
            {"region": "eu", "redis": redis, "priority": 1},
        ],
    }
    with pytest.raises(ConfigurationError, match=r"regions\[1\] \(eu\): redis="):
        check_config(cfg)
    fine = [
        {"region": "us", "redis": "redis://127.0.0.1:1/0", "is_primary": True},
        {"region": "eu", "redis": "redis://127.0.0.1:2/0", "priority": 1},
    ]
    with pytest.raises(ConfigurationError, match="at most 200"):
        check_config({"name": "g" * 201, "regions": fine})


@pytest.mark.parametrize("name", [".", ".."])
def test_a_queue_named_by_dots_only_is_refused(name: str) -> None:
    """A dot segment in a URL is rewritten by every browser and URL tool: the dashboard
    could never serve such a queue. Names with dots among other characters are fine."""
    with pytest.raises(ConfigurationError, match="dot segment"):
        JobQueue(name)
    for fine in ("...", ".a", "a..b", "v1.2"):
        assert JobQueue(fine).name == fine
