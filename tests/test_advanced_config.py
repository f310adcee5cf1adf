"""``AdvancedQueueConfig`` (issue 22): the brief's Advanced Types example with every
section, typed and as a dict; unknown sections and keys refused with a suggestion; each
section enabling its feature through the option registry with the section's defaults;
missing extras and features this version lacks refused with what to do; multi_tenancy
enabling tenancy (``queue.advanced.multi_tenancy`` is the ``TenantRegistry``);
``kitium-queue config show`` printing the effective configuration without secrets."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from helpers import QueueFactory, app_module, wait_for_status, wait_until
from kitium_queue import (
    AdvancedQueueConfig,
    ConfigurationError,
    GlobalQueueManager,
    JobQueue,
    JobRefusedError,
    JobStatus,
    QueueConfig,
    QuotaExceededError,
    WebhookConfig,
)
from kitium_queue.cli import main
from kitium_queue.features.advanced import (
    ComplianceConfig,
    CostOptimizationConfig,
    ExactlyOnceConfig,
    FifoConfig,
    MonitoringConfig,
)
from kitium_queue.features.encryption import generate_key
from kitium_queue.features.encryption.crypto import envelope_key_id
from kitium_queue.features.tenancy import TenantRegistry
from kitium_queue.features.webhooks.models import Webhook

KEY = generate_key()


def brief_example(**over: Any) -> dict[str, Any]:
    """The brief's ``AdvancedQueueConfig`` with every section, in snake_case, with the
    fields the brief names (plus what a section needs to do something: a key, a rule)."""
    cfg: dict[str, Any] = {
        "exactly_once": {"enabled": True, "ttl_ms": 60_000},
        "fifo": {"enabled": True, "high_throughput": False},
        "encryption": {
            "enabled": True,
            "algorithm": "aes-256-gcm",
            "keys": [{"key_id": "k1", "key": KEY}],
        },
        "workflows": {"enabled": True, "default_timeout_ms": 45_000},
        "circuit_breaker": {"enabled": True, "default_failure_threshold": 30},
        "webhooks": {"enabled": True, "default_delivery_strategy": "reliable"},
        "global_queue": {"enabled": False, "regions": [{"region": "us-east-1", "redis": None}]},
        "multi_tenancy": {"enabled": True, "enable_resource_quotas": True},
        "batching": {"enabled": True, "size": 8, "max_wait_ms": 50},
        "rate_limiting": {"enabled": True, "per_key": {"api:*": {"max": 100, "duration_ms": 1000}}},
        "cost_optimization": {
            "enabled": True,
            "compression": {"threshold_bytes": 256},
            "retention": {"dlq": {"count": 1000}},
        },
        "monitoring": {
            "enabled": True,
            "alerts": [{"name": "backlog", "metric": "queue_depth", "threshold": 1000}],
        },
        "compliance": {
            "enabled": True,
            "retention": {"completed": 60_000},
            "redact_fields": ["user.email"],
        },
    }
    cfg.update(over)
    return cfg


def _typed(cfg: dict[str, Any]) -> AdvancedQueueConfig:
    return AdvancedQueueConfig(**cfg)


@pytest.mark.parametrize("form", ["dict", "typed", "queueconfig"])
async def test_brief_example_runs_with_every_section(
    make_queue: QueueFactory, backend_url: str, prefix: str, form: str
) -> None:
    # Every section on, global_queue too (its manager is made, not yet initialized:
    # that connects to the regions), with an alert rule on its replication lag.
    regions = [
        {"region": "us-east-1", "redis": f"memory://{prefix}-us", "is_primary": True},
        {"region": "eu-west-1", "redis": f"memory://{prefix}-eu"},
    ]
    cfg = brief_example(
        global_queue={"enabled": True, "regions": regions},
        monitoring={
            "enabled": True,
            "alerts": [
                {"name": "backlog", "metric": "queue_depth", "threshold": 1000},
                {"name": "lag", "metric": "region_lag_ms", "threshold": 5000},
            ],
        },
    )
    if form == "dict":
        q = make_queue("adv", advanced=cfg)
    elif form == "typed":
        q = make_queue("adv", advanced=_typed(cfg))
    else:
        q = JobQueue(QueueConfig("adv", redis=backend_url, prefix=prefix, advanced=_typed(cfg)))
        make_queue.queues.append(q)
    adv = q.advanced
    assert set(adv.config.enabled_sections()) == set(cfg)
    assert isinstance(adv.global_queue, GlobalQueueManager) and "region_lag_ms" in q.gauges
    # Each enabled section's feature declared its options in the registry.
    owners = {s.name: s.feature for s in q.jobspec.specs()}
    assert {
        o: owners.get(o)
        for o in (
            "message_group_id",
            "encrypted",
            "depends_on",
            "circuit_breaker_id",
            "webhook_url",
            "rate_limit_key",
            "subject_id",
            "idempotency_window",
            "tenant_id",
        )
    } == {
        "message_group_id": "fifo-groups",
        "encrypted": "encryption",
        "depends_on": "workflows",
        "circuit_breaker_id": "circuit-breakers",
        "webhook_url": "webhooks",
        "rate_limit_key": "flow-control",
        "subject_id": "compliance",
        "idempotency_window": "effectively-once",
        "tenant_id": "multi-tenancy",
    }
    for attr in (
        "exactly_once",
        "fifo",
        "encryption",
        "workflows",
        "circuit_breaker",
        "webhooks",
        "compression",
        "retention",
        "alerts",
        "compliance",
        "multi_tenancy",
    ):
        assert getattr(adv, attr) is not None, attr
    assert isinstance(adv.multi_tenancy, TenantRegistry)
    await adv.multi_tenancy.create_tenant({"tenant_id": "acme", "quota": {"max_queue_size": 5}})

    # A job using several features at once goes through.
    seen: list[Any] = []

    @q.process("charge")
    async def charge(job: Any) -> Any:
        seen.append(job.data)
        return {"ok": job.data["n"], "pad": "x" * 600}

    jid = await q.add_job(
        "charge",
        {"n": 1, "user": {"email": "a@b.c"}, "pad": "y" * 600},
        message_group_id="cust-1",
        encrypted=True,
        delivery_guarantee="exactly-once",
        idempotency_key="charge-1",
        subject_id="user-1",
        tenant_id="acme",
    )
    again = await q.add_job("charge", {"n": 2}, idempotency_key="charge-1")
    assert again == jid
    assert (await adv.multi_tenancy.get_tenant_usage("acme")).queued == 1
    await q.start()
    info = await wait_for_status(q, jid, JobStatus.COMPLETED)
    assert info.result["ok"] == 1 and seen == [
        {"n": 1, "user": {"email": "a@b.c"}, "pad": "y" * 600}
    ]
    client = await q.client()
    raw = await client.hget(q.keys.job(jid), "d")
    # Encrypted at rest (the envelope is JSON, compressed when large enough).
    assert b"a@b.c" not in raw
    stored = q.serializer.loads(raw)
    assert envelope_key_id(stored) == "k1"
    assert adv.compression.stats().seen > 0


async def test_unknown_sections_and_keys_are_refused_with_a_suggestion(
    make_queue: QueueFactory,
) -> None:
    cases = [
        ({"fifoo": {"enabled": True}}, "unknown advanced section: 'fifoo' (did you mean 'fifo'?)"),
        (
            {"exactlyOnce": {"enabled": True}},
            "unknown advanced section: 'exactlyOnce' (did you mean 'exactly_once'?)",
        ),
        (
            {"fifo": {"enabeld": True}},
            "unknown advanced.fifo option: 'enabeld' (did you mean 'enabled'?)",
        ),
        (
            {"exactly_once": {"enabled": True, "ttlMs": 5}},
            "unknown advanced.exactly_once option: 'ttlMs' (did you mean 'ttl_ms'?)",
        ),
        (
            {"cost_optimization": {"compression": {"treshold_bytes": 5}}},
            "unknown advanced.cost_optimization.compression option: 'treshold_bytes' "
            "(did you mean 'threshold_bytes'?)",
        ),
        (
            {"monitoring": {"alerts": [{"name": "a", "metric": "queue_dept", "threshold": 1}]}},
            "unknown metric 'queue_dept' (did you mean 'queue_depth'?)",
        ),
        (
            {"compliance": {"retention": {"complete": 5}}},
            "unknown advanced.compliance.retention option: 'complete' (did you mean 'completed'?)",
        ),
    ]
    for cfg, needle in cases:
        with pytest.raises(ConfigurationError) as err:
            make_queue("bad", advanced=cfg)
        assert needle in str(err.value), str(err.value)
    # Typed sections refuse the same way, and bad values name their field.
    with pytest.raises(ConfigurationError, match=r"unknown advanced.fifo option: 'enabeld' \(did"):
        FifoConfig(enabeld=True)  # type: ignore[call-arg]
    for build, needle in [
        (lambda: FifoConfig(enabled="yes"), "advanced.fifo.enabled must be True or False"),
        (
            lambda: ExactlyOnceConfig(window="forever"),
            "advanced.exactly_once.window must be one of ttl, until_finished, debounce",
        ),
        (
            lambda: CostOptimizationConfig(compression={"threshold_bytes": -1}),
            "threshold_bytes must be an int >= 1",
        ),
        (
            lambda: ComplianceConfig(redact_fields="user.email"),
            "must be a list of paths, not one string",
        ),
        (lambda: ComplianceConfig(redact_fields=["a..b"]), "has an empty segment"),
        (
            lambda: MonitoringConfig(alerts=[{"name": "x", "metric": "queue_depth"}]),
            "needs 'threshold'",
        ),
        (lambda: AdvancedQueueConfig(fifo=3), "advanced.fifo must be a FifoConfig or a dict"),
    ]:
        with pytest.raises(ConfigurationError) as err:
            build()
        assert needle in str(err.value), str(err.value)
    with pytest.raises(ConfigurationError, match="advanced must be a AdvancedQueueConfig or a"):
        make_queue("bad", advanced=["fifo"])


def test_fuzzed_keys_are_refused_cleanly() -> None:
    for key in ("\ud800", "a\x00b", "*", "[x]", "é" * 5000, 7, None, ("t",)):
        with pytest.raises(ConfigurationError) as err:
            AdvancedQueueConfig.parse({"fifo": {key: True}})
        text = str(err.value)
        assert "unknown advanced.fifo option" in text and len(text) < 1000
        assert "\x00" not in text and "\ud800" not in text
    for value in (float("nan"), float("inf"), 10**30, -1, True, "5"):
        with pytest.raises(ConfigurationError):
            ExactlyOnceConfig(ttl_ms=value)


async def test_sections_apply_their_defaults(make_queue: QueueFactory) -> None:
    q = make_queue("defaults", advanced=brief_example())
    adv = q.advanced
    # exactly_once.ttl_ms sets the idempotency window.
    assert q.idempotency_ttl == 60_000
    # circuit_breaker.default_failure_threshold: a breaker created without one.
    br = await adv.circuit_breaker.create_breaker({"id": "api"})
    assert br.config.failure_threshold.percentage == 30.0
    own = await adv.circuit_breaker.create_breaker(
        {"id": "api2", "failure_threshold": {"percentage": 80, "min_requests": 5}}
    )
    assert own.config.failure_threshold.percentage == 80.0
    # webhooks.default_delivery_strategy: an endpoint registered without one.
    hook = Webhook.from_config(
        WebhookConfig(url="https://example.com/h"), 0, adv.webhooks.default_delivery_strategy
    )
    assert hook.delivery_strategy.value == "reliable"
    explicit = Webhook.from_config(
        WebhookConfig(url="https://example.com/h", delivery_strategy="best-effort"),
        0,
        adv.webhooks.default_delivery_strategy,
    )
    assert explicit.delivery_strategy.value == "best-effort"
    # batching: process_batch without a size takes the section's.
    got: list[int] = []

    @q.process_batch("b")
    async def batch(jobs: list[Any]) -> None:
        got.append(len(jobs))

    proc = q.processors["b"]
    assert proc.size == 8 and proc.max_wait_ms == 50
    # rate_limiting: the per-key limit is declared.
    assert q.flow.rate_limits["api:*"].max == 100
    # cost_optimization retention: the DLQ limit is a rule of the retention service.
    assert adv.retention.rules["dlq"].count == 1000
    # compliance: its period is a rule, and the idempotency window fits inside it.
    assert adv.retention.rules["completed"].period_ms == 60_000
    # workflows.default_timeout_ms: a step without a timeout gets it.
    q.process("s", lambda job: None)
    wid = await adv.workflows.execute_workflow(
        "wf-1",
        [
            {"name": "a", "job_name": "s", "data": {}},
            {"name": "b", "job_name": "s", "data": {}, "options": {"timeout": 5000}},
        ],
    )
    a, b = await q.get_job_status(wid["a"]), await q.get_job_status(wid["b"])
    assert a is not None and b is not None
    assert a.options["timeout"] == 45_000 and b.options["timeout"] == 5000
    plain = await q.add_job("s", {})
    info = await q.get_job_status(plain)
    assert info is not None and "timeout" not in info.options


async def test_compliance_caps_the_idempotency_window(make_queue: QueueFactory) -> None:
    q = make_queue(
        "cap",
        advanced={
            "exactly_once": {"enabled": True},
            "compliance": {"enabled": True, "retention": {"failed": 5000, "completed": 9000}},
        },
    )
    assert q.idempotency_ttl == 5000
    eff = q.advanced.effective()
    assert eff["sections"]["exactly_once"]["ttl_capped_by_compliance_ms"] == 5000
    with pytest.raises(ConfigurationError, match="longer than the shortest compliance retention"):
        make_queue(
            "cap2",
            advanced={
                "exactly_once": {"enabled": True, "ttl_ms": 10_000},
                "compliance": {"enabled": True, "retention": {"completed": 5000}},
            },
        )


async def test_global_queue_section_gives_a_manager_and_region_lag_alerts_wait(
    make_queue: QueueFactory,
) -> None:

    with pytest.raises(ConfigurationError, match="2 to 16 regions"):
        make_queue("f", advanced={"global_queue": {"enabled": True}})
    regions = [
        {"region": "us-east-1", "redis": "memory://adv-us", "is_primary": True},
        {"region": "eu-west-1", "redis": "memory://adv-eu"},
    ]
    q = make_queue("g", advanced={"global_queue": {"enabled": True, "regions": regions}})
    m = q.advanced.global_queue
    assert isinstance(m, GlobalQueueManager)
    await m.initialize()
    try:
        assert (m.name, m.primary, m.epoch) == ("g", "us-east-1", 1)
        assert await m.add_job("x", {})
    finally:
        await m.close()
    lag_rule = {"name": "lag", "metric": "region_lag_ms", "threshold": 5000}
    with pytest.raises(ConfigurationError, match=r"enable advanced\.global_queue too"):
        make_queue("f", advanced={"monitoring": {"enabled": True, "alerts": [lag_rule]}})
    # With the section: the queue carries the manager's lag gauge, which the rule reads
    # (no value before the manager is initialized: the rule is left as it is).
    regions = [{**r, "redis": r["redis"] + "-2"} for r in regions]
    q = make_queue(
        "h",
        advanced={
            "global_queue": {"enabled": True, "regions": regions},
            "monitoring": {"enabled": True, "alerts": [lag_rule]},
        },
    )
    assert "region_lag_ms" in q.gauges and q.advanced.alerts is not None
    assert await q.advanced.alerts.values() == {}
    m = q.advanced.global_queue
    await m.initialize()
    try:
        await m.add_job("x", {})
        values = await wait_until(q.advanced.alerts.values, 5)
        assert values["lag"] >= 0
    finally:
        await m.close()


@pytest.mark.parametrize("quotas", [True, False])
async def test_multi_tenancy_section_enables_tenancy_with_its_settings(
    make_queue: QueueFactory, quotas: bool
) -> None:
    q = make_queue(
        "mt",
        advanced={
            "multi_tenancy": {
                "enabled": True,
                "enable_resource_quotas": quotas,
                "fair_dispatch": True,
                "quantum": 3,
            }
        },
    )
    reg = q.advanced.multi_tenancy
    assert isinstance(reg, TenantRegistry) and reg.prefix == q.keys.prefix
    await reg.create_tenant({"tenant_id": "acme", "quota": {"max_queue_size": 4}})
    await q.add_jobs([("x", {}, {"tenant_id": "acme"}) for _ in range(4)])
    if quotas:
        with pytest.raises(QuotaExceededError, match="max_queue_size of 4"):
            await q.add_job("x", {}, tenant_id="acme")
    else:  # tracked, not limited
        await q.add_job("x", {}, tenant_id="acme")
    assert (await reg.get_tenant_usage("acme")).queued == (4 if quotas else 5)
    # Fair dispatch with the section's quantum: 3 tickets out, the rest in the lane.
    stats = await q.get_stats()
    assert (stats.waiting, stats.pending) == (3, 1 if quotas else 2)
    with pytest.raises(JobRefusedError, match="does not exist in queue"):
        await q.add_job("x", {}, tenant_id="nobody")
    eff = q.advanced.effective()["sections"]["multi_tenancy"]["effective"]
    assert (eff["quantum"], eff["fair_dispatch"], eff["enforce_quotas"]) == (3, True, quotas)


@pytest.mark.parametrize(
    ("section", "needle"),
    [
        ({"enabled": True, "quantum": 0}, "advanced.multi_tenancy.quantum"),
        ({"enabled": True, "quantum": 10_000}, "advanced.multi_tenancy.quantum"),
        ({"enabled": True, "fair_dispatch": "yes"}, "advanced.multi_tenancy.fair_dispatch"),
        ({"enabled": True, "enable_resource_quotas": 1}, "enable_resource_quotas"),
        ({"enabled": True, "enableResourceQuotas": False}, "did you mean 'enable_resource_quotas'"),
    ],
)
def test_multi_tenancy_section_values_are_checked(section: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigurationError, match=needle):
        AdvancedQueueConfig(multi_tenancy=section)


async def test_missing_extra_says_what_to_install(
    make_queue: QueueFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec

    def without(name: str, *args: Any, **kwargs: Any) -> Any:
        if name in ("cryptography", "httpx", "prometheus_client", "zstandard"):
            return None
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", without)
    # Both forms: from the package index, and from a clone (before it is published).
    for cfg, needle in [
        (
            {"encryption": {"enabled": True}},
            'pip install "kitium-job-queue[encryption]" (or pip install -e ".[encryption]"',
        ),
        (
            {"webhooks": {"enabled": True}},
            'pip install "kitium-job-queue[webhooks]" (or pip install -e ".[webhooks]"',
        ),
        (
            {"monitoring": {"enabled": True, "prometheus": True}},
            'pip install "kitium-job-queue[prometheus]" (or pip install -e ".[prometheus]"',
        ),
        (
            {"cost_optimization": {"enabled": True, "compression": {"algorithm": "zstd"}}},
            'pip install "kitium-job-queue[compression]" (or pip install -e ".[compression]"',
        ),
    ]:
        q = None
        with pytest.raises(ConfigurationError) as err:
            q = make_queue("x", advanced=cfg)
        assert needle in str(err.value), str(err.value)
        assert q is None
    # Nothing was half-enabled by a refused configuration: a later queue of that name
    # starts clean (the refusal came before any feature was installed).
    monkeypatch.setattr(importlib.util, "find_spec", real)


async def test_a_refused_configuration_installs_nothing(make_queue: QueueFactory) -> None:
    bad = brief_example(global_queue={"enabled": True})
    with pytest.raises(ConfigurationError):
        make_queue("atomic", advanced=bad)
    q = make_queue("atomic")
    assert "message_group_id" not in q.jobspec and "subject_id" not in q.jobspec
    with pytest.raises(ConfigurationError, match="needs compliance"):
        await q.add_job("n", {}, subject_id="u1")


@pytest.fixture
def app(tmp_path: Path, redis_url: str, prefix: str) -> Iterator[str]:
    source = (
        "from kitium_queue import JobQueue\n"
        "KEY = " + repr(KEY) + "\n"
        f"queue = JobQueue('cfg', redis='redis://:hunter2@127.0.0.1:1/0', prefix={prefix!r},\n"
        "    worker={'concurrency': 7}, advanced={\n"
        "        'fifo': {'enabled': True, 'group_concurrency': 2},\n"
        "        'encryption': {'enabled': True, 'keys': [{'key_id': 'k1', 'key': KEY}]},\n"
        "        'webhooks': {'enabled': True, 'secrets': {'wh': 'whsec_topsecret'}},\n"
        "        'cost_optimization': {'enabled': True, 'compression': {'algorithm': 'zlib'}},\n"
        "        'multi_tenancy': {'enabled': True, 'quantum': 8, 'fair_dispatch': False},\n"
        "    })\n"
    )
    with app_module(tmp_path, source, "kq_cli_cfg") as module:
        yield f"{module}:queue"


def test_config_show_prints_the_effective_configuration(
    app: str, redis_url: str, prefix: str
) -> None:
    runner = CliRunner()
    out = runner.invoke(main, ["config", "show", app, "--json", "--redis", redis_url])
    assert out.exit_code == 0, out.output
    eff = json.loads(out.stdout)
    assert eff["queue"] == "cfg" and eff["server"]["redis_version"]
    assert eff["core"]["worker"]["concurrency"] == 7
    assert eff["sections"]["fifo"]["enabled"] and eff["sections"]["fifo"]["group_concurrency"] == 2
    comp = eff["sections"]["cost_optimization"]["compression"]
    assert comp["effective"]["algorithm"] == "zlib"
    assert eff["sections"]["encryption"]["key_ids"] == ["k1"]
    assert "keys" not in eff["sections"]["encryption"]
    assert "secrets" not in eff["sections"]["webhooks"]
    assert "message_group_id" in eff["job_options"]["fifo-groups"]
    assert eff["codecs"][0] == "CompressionCodec"
    assert eff["sections"]["global_queue"]["available"] is True  # features/regions exists
    tenancy = eff["sections"]["multi_tenancy"]
    assert (tenancy["enabled"], tenancy["quantum"], tenancy["fair_dispatch"]) == (True, 8, False)
    assert tenancy["effective"] == {
        "quantum": 8,
        "fair_dispatch": False,
        "enforce_quotas": True,
        "registry": f"{prefix}:{{!access}}:tenants",
    }
    assert "tenant_id" in eff["job_options"]["multi-tenancy"]
    assert eff["retention"] is None  # no limits nor periods configured
    text = runner.invoke(main, ["config", "show", app, "--redis", redis_url])
    assert text.exit_code == 0, text.output
    assert "sections.fifo.group_concurrency\t2" in text.stdout
    for secret in (KEY, "whsec_topsecret", "hunter2"):
        assert secret not in out.output + text.output
    one = runner.invoke(main, ["config", "show", app, "--section", "fifo", "--redis", redis_url])
    assert one.exit_code == 0 and "sections.fifo.enabled\ttrue" in one.stdout
    assert "encryption" not in one.stdout
    bad = runner.invoke(main, ["config", "show", app, "--section", "fifoo", "--redis", redis_url])
    assert bad.exit_code == 2 and "no section 'fifoo'" in bad.output


async def test_config_is_frozen_and_round_trips() -> None:
    cfg = AdvancedQueueConfig.parse(brief_example())
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.fifo.enabled = False  # type: ignore[misc]
    again = AdvancedQueueConfig.parse(json.loads(json.dumps(_for_json(cfg.to_dict()))))
    assert again.to_dict() == cfg.to_dict()
    assert cfg.section("fifo") is cfg.fifo
    with pytest.raises(ConfigurationError, match="did you mean 'fifo'"):
        cfg.section("fiffo")


def _for_json(d: dict[str, Any]) -> dict[str, Any]:
    # to_dict hides keys and secrets: put the example's key back to rebuild the config.
    d["encryption"].pop("key_ids")
    d["encryption"]["keys"] = [{"key_id": "k1", "key": KEY}]
    return d


async def test_section_disabled_by_default_does_nothing(make_queue: QueueFactory) -> None:
    q = make_queue("off", advanced={"fifo": {}, "compliance": {"redact_fields": ["a"]}})
    assert q.advanced.config.enabled_sections() == []
    assert "message_group_id" not in q.jobspec and not q.ctx.redactors
    plain = make_queue("plain")
    assert plain.advanced.config.enabled_sections() == []
    assert plain.advanced.effective()["enabled_sections"] == []


@pytest.mark.parametrize(
    ("section", "value", "needle"),
    [
        # Not a list of paths: a clear error, never a TypeError from iterating it.
        ("compliance", {"redact_fields": math.inf}, "must be a list of paths"),
        ("compliance", {"redact_fields": 3}, "got int"),
        ("compliance", {"redact_fields": {"a": 1}}, "got dict"),
        ("compliance", {"redact_fields": ["x"] * 201}, "more than 200 paths"),
        # A region given as nothing: which field it needs.
        ("global_queue", {"regions": [None]}, r"regions\[0\] needs 'region'"),
    ],
)
def test_wrong_shapes_are_configuration_errors(section: str, value: Any, needle: str) -> None:
    with pytest.raises(ConfigurationError, match=needle):
        AdvancedQueueConfig.parse({section: value})
