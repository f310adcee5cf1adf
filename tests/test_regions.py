"""Multi-region queues (``GlobalQueueManager``, issue 21): the behaviour of one process,
on memory:// stores and on real Redis (three databases standing for three regions).

* bootstrap elects the ``is_primary`` region in epoch 1 with a majority's votes; the
  stats show roles, epochs, leases and lag;
* jobs, outcomes (with results), idempotency keys, retries and requeues reach every
  secondary; a planned ``failover_to`` and back loses nothing and runs nothing twice;
  the jobs running at the handover finish where they started;
* routing: ``region=`` pins a job to a region's own queue (``@<region>:<id>``), a
  tenant's allowed regions (through a real ``AllowedRegions`` implementation) pick or
  refuse a region; ``replicate_job`` copies either kind;
* the fence: a copy that is not the primary, or whose lease ran out, refuses new jobs
  (``FencedError``) and hands none out; two regions on one Redis are refused;
* sync replication acknowledges only what ``min_acks`` other regions stored;
* schedules are kept at the primary and copied; failover events and webhooks.

Failover under load, partitions and a restarted old primary (real redis-server
processes): tests/test_regions_failover.py.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from _loopback import closed_port
from helpers import wait_until
from kitium_queue import (
    ConfigurationError,
    EventData,
    FencedError,
    JobNotFoundError,
    JobStatus,
    NonRetryableError,
)
from kitium_queue.features.regions import (
    FailoverError,
    GlobalQueueManager,
    RegionNotAllowedError,
    ReplicationTimeoutError,
    TenantRegionMap,
)

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

NAMES = ("us-east-1", "eu-west-1", "ap-southeast-1")


@pytest.fixture
def urls(backend_url: str) -> list[str]:
    """Three independent stores: memory:// names, or databases 1-3 of the test Redis."""
    if backend_url.startswith("memory://"):
        return [f"memory://{uuid.uuid4().hex}" for _ in NAMES]
    parts = urlsplit(backend_url)
    return [urlunsplit(parts._replace(path=f"/{db}")) for db in (1, 2, 3)]


def config(urls: list[str], prefix: str, **extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": "orders",
        "regions": [
            {"region": NAMES[0], "redis": urls[0], "is_primary": True},
            {"region": NAMES[1], "redis": urls[1], "priority": 1},
            {"region": NAMES[2], "redis": urls[2], "priority": 2},
        ],
        "replication": {"enabled": True},
        "failover": {"enabled": True, "timeout_ms": 2000},
        "queue_options": {"prefix": prefix},
    }
    cfg.update(extra)
    return cfg


@pytest.fixture
async def make(urls: list[str], prefix: str) -> AsyncIterator[Callable[..., Any]]:
    made: list[GlobalQueueManager] = []

    async def build(**extra: Any) -> GlobalQueueManager:
        m = GlobalQueueManager()
        await m.initialize(config(urls, prefix, **extra))
        made.append(m)
        return m

    yield build
    for m in made:
        await m.close()


async def copy_state(m: GlobalQueueManager, region: str, job_id: str) -> str | None:
    info = await m.region(region).lane.get_job_status(job_id)
    return None if info is None else info.status.value


async def replicated(m: GlobalQueueManager, job_id: str, state: str) -> bool:
    """Every region's copy of ``job_id`` is in ``state``."""
    return all([await copy_state(m, r, job_id) == state for r in NAMES])


# ---------------------------------------------------------------------- bootstrap, stats
async def test_bootstrap_elects_the_configured_primary(make: Callable[..., Any]) -> None:
    m = await make()
    assert (m.primary, m.epoch) == (NAMES[0], 1)
    st = await m.get_global_stats()
    assert [r.role for r in st.regions] == ["primary", "secondary", "secondary"]
    assert all(r.healthy and r.epoch == 1 and r.primary == NAMES[0] for r in st.regions)
    assert st.region(NAMES[0]).serving and st.region(NAMES[0]).lease_ms > 0
    assert not st.region(NAMES[1]).serving
    # A second manager (another process) agrees with the first: no new election.
    other = await make()
    assert (other.primary, other.epoch) == (NAMES[0], 1)


async def test_the_briefs_examples_run_as_written(urls: list[str], prefix: str) -> None:
    """The brief's three-region example (no name, no priorities, defaults elsewhere) and
    its two-region one (``priority: 2``, failover after 5 s)."""
    three = GlobalQueueManager()
    await three.initialize(
        {
            "regions": [
                {"region": "us-east-1", "redis": urls[0], "is_primary": True},
                {"region": "eu-west-1", "redis": urls[1]},
                {"region": "ap-southeast-1", "redis": urls[2]},
            ],
            "queue_options": {"prefix": prefix},
        }
    )
    try:
        assert (three.name, three.primary) == ("global-queue", "us-east-1")
        job_id = await three.add_job("process", {"data": 1})
        stats = await three.get_global_stats()
        assert [r.role for r in stats.regions] == ["primary", "secondary", "secondary"]
        await three.failover_to("eu-west-1")
        assert (await three.get_job_status(job_id)) is not None
    finally:
        await three.close()
    two = GlobalQueueManager()
    await two.initialize(
        {
            "name": "global-queue-2",
            "regions": [
                {"region": "us-east-1", "redis": urls[0], "is_primary": True},
                {"region": "eu-west-1", "redis": urls[1], "priority": 2},
            ],
            "replication": {"enabled": True},
            "failover": {"enabled": True, "timeout_ms": 5000},
            "queue_options": {"prefix": prefix},
        }
    )
    try:
        job_id = await two.add_job("process", {"data": 2})
        assert (await two.failover_to("eu-west-1")).primary == "eu-west-1"
        assert await two.replicate_job(job_id, ["us-east-1"]) == {"us-east-1": "exists"}
    finally:
        await two.close()


