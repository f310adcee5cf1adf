"""The job-option registry (``jobspec.py``): options are declared, never pre-listed."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from helpers import QueueFactory
from kitium_queue import ConfigurationError, JobQueue, JobStatus
from kitium_queue.jobspec import CORE, FEATURE_OPTION_NAMES, JobSpec, OptionSpec

CORE_NAMES = {
    "attempts",
    "delay",
    "priority",
    "backoff",
    "timeout",
    "remove_on_complete",
    "remove_on_fail",
    "job_id",
    "job_id_window",
    "lifo",
    "jitter",
    "idempotency_key",
    "delivery_guarantee",
}


def _data_center(value: Any, section: str) -> str:
    if value not in ("eu", "us"):
        raise ConfigurationError(f"{section}: data_center must be 'eu' or 'us', got {value!r}")
    return str(value).upper()


async def _stored_options(q: JobQueue, job_id: str) -> dict[str, Any]:
    client = await q.client()
    raw = await client.hget(q.keys.job(job_id), "o")
    return dict(orjson.loads(raw)) if raw else {}


def test_core_declares_its_options_through_the_registry() -> None:
    spec = JobSpec("q")
    declared = {s.name: s for s in spec.specs()}
    assert set(declared) == CORE_NAMES
    assert {s.feature for s in declared.values()} == {CORE}
    # The job's id is not kept in its stored options (it is the id); delay, priority
    # and lifo travel as script arguments and are stored too, for JobInfo.options.
    # job_id_window travels with lifo (enqueue.lua) and is not kept either.
    assert spec.unstored == {"job_id", "job_id_window"}
    # The brief's feature options are known by name only: nobody declared them.
    assert FEATURE_OPTION_NAMES.isdisjoint(declared)
    assert {"tenant_id", "message_group_id", "rate_limit_key"} <= FEATURE_OPTION_NAMES


async def test_feature_declares_a_new_option_at_runtime(make_queue: QueueFactory) -> None:
    q = make_queue()
    with pytest.raises(ConfigurationError, match=r"unknown job option: 'data_center'"):
        await q.add_job("a", {}, data_center="eu")  # unknown before the declaration
    q.declare_option("data_center", feature="placement", normalize=_data_center, default="eu")
    jid = await q.add_job("a", {}, data_center="eu")
    # Validated by the feature's normalizer, stored in its canonical form.
    assert await _stored_options(q, jid) == {"data_center": "EU"}
    info = await q.get_job_status(jid)
    assert info is not None and info.options == {"data_center": "EU"}
    with pytest.raises(ConfigurationError, match=r"job: data_center must be 'eu' or 'us'"):
        await q.add_job("a", {}, data_center="mars")
    # Typed options and default_job_options go through the same declaration.
    with pytest.raises(ConfigurationError, match=r"unknown default_job_options option"):
        make_queue("d", default_job_options={"data_center": "eu"})
    spec = q.jobspec.get("data_center")
    assert spec is not None and (spec.feature, spec.default) == ("placement", "eu")


async def test_declared_option_is_not_stored_when_asked(make_queue: QueueFactory) -> None:
    q = make_queue()
    seen: list[Any] = []

    def route(value: Any, section: str) -> Any:
        seen.append(value)
        return value

    q.declare_option("route_hint", feature="routing", normalize=route, stored=False)
    jid = await q.add_job("a", {}, route_hint="fast", attempts=2)
    assert seen == ["fast"]
    assert await _stored_options(q, jid) == {"attempts": 2}


async def test_brand_new_option_name_via_own_options(make_queue: QueueFactory) -> None:
    # own_options used to refuse names that options.py did not pre-list.
    q = make_queue()
    q.own_options("billing", ["cost_center"])
    jid = await q.add_job("a", {}, cost_center="cc-42")
    assert await _stored_options(q, jid) == {"cost_center": "cc-42"}
    with pytest.raises(ConfigurationError, match=r"cost_center must be a non-empty string"):
        await q.add_job("a", {}, cost_center="bad\nline")


async def test_undeclared_option_is_refused_with_did_you_mean(make_queue: QueueFactory) -> None:
    q = make_queue()
    q.declare_option("data_center", feature="placement", normalize=_data_center)
    with pytest.raises(ConfigurationError) as err:
        await q.add_job("a", {}, data_centre="eu")
    msg = str(err.value)
    assert "unknown job option: 'data_centre' (did you mean 'data_center'?)" in msg
    assert "data_center" in msg.split("valid options are:")[1]
    # Declarations are per queue: another queue does not know the option.
    other = make_queue("other")
    with pytest.raises(ConfigurationError, match=r"unknown job option: 'data_center'"):
        await other.add_job("a", {}, data_center="eu")
    assert (await q.get_stats()).waiting == 0


async def test_brief_option_without_its_feature(make_queue: QueueFactory) -> None:
    q = make_queue("orders")
    with pytest.raises(
        ConfigurationError,
        match=r"option 'tenant_id' needs multi-tenancy "
        r"\(not enabled on queue 'orders'\)",
    ):
        await q.add_job("a", {}, tenant_id="acme")
    q.own_options("tenancy", ["tenant_id"])
    jid = await q.add_job("a", {}, tenant_id="acme")
    info = await q.get_job_status(jid)
    assert info is not None and info.status is JobStatus.WAITING
    assert info.options == {"tenant_id": "acme"}


def test_declaration_conflicts_and_bad_names() -> None:
    q = JobQueue("q")
    q.declare_option("zone", feature="a")
    q.declare_option("zone", feature="a")  # the same feature again: replaced
    with pytest.raises(ConfigurationError, match=r"already declared by 'a'"):
        q.declare_option("zone", feature="b")
    with pytest.raises(ConfigurationError, match=r"already declared by 'core'"):
        q.jobspec.declare(OptionSpec("priority", "b", lambda v, s: v))
    with pytest.raises(ConfigurationError, match=r"Python identifier"):
        q.declare_option("not a name", feature="a")


async def test_exactly_once_needs_a_feature_that_takes_the_option_over(
    make_queue: QueueFactory,
) -> None:
    q = make_queue()
    with pytest.raises(ConfigurationError, match=r"effectively-once.*IdempotencyManager"):
        await q.add_job("a", {}, delivery_guarantee="exactly-once")
    q.own_options("exactly-once", ["delivery_guarantee"])
    jid = await q.add_job("a", {}, delivery_guarantee="exactly-once")
    assert (await _stored_options(q, jid))["delivery_guarantee"] == "exactly-once"
    with pytest.raises(ConfigurationError, match=r"'at-least-once' or 'exactly-once'"):
        await q.add_job("a", {}, delivery_guarantee="at-most-once")