# ---------------------------------------------------------------------- replication
async def test_jobs_outcomes_and_idempotency_reach_every_region(make: Callable[..., Any]) -> None:
    m = await make()
    runs: list[str] = []

    @m.process("charge")
    async def charge(job: Any) -> dict[str, Any]:
        runs.append(job.id)
        return {"charged": job.data["order"]}

    jid = await m.add_job("charge", {"order": 7}, idempotency_key="order-7")
    await wait_until(lambda: replicated(m, jid, "waiting"), 5)
    await m.start(concurrency=2)
    await wait_until(lambda: replicated(m, jid, "completed"), 5)
    copy = await m.region(NAMES[2]).lane.get_job_status(jid)
    assert copy is not None and copy.result == {"charged": 7}
    await m.failover_to(NAMES[1])
    # The key was replicated: the same order is not charged again at the new primary.
    assert await m.add_job("charge", {"order": 7}, idempotency_key="order-7") == jid
    await asyncio.sleep(0.2)
    assert runs == [jid]


async def test_the_primarys_outbox_is_trimmed_once_every_region_applied_it(
    make: Callable[..., Any],
) -> None:
    m = await make()
    ids = await m.add_jobs([("x", {"n": i}) for i in range(50)])
    await wait_until(lambda: replicated(m, ids[-1], "waiting"), 5)
    client = await m.region(NAMES[0]).lane.client()
    key = m.region(NAMES[0]).lane.keys.extra("outbox")
    await wait_until(lambda: client.xlen(key), 5)  # entries were written
    await wait_until(lambda: _is_zero(client.xlen(key)), 5)  # and trimmed once applied
    # Without replication nothing is written to the outbox at all.
    quiet = await make(name="quiet", replication={"enabled": False})
    await quiet.add_job("x", {})
    qkey = quiet.region(NAMES[0]).lane.keys.extra("outbox")
    assert await client.xlen(qkey) == 0


async def _is_zero(aw: Any) -> bool:
    return int(await aw) == 0


async def test_exactly_once_results_and_delays_survive_a_failover(
    make: Callable[..., Any],
) -> None:
    from kitium_queue import IdempotencyManager

    m = await make()
    for q in m.queues:  # a feature is enabled on every queue of the façade
        IdempotencyManager(q)
    charged: list[str] = []

    @m.process("pay")
    async def pay(job: Any) -> dict[str, Any]:
        charged.append(job.id)
        return {"receipt": job.data["order"]}

    eo = {"delivery_guarantee": "exactly-once", "idempotency_key": "pay-1"}
    jid = await m.add_job("pay", {"order": 1}, remove_on_complete=True, **eo)
    later = await m.add_job("pay", {"order": 2}, delay=60_000)
    await m.start(concurrency=1)
    await wait_until(lambda: charged == [jid], 5)
    await wait_until(lambda: copy_state(m, NAMES[2], later), 5)
    assert await copy_state(m, NAMES[2], later) == "delayed"
    await m.failover_to(NAMES[2])
    # At the new primary: the same key returns the first job and its kept result.
    assert await m.add_job("pay", {"order": 1}, **eo) == jid
    result = await IdempotencyManager(m.region(NAMES[2]).lane).get_result("pay-1")
    assert result is not None and result.result == {"receipt": 1}
    info = await m.get_job_status(later)
    assert info is not None and info.status is JobStatus.DELAYED
    assert info.delayed_until is not None and info.delayed_until > info.created_at + 50_000
    await asyncio.sleep(0.2)
    assert charged == [jid]


async def test_lag_and_failovers_reach_the_metrics_adapter(make: Callable[..., Any]) -> None:
    from test_adapters import RecordingMetrics

    metrics = RecordingMetrics()
    m = await make(queue_options={"prefix": f"kqt{uuid.uuid4().hex[:8]}", "metrics": metrics})
    await m.add_job("x", {})

    def seen(name: str) -> set[str]:
        return {t["region"] for n, _, t in metrics.observations if n == name}

    await wait_until(lambda: seen("regions.replication.lag_entries") == {NAMES[1], NAMES[2]}, 5)
    assert seen("regions.replication.lag_ms") == {NAMES[1], NAMES[2]}
    await m.failover_to(NAMES[1])
    assert metrics.total("regions.failovers", to=NAMES[1], reason="manual") == 1


async def test_a_lag_alert_rule_fires_while_replication_stalls_and_clears_after(
    make: Callable[..., Any],
) -> None:
    """``region_lag_ms``: the manager provides the gauge on its queues; an alert rule on
    the primary's queue reads it (alerts knows no region), fires while a stalled
    replicator lets the oldest unapplied change age past the threshold, and clears once
    replication has caught up."""
    from kitium_queue.features.alerts import AlertManager

    m = await make()
    lane = m.region(NAMES[0]).lane
    assert "region_lag_ms" in lane.gauges
    fired: list[Any] = []
    lane.on("alert-fired", fired.append)
    alerts = AlertManager(
        lane,
        [{"name": "lag", "metric": "region_lag_ms", "threshold": 300, "clear_below": 100}],
        run_service=False,
    )
    await m.add_job("x", {})

    async def caught_up() -> bool:
        return await m.region_lag_ms() == 0.0

    await wait_until(caught_up, 10)  # both secondaries follow, nothing pending
    assert await alerts.values() == {"lag": 0.0}
    assert await alerts.evaluate(1) == []
    assert m.replicator is not None
    await m.replicator.stop()  # replication stalls: changes pile up at the primary
    await m.add_job("x", {"n": 2})
    await asyncio.sleep(0.4)
    value = (await alerts.values())["lag"]
    assert value >= 300, value
    (t,) = await alerts.evaluate(1)
    assert (t.rule, t.state, t.metric) == ("lag", "firing", "region_lag_ms")
    await wait_until(lambda: len(fired) == 1, 5)
    await m.replicator.follow_primary()  # replication resumes and catches up
    await wait_until(caught_up, 10)
    (t,) = await alerts.evaluate(1)
    assert (t.rule, t.state, float(t.value)) == ("lag", "ok", 0.0)


async def test_a_lag_rule_without_a_global_queue_keeps_its_state_and_says_why(
    make_queue: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A queue no global queue provides the gauge on: the rule has no value, is not
    evaluated (its state stays), and the first miss is logged with what to do."""
    from kitium_queue.features.alerts import AlertManager

    q = make_queue("lagless")
    alerts = AlertManager(
        q, [{"name": "lag", "metric": "region_lag_ms", "threshold": 1}], run_service=False
    )
    assert await alerts.values() == {}
    with caplog.at_level("WARNING"):
        assert await alerts.evaluate(1) == []
        assert await alerts.evaluate(1) == []
    warned = [r for r in caplog.records if "not evaluated" in r.getMessage()]
    assert len(warned) == 1 and "GlobalQueueManager" in warned[0].getMessage()
    assert [s.state for s in await alerts.states()] == ["ok"]
    # A feature's gauge (here a plain function) is what the rule reads.
    q.add_gauge("region_lag_ms", lambda: 5.0)
    (t,) = await alerts.evaluate(1)
    assert (t.state, t.value) == ("firing", "5")
    # Values that are not finite numbers count as none.
    for bad in (float("nan"), float("inf"), "7", True, None):
        q.add_gauge("region_lag_ms", lambda bad=bad: bad)
        assert await q.read_gauge("region_lag_ms") is None
    q.add_gauge("region_lag_ms", None)
    assert "region_lag_ms" not in q.gauges
    with pytest.raises(ConfigurationError, match="gauge name"):
        q.add_gauge("bad name*", lambda: 1)
    with pytest.raises(ConfigurationError, match="must be callable"):
        q.add_gauge("g", 3)  # type: ignore[arg-type]


async def test_failover_to_and_back_loses_nothing_and_runs_nothing_twice(
    make: Callable[..., Any],
) -> None:
    m = await make()
    seen: list[tuple[str, str | None]] = []

    @m.process("job")
    async def job(j: Any) -> None:
        seen.append((j.id, m.primary))

    first = [await m.add_job("job", {"n": i}) for i in range(20)]
    info = await m.failover_to(NAMES[1])
    assert (info.previous, info.primary, info.reason, info.epoch) == (
        NAMES[0],
        NAMES[1],
        "manual",
        2,
    )
    second = [await m.add_job("job", {"n": i}) for i in range(20)]
    back = await m.failover_to(NAMES[0])
    assert (back.primary, m.primary, m.epoch) == (NAMES[0], NAMES[0], 3)
    third = [await m.add_job("job", {"n": i}) for i in range(20)]
    await m.start(concurrency=4)
    everything = first + second + third
    await wait_until(lambda: len(seen) >= len(everything), 10)
    await asyncio.sleep(0.2)
    assert sorted(j for j, _ in seen) == sorted(everything)  # each exactly once
    assert {p for _, p in seen} == {NAMES[0]}
    # Every region ends with every job completed once (the outcomes are replicated).
    await wait_until(lambda: all_completed(m, everything), 5)


async def all_completed(m: GlobalQueueManager, ids: list[str]) -> bool:
    for r in NAMES:
        st = await m.region(r).lane.get_stats()
        if st.completed != len(ids):
            return False
    return True


async def test_a_planned_handover_lets_running_jobs_finish_where_they_run(
    make: Callable[..., Any],
) -> None:
    m = await make(failover={"timeout_ms": 3000, "drain_timeout_ms": 2000})
    started = asyncio.Event()
    runs: list[str | None] = []

    @m.process("slow")
    async def slow(job: Any) -> str:
        runs.append(m.primary)
        started.set()
        await asyncio.sleep(0.4)
        return "done"

    jid = await m.add_job("slow")
    await m.start(concurrency=1)
    await asyncio.wait_for(started.wait(), 5)
    await m.failover_to(NAMES[1])  # waits for the running job, replicates its outcome
    assert await copy_state(m, NAMES[1], jid) == "completed"
    await asyncio.sleep(0.3)
    assert runs == [NAMES[0]]


async def test_retries_and_requeues_are_replicated(make: Callable[..., Any]) -> None:
    m = await make()

    @m.process("bad")
    async def bad(job: Any) -> None:
        raise NonRetryableError("no")

    jid = await m.add_job("bad")
    await m.start(concurrency=1)
    await wait_until(lambda: replicated(m, jid, "dlq"), 5)
    await m.close()
    m2 = await make()
    assert await m2.replay_dlq() == 1
    await wait_until(lambda: replicated(m2, jid, "waiting"), 5)


# ---------------------------------------------------------------------- routing
async def test_region_pins_a_job_to_that_regions_own_queue(make: Callable[..., Any]) -> None:
    m = await make()
    jid = await m.add_job("x", {"a": 1}, region=NAMES[1])
    assert jid.startswith(f"@{NAMES[1]}:")
    info = await m.get_job_status(jid)
    assert info is not None and info.id == jid and info.status is JobStatus.WAITING
    inner = jid.split(":", 1)[1]
    assert await m.region(NAMES[1]).home.get_job_status(inner) is not None
    for other in (NAMES[0], NAMES[2]):  # not replicated: its region is its only home
        assert await m.region(other).lane.get_job_status(inner) is None
    assert (await m.get_stats()).waiting == 1
    with pytest.raises(ConfigurationError, match="not one of the regions"):
        await m.add_job("x", region="mars-1")
    with pytest.raises(ConfigurationError, match="begins with '@'"):
        await m.add_job("x", job_id="@eu-west-1:5")
    assert await m.get_job_status("@mars-1:5") is None
    with pytest.raises(JobNotFoundError):
        await m.remove_job("@nowhere")


async def test_workers_own_serve_their_region_and_the_primary_only_while_it_is_theirs(
    make: Callable[..., Any],
) -> None:
    producer = await make(background=False)
    eu = await make(workers="own", own_region=NAMES[1])
    ran: list[str] = []
    eu.process("x", lambda job: ran.append(str(job.data["k"])))
    await producer.add_job("x", {"k": "global-1"})
    await producer.add_job("x", {"k": "pinned-eu"}, region=NAMES[1])
    await producer.add_job("x", {"k": "pinned-ap"}, region=NAMES[2])
    await eu.start(concurrency=2)
    await wait_until(lambda: ran == ["pinned-eu"], 5)
    await asyncio.sleep(0.2)
    assert ran == ["pinned-eu"]  # not the primary's jobs, not another region's
    await eu.failover_to(NAMES[1])  # now eu is the primary: its workers take the global queue
    await wait_until(lambda: sorted(ran) == ["global-1", "pinned-eu"], 5)


@pytest.mark.parametrize(
    "bad",
    ["", "a b", "\ud800", "eu-west-1\n", "*", "x" * 300, 7, None, ["eu-west-1"], {"r": 1}],
)
async def test_odd_region_arguments_are_refused_clearly(make: Callable[..., Any], bad: Any) -> None:
    m = await make(background=False)
    if bad is not None:
        with pytest.raises(ConfigurationError):
            await m.add_job("x", {}, region=bad)
    with pytest.raises(ConfigurationError):
        await m.failover_to(bad)
    with pytest.raises(ConfigurationError):
        await m.replicate_job(await m.add_job("x", {}), [bad])
    assert await m.get_job_status(f"@{bad}:1") is None


class Tenants(TenantRegionMap):
    """The tenancy lookup as the tenancy feature will provide it: async."""

    async def allowed_regions_for(self, tenant_id: str) -> Any:  # type: ignore[override]
        await asyncio.sleep(0)
        return super().allowed_regions_for(tenant_id)


async def test_a_tenants_allowed_regions_route_or_refuse(make: Callable[..., Any]) -> None:
    tenants = Tenants(
        {
            "acme": [NAMES[1]],
            "globex": None,
            "initech": [NAMES[0], NAMES[1]],
            "hooli": ["mars-1"],
        }
    )
    m = await make(allowed_regions=tenants)
    m.declare_option("tenant_id", feature="test tenancy")
    acme = await m.add_job("x", tenant_id="acme")
    assert acme.startswith(f"@{NAMES[1]}:")  # its only region's own queue
    globex = await m.add_job("x", tenant_id="globex")
    assert not globex.startswith("@")  # anywhere: the replicated global queue
    initech = await m.add_job("x", tenant_id="initech")
    assert initech.startswith(f"@{NAMES[0]}:")  # not everywhere: the allowed primary's own
    assert (await m.add_job("x", tenant_id="acme", region=NAMES[1])).startswith("@")
    with pytest.raises(RegionNotAllowedError, match="may not place jobs in region"):
        await m.add_job("x", tenant_id="acme", region=NAMES[0])
    with pytest.raises(RegionNotAllowedError, match="none of which"):
        await m.add_job("x", tenant_id="hooli")
    with pytest.raises(RegionNotAllowedError, match="could not be looked up"):
        await m.add_job("x", tenant_id="unknown")
    ids = await m.add_jobs(
        [("x", {}, {"tenant_id": "acme"}), ("x", {}, {"tenant_id": "globex"}), ("x", {})]
    )
    assert ids[0].startswith(f"@{NAMES[1]}:") and not ids[1].startswith("@")


async def test_the_tenancy_registry_answers_the_routing(
    make: Callable[..., Any], urls: list[str], prefix: str
) -> None:
    """``tenants=`` a ``TenantRegistry``: a tenant with regions is pinned to them, one
    without goes anywhere, an unknown one is refused."""
    from kitium_queue import TenantRegistry

    registry = TenantRegistry(urls[0], prefix=prefix)
    await registry.create_tenant({"tenant_id": "acme", "allowed_regions": [NAMES[2]]})
    await registry.create_tenant({"tenant_id": "globex"})
    try:
        assert await registry.allowed_regions_for("acme") == (NAMES[2],)
        assert await registry.allowed_regions_for("globex") is None
        m = await make(tenants=registry)
        m.declare_option("tenant_id", feature="test tenancy")
        assert (await m.add_job("x", tenant_id="acme")).startswith(f"@{NAMES[2]}:")
        assert not (await m.add_job("x", tenant_id="globex")).startswith("@")
        with pytest.raises(RegionNotAllowedError):
            await m.add_job("x", tenant_id="acme", region=NAMES[0])
        with pytest.raises(RegionNotAllowedError, match="no tenant 'initech'"):
            await m.add_job("x", tenant_id="initech")
    finally:
        await registry.close()


async def test_access_control_tenants_restrict_the_regions(
    make: Callable[..., Any], urls: list[str], prefix: str
) -> None:
    """``tenants=`` an ``AccessControlManager``: an eu-only tenant's job goes to an eu
    region; placing it outside them is refused with an error naming its regions."""
    import secrets

    from kitium_queue import AccessControlManager

    acm = AccessControlManager(
        urls[0], prefix=prefix, audit_key=secrets.token_hex(32), principal="ops"
    )
    try:
        await acm.grant_access(principal_id="ops", queue_pattern="*", role="admin")
        await acm.create_tenant({"tenant_id": "eu-co", "allowed_regions": [NAMES[1]]})
        m = await make(tenants=acm)
        m.declare_option("tenant_id", feature="test tenancy")
        job = await m.add_job("x", {"n": 1}, tenant_id="eu-co")
        assert job.startswith(f"@{NAMES[1]}:")
        status = await m.get_job_status(job)
        assert status is not None and status.data == {"n": 1}
        with pytest.raises(
            RegionNotAllowedError, match=f"may not place jobs in region {NAMES[0]!r}"
        ):
            await m.add_job("x", tenant_id="eu-co", region=NAMES[0])
    finally:
        await acm.close()


async def test_tenants_and_allowed_regions_are_exclusive(urls: list[str], prefix: str) -> None:
    with pytest.raises(ConfigurationError, match="not both"):
        await GlobalQueueManager().initialize(
            config(urls, prefix, tenants=TenantRegionMap({}), allowed_regions=TenantRegionMap({}))
        )
    with pytest.raises(ConfigurationError, match="TenantRegistry or an AccessControlManager"):
        await GlobalQueueManager().initialize(config(urls, prefix, tenants={"acme": ["x"]}))


async def test_replicate_job_copies_either_kind(make: Callable[..., Any]) -> None:
    m = await make(replication={"enabled": False})
    jid = await m.add_job("x", {"v": 1})
    assert await copy_state(m, NAMES[1], jid) is None  # no asynchronous replication
    got = await m.replicate_job(jid, [NAMES[1], NAMES[2], NAMES[0]])
    assert got == {NAMES[1]: "added", NAMES[2]: "added", NAMES[0]: "source"}
    assert await copy_state(m, NAMES[1], jid) == "waiting"
    assert (await m.replicate_job(jid, [NAMES[1]])) == {NAMES[1]: "exists"}
    pinned = await m.add_job("x", {"v": 2}, region=NAMES[1])
    assert await m.replicate_job(pinned, [NAMES[2]]) == {NAMES[2]: "added"}
    fenced = await m.region(NAMES[2]).copy_of(NAMES[1])
    info = await fenced.get_job_status(pinned.split(":", 1)[1])
    assert info is not None and info.data == {"v": 2}
    with pytest.raises(FencedError, match="is not the primary"):
        await fenced.add_job("x", {})  # never served there
    with pytest.raises(JobNotFoundError):
        await m.replicate_job("nope", [NAMES[1]])


# ---------------------------------------------------------------------- the fence
async def test_the_fence_refuses_a_secondary_and_an_expired_lease(
    make: Callable[..., Any],
) -> None:
    m = await make(background=False, failover={"timeout_ms": 300})
    with pytest.raises(FencedError, match=f"region {NAMES[1]} is not the primary"):
        await m.region(NAMES[1]).lane.add_job("x", {})
    # A copy that is not the primary hands nothing out, whatever it holds.
    jid = await m.add_job("x", {})
    await m.replicate_job(jid, [NAMES[1]])
    sec = m.region(NAMES[1]).lane
    ran: list[str] = []
    sec.process("x", lambda job: ran.append(job.id))
    await sec.start(concurrency=1)
    await asyncio.sleep(0.3)
    await sec.worker.stop()
    assert ran == [] and (await sec.get_stats()).waiting == 1
    # Without renewals (no background loop here) the primary's lease runs out...
    await asyncio.sleep(0.4)
    with pytest.raises(FencedError, match="lease of region us-east-1 as primary"):
        await m.region(NAMES[0]).lane.add_job("x", {})
    # ...and add_job renews it with a majority before trying again.
    assert await m.add_job("x", {})


async def test_an_election_under_way_is_given_the_timeout_before_a_higher_one(
    make: Callable[..., Any],
) -> None:
    # Another process has cast votes for epoch 2 but not finished (crashed, or slow):
    # this one sees the primary gone and the election under way. Starting epoch 3 at
    # once would move the primary twice; it waits the failover timeout, then takes over.
    m = await make(background=False, failover={"timeout_ms": 300})
    assert m.monitor is not None
    await asyncio.sleep(0.4)  # no renewals here: the primary's lease runs out
    lease_ms = m.monitor.cfg.lease_ms
    votes = [await c.op("vote", 2, NAMES[1], lease_ms) for c in m.monitor.topo.copies]
    assert sum(1 for v in votes if v.ok) >= 2, votes
    await m.monitor.tick()  # the primary is seen not serving from here
    await asyncio.sleep(0.35)
    view = await m.monitor.tick()  # past the timeout: would fail over, but 2 is under way
    assert (view.epoch, view.election) == (1, 2)
    assert (m.primary, m.epoch) == (NAMES[0], 1)
    await asyncio.sleep(0.35)  # the election of epoch 2 never finished
    await m.monitor.tick()
    await m.monitor.tick()
    assert (m.primary, m.epoch) == (NAMES[1], 3)


async def test_two_regions_on_one_redis_are_refused(urls: list[str], prefix: str) -> None:
    m = GlobalQueueManager()
    cfg = config([urls[0], urls[0], urls[2]], prefix)
    with pytest.raises(ConfigurationError, match="same Redis"):
        await m.initialize(cfg)
    await m.close()


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"regions": []}, "2 to 16 regions"),
        ({"regions": [{"region": "a b", "redis": "memory://x"}] * 2}, "region must be"),
        ({"regions": [{"region": "a", "redis": "memory://x"}] * 2}, "repeated: a"),
        ({"regions": [{"region": "\u202ea", "redis": "memory://x"}] * 2}, "region must be"),
        ({"failover": {"timeout_ms": 1000, "lease_ms": 1000}}, "below failover.timeout_ms"),
        ({"failover": {"timeout_ms": float("nan")}}, "timeout_ms"),
        ({"failover": {"timout_ms": 5}}, "did you mean 'timeout_ms'"),
        ({"replication": {"mode": "eventually"}}, "'async' or 'sync'"),
        ({"replication": {"min_acks": 3}}, "min_acks must be"),
        ({"replication": {"min_acks": True}}, "min_acks must be"),
        ({"workers": "own"}, "needs own_region"),
        ({"queue_options": {"redis": "memory://"}}, "may not set redis"),
        ({"notify": [object()]}, "send_event"),
        ({"name": "a{b}"}, "queue name"),
        ({"colour": "blue"}, "unknown global queue option"),
    ],
)
async def test_bad_configuration_says_what_is_wrong(
    urls: list[str], prefix: str, change: dict[str, Any], needle: str
) -> None:
    cfg = config(urls, prefix)
    cfg.update(change)
    with pytest.raises(ConfigurationError, match=needle):
        await GlobalQueueManager().initialize(cfg)


async def test_not_initialized_and_a_minority_are_refused(urls: list[str], prefix: str) -> None:
    m = GlobalQueueManager()
    with pytest.raises(ConfigurationError, match="not initialized"):
        await m.add_job("x")
    with pytest.raises(ConfigurationError, match="needs the configuration"):
        await m.initialize()
    down = f"redis://127.0.0.1:{closed_port()}/0?socket_connect_timeout=0.2"
    cfg = config([urls[0], down, down], prefix)
    with pytest.raises(FailoverError, match="a majority"):
        await m.initialize(cfg)


# ---------------------------------------------------------------------- sync mode
async def test_sync_mode_acknowledges_only_what_other_regions_stored(
    make: Callable[..., Any], urls: list[str], prefix: str
) -> None:
    m = await make(background=False, replication={"mode": "sync", "min_acks": 2})
    jid = await m.add_job("x", {"n": 1})
    # No replicator runs here: both copies were written before add_job returned.
    assert await copy_state(m, NAMES[1], jid) == "waiting"
    assert await copy_state(m, NAMES[2], jid) == "waiting"
    ids = await m.add_jobs([("x", {"n": i}) for i in range(5)] + [("x", {}, {"region": NAMES[1]})])
    for i in ids[:5]:
        assert await copy_state(m, NAMES[2], i) == "waiting"
    down = f"redis://127.0.0.1:{closed_port()}/0?socket_connect_timeout=0.2"
    strict = GlobalQueueManager()
    await strict.initialize(
        config(
            [urls[0], urls[1], down],
            prefix + "s",
            background=False,
            replication={"mode": "sync", "min_acks": 2, "ack_timeout_ms": 300},
        )
    )
    try:
        with pytest.raises(ReplicationTimeoutError, match="min_acks is 2") as err:
            await strict.add_job("x", {}, job_id="j-1")
        assert err.value.job_ids == ["j-1"]
        # Stored at the primary (and where it could be), never added twice on a retry.
        assert await strict.region(NAMES[0]).lane.get_job_status("j-1") is not None
    finally:
        await strict.close()


# ---------------------------------------------------------------------- schedules, events
async def test_schedules_live_at_the_primary_and_are_copied(make: Callable[..., Any]) -> None:
    m = await make(replication={"schedule_sync_ms": 50})
    await m.schedule_every("tick", {}, 60_000, schedule_id="every-minute")
    assert [s.id for s in await m.get_schedules()] == ["every-minute"]

    async def copied() -> bool:
        got = await m.region(NAMES[2]).lane.get_schedule("every-minute")
        return got is not None

    await wait_until(copied, 5)
    await m.failover_to(NAMES[1])
    assert [s.id for s in await m.get_schedules()] == ["every-minute"]


@pytest.mark.redis_only
async def test_failover_events_and_webhooks(
    make: Callable[..., Any], backend_url: str, prefix: str
) -> None:
    from chaos.receiver import Receiver

    from kitium_queue import JobQueue
    from kitium_queue.features.webhooks import WebhookConfig, WebhookManager, generate_secret

    receiver = await Receiver().start()
    control = JobQueue("control", redis=backend_url, prefix=prefix)
    hooks = WebhookManager(control, allow_networks=["127.0.0.0/8"], backoff_ms=20, poll_ms=10)
    await hooks.register_webhook(
        WebhookConfig(url=receiver.url, secret=generate_secret(), events=["region-failover"])
    )
    await control.start()
    try:
        m = await make(notify=[hooks])
        events: list[EventData] = []
        m.on("region-failover", events.append)
        await m.failover_to(NAMES[2])
        assert [(e.extra["from"], e.extra["to"], e.extra["reason"]) for e in events] == [
            (NAMES[0], NAMES[2], "manual")
        ]
        await wait_until(lambda: len(receiver.ok()) == 1, 10)
        body = receiver.ok()[0].json()
        assert body["type"] == "region-failover"
        assert body["data"]["to"] == NAMES[2] and body["data"]["epoch"] == "2"
    finally:
        await control.close()
        await receiver.stop()


async def test_close_bounds_a_step_that_never_ends_and_still_closes_the_rest(
    urls: list[str],
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A part of the manager that never finishes stopping (here the region monitor) is
    cancelled after its bound, named in the log, and the workers and every region's
    connections are still closed."""
    from kitium_queue.features.regions import manager as manager_mod

    monkeypatch.setattr(manager_mod, "_STEP_S", 0.3)
    m = GlobalQueueManager()
    await m.initialize(config(urls, prefix))

    @m.process("job")
    async def job(j: Any) -> None:
        return None

    await m.start(concurrency=1)
    assert m.monitor is not None and m.topo is not None
    stuck = asyncio.Event()
    cancelled: list[bool] = []

    async def never_stops() -> None:
        try:
            await stuck.wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    monkeypatch.setattr(m.monitor, "stop", never_stops)
    workers = [q.worker for c in m.topo.copies for q in c.queues() if q.worker is not None]
    assert workers and any(w.running for w in workers)
    with caplog.at_level("WARNING", logger="kitium_queue.features.regions.manager"):
        await asyncio.wait_for(m.close(), 30)
    await asyncio.sleep(0)
    assert cancelled == [True]
    warned = [r.getMessage() for r in caplog.records if "took more than" in r.getMessage()]
    assert warned and "the region monitor" in warned[0], warned
    assert not any(w.running for w in workers)
    assert m.stopped.is_set()


async def test_a_handover_is_reported_once_as_manual_while_the_monitor_ticks(
    make: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The monitor's rounds (every 20 ms here) go on while a handover catches the new
    primary up (slowed to 0.4 s): a round that sees the new epoch first must not follow
    it as an observed change, or the process's own failover would lose its reason, its
    metric and its webhooks (seen on a loaded machine)."""
    from test_adapters import RecordingMetrics

    metrics = RecordingMetrics()
    m = await make(
        failover={"enabled": True, "timeout_ms": 2000, "check_interval_ms": 20},
        queue_options={"prefix": f"kqt{uuid.uuid4().hex[:8]}", "metrics": metrics},
    )
    assert m.replicator is not None and m.monitor is not None
    events: list[EventData] = []
    m.on("region-failover", events.append)
    slow_catch_up = m.replicator.catch_up
    ticks_during: list[int] = []

    async def catch_up(target: Any) -> dict[str, int]:
        assert m.monitor is not None
        before = m.monitor.ticks
        await asyncio.sleep(0.4)
        ticks_during.append(m.monitor.ticks - before)
        return await slow_catch_up(target)

    monkeypatch.setattr(m.replicator, "catch_up", catch_up)
    await m.failover_to(NAMES[1])
    assert ticks_during and ticks_during[0] >= 2, ticks_during  # the monitor did tick
    await asyncio.sleep(0.1)  # a few more rounds: none reports the change again
    assert [(e.extra["from"], e.extra["to"], e.extra["reason"]) for e in events] == [
        (NAMES[0], NAMES[1], "manual")
    ]
    assert metrics.total("regions.failovers", to=NAMES[1], reason="manual") == 1
    assert m.primary == NAMES[1]


async def test_a_handover_takes_over_entries_a_silent_replicator_holds(
    make: Callable[..., Any],
) -> None:
    """A replicator that read entries and then went silent (its process died, or it
    waits out a backoff) holds them in the group; the planned handover takes them over
    within its drain (750 ms here), well before the replicators' own take-over time
    (1 s at the least), and the target gets every job."""
    from kitium_queue.features.regions.replication import group_of
    from kitium_queue.outbox import Outbox

    m = await make(failover={"timeout_ms": 1500})
    ids = [await m.add_job("job", {"n": i}) for i in range(5)]
    silent = Outbox(m.region(NAMES[0]).lane).consumer(
        group_of(NAMES[1]),
        "silent",
        start="0",
        count=100,
        block_ms=0,
        claim_idle_ms=60_000,
        max_deliveries=1_000_000_000,
    )
    held = await silent.read()
    assert {e.fields.get("id", b"").decode() for e in held} >= set(ids)
    info = await m.failover_to(NAMES[1])
    assert (info.primary, m.primary) == (NAMES[1], NAMES[1])
    assert [await copy_state(m, NAMES[1], j) for j in ids] == ["waiting"] * len(ids)


async def test_a_producer_waits_out_a_planned_handover_instead_of_failing(
    make: Callable[..., Any],
) -> None:
    """The primary stepped down (a planned handover under way, here held open by hand):
    ``add_job`` and ``add_jobs`` wait for a primary to serve again and add there, where
    they raised ``FencedError`` at once (about 5 refused adds per handover at 150 adds/s
    before). With ``handover_wait_ms=0`` they still raise at once."""
    m = await make(failover={"timeout_ms": 2000, "check_interval_ms": 20})
    primary = m.region(NAMES[0])
    epoch = m.epoch
    assert epoch is not None and (await primary.op("stepdown", epoch)).ok
    single = asyncio.ensure_future(m.add_job("job", {"n": 1}))
    batch = asyncio.ensure_future(m.add_jobs([("job", {"n": 2}), ("job", {"n": 3})]))
    await asyncio.sleep(0.3)
    assert not single.done() and not batch.done()  # waiting, nothing refused
    assert (await primary.op("resume", epoch)).ok  # the handover abandoned: back
    ids = [await single, *await batch]
    assert [await copy_state(m, NAMES[0], j) for j in ids] == ["waiting"] * 3

    fail_fast = await make(failover={"timeout_ms": 2000, "handover_wait_ms": 0})
    assert (await primary.op("stepdown", epoch)).ok
    with pytest.raises(FencedError, match="stepped down"):
        await fail_fast.add_job("job", {})
    with pytest.raises(FencedError, match="stepped down"):
        await fail_fast.add_jobs([("job", {})])
    assert (await primary.op("resume", epoch)).ok


async def test_adds_during_a_handover_by_another_process_are_never_refused(
    make: Callable[..., Any],
) -> None:
    """An operator's ``failover_to`` (another manager) while a producer adds at full
    speed: every add returns (none refused), and every job is at the new primary."""
    producer = await make(failover={"timeout_ms": 2000, "check_interval_ms": 20})
    operator = await make(failover={"timeout_ms": 2000, "check_interval_ms": 20})
    acked: list[str] = []
    errors: list[BaseException] = []
    stop = asyncio.Event()

    async def produce() -> None:
        while not stop.is_set():
            try:
                acked.append(await producer.add_job("job", {"n": len(acked)}))
            except Exception as exc:
                errors.append(exc)

    task = asyncio.ensure_future(produce())
    await asyncio.sleep(0.2)
    before = len(acked)
    await operator.failover_to(NAMES[1])
    await asyncio.sleep(0.3)
    stop.set()
    await task
    assert not errors, errors[:3]
    assert len(acked) > before
    await wait_until(lambda: producer.primary == NAMES[1], 5)
    lane = operator.region(NAMES[1]).lane
    assert [j for j in acked if await lane.get_job_status(j) is None] == []


async def test_a_former_primary_is_promoted_only_once_it_has_rejoined(
    make: Callable[..., Any],
) -> None:
    """A region marked ``former`` (a deposed primary back, not yet rejoined: the
    replicator records its stranded work and empties it) is no candidate for an
    automatic failover and ``failover_to`` refuses it, naming why; once rejoined it is
    promoted as any other."""
    from kitium_queue.features.regions import FailoverError

    m = await make()
    target = m.region(NAMES[2])
    client = await target.lane.client()
    await client.hset(target.lane.keys.extra("rg"), "former", 1)
    assert m.monitor is not None
    with pytest.raises(FailoverError, match=r"former primary .* not rejoined"):
        await m.failover_to(NAMES[2])
    assert NAMES[2] not in [c.name for c in m.monitor.candidates(None)]
    assert m.primary == NAMES[0]
    assert (await target.op("rejoin")).former is None
    assert (await m.failover_to(NAMES[2])).primary == NAMES[2]


async def test_without_replication_a_former_primary_is_promotable_again(
    make: Callable[..., Any],
) -> None:
    """With replication off nothing rejoins a former primary (no stranded work, no copy
    made afresh), so the monitor drops its mark at once: it stays eligible."""
    m = await make(replication={"enabled": False})
    target = m.region(NAMES[2])
    client = await target.lane.client()
    await client.hset(target.lane.keys.extra("rg"), "former", 1)
    assert m.monitor is not None
    await m.monitor.tick()
    assert (await target.op("read")).former is None
    assert (await m.failover_to(NAMES[2])).primary == NAMES[2]
