"""Hostile input and damaged keys in alerts, flow control, partitioned queues and the
advanced configuration: a clear ``ConfigurationError`` for a bad value, and a key of
the feature written by hand (another type, a number that is no time) neither stops the
feature for every rule or job nor leaves a change half-recorded."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest
import redis.asyncio

from helpers import QueueFactory, wait_for_status, wait_until
from kitium_queue import (
    AdvancedQueueConfig,
    AlertManager,
    AlertRule,
    ConfigurationError,
    JobStatus,
    PartitionedQueue,
)
from kitium_queue.features.alerts import BUCKET_MS

pytestmark = pytest.mark.redis_only


def _monitoring(*rules: dict[str, Any]) -> dict[str, Any]:
    return {"monitoring": {"enabled": True, "alerts": list(rules)}}


async def test_a_damaged_alert_log_records_no_half_change_and_reports_it_once_repaired(
    make_queue: QueueFactory, redis_client: redis.asyncio.Redis
) -> None:
    q = make_queue(
        "alog", advanced=_monitoring({"name": "backlog", "metric": "queue_depth", "threshold": 1})
    )
    m: AlertManager = q.advanced.alerts
    await q.add_job("n", {})
    log_key = q.keys.extra("alerts:log")
    await redis_client.set(log_key, "written by hand")
    assert await m.evaluate(1) == []
    # Nothing was written: the rule is not recorded as firing without its log entry.
    (state,) = await m.states()
    assert (state.state, state.since_ms) == ("ok", None)
    await redis_client.delete(log_key)
    (fired,) = await m.evaluate(1)
    assert (fired.rule, fired.state) == ("backlog", "firing")
    assert [t.id for t in await m.history()] == [fired.id]


async def test_damaged_alert_keys_read_as_unknown_not_as_an_error(
    make_queue: QueueFactory, redis_client: redis.asyncio.Redis
) -> None:
    q = make_queue(
        "astate",
        advanced=_monitoring({"name": "backlog", "metric": "queue_depth", "threshold": 1}),
    )
    m: AlertManager = q.advanced.alerts
    await q.add_job("n", {})
    await redis_client.set(q.keys.extra("alerts:state"), "x")
    await redis_client.set(q.keys.extra("alerts:log"), "x")
    assert [(s.rule, s.state, s.since_ms) for s in await m.states()] == [
        ("backlog", "unknown", None)
    ]
    assert await m.history() == []
    assert await m.evaluate(1) == []  # recorded nothing, raised nothing
    assert await redis_client.get(q.keys.extra("alerts:state")) == b"x"


async def test_a_damaged_outcome_bucket_does_not_stop_every_rule(
    make_queue: QueueFactory, redis_client: redis.asyncio.Redis
) -> None:
    q = make_queue(
        "abucket",
        advanced=_monitoring(
            {"name": "backlog", "metric": "queue_depth", "threshold": 1},
            {"name": "fails", "metric": "failure_rate", "threshold": 50, "min_samples": 1},
        ),
    )
    m: AlertManager = q.advanced.alerts
    await q.add_job("n", {})
    now = int(time.time() * 1000) // BUCKET_MS
    for b in range(now - 2, now + 3):  # the current bucket, whatever the clock's step
        await redis_client.set(q.keys.extra(f"alerts:o:{b}"), "x")
    assert await m.values() == {"backlog": 1.0, "fails": 0.0}
    (fired,) = await m.evaluate(1)
    assert (fired.rule, fired.state) == ("backlog", "firing")


@pytest.mark.parametrize("attr", ["threshold", "clear_below"])
def test_an_alert_figure_beyond_any_float_is_a_configuration_error(attr: str) -> None:
    rule: dict[str, Any] = {"name": "a", "metric": "queue_depth", "threshold": 1}
    rule[attr] = 10**400 if attr == "threshold" else -(10**400)
    with pytest.raises(ConfigurationError, match=f"alert rule 'a': {attr} must be a finite"):
        AdvancedQueueConfig.parse(_monitoring(rule))


@pytest.mark.parametrize("breaker_id", [5, "", "\x1b[31mapi", "a b"])
def test_an_alert_breaker_id_that_names_no_breaker_is_refused(breaker_id: Any) -> None:
    with pytest.raises(ConfigurationError, match="alert rule 'open': breaker_id: invalid") as info:
        AlertRule("open", "breaker_open", 1, breaker_id=breaker_id)
    assert "\x1b" not in str(info.value)


@pytest.mark.parametrize("limit", [math.nan, "10", 2.5, None])
async def test_the_alert_history_limit_must_be_an_int(make_queue: QueueFactory, limit: Any) -> None:
    q = make_queue(
        "ahist", advanced=_monitoring({"name": "b", "metric": "queue_depth", "threshold": 1})
    )
    with pytest.raises(ConfigurationError, match="alert history limit must be an int"):
        await q.advanced.alerts.history(limit)


async def test_a_rate_window_opened_in_the_future_does_not_hold_its_key(
    make_queue: QueueFactory, redis_client: redis.asyncio.Redis
) -> None:
    q = make_queue("rlfuture")
    q.set_rate_limit("k*", max=1, duration=1000)
    done: list[str] = []
    q.process("n", lambda job: done.append(job.id))
    jid = await q.add_job("n", {}, rate_limit_key="k1")
    far = int(time.time() * 1000) + 10**12  # a start written by hand, decades ahead
    await redis_client.hset(q.keys.extra("rl:k1"), mapping={"w": far, "n": 5})
    assert [r.code for r in (await q.explain(jid)).reasons if r.code == "rate-limit"] == []
    await q.start(concurrency=1)
    await wait_for_status(q, jid, JobStatus.COMPLETED, timeout=10)
    assert done == [jid]


async def test_a_damaged_concurrency_owner_hash_parks_no_job_for_good(
    make_queue: QueueFactory, redis_client: redis.asyncio.Redis
) -> None:
    q = make_queue("ccof")
    q.set_concurrency_limit("k*", 1)
    await redis_client.set(q.keys.extra("cc-of"), "written by hand")
    ids = [await q.add_job("n", {}, concurrency_key="k1") for _ in range(3)]
    q.process("n", lambda job: None)
    await q.start(concurrency=3)

    async def all_done() -> bool:
        infos = [await q.get_job_status(i) for i in ids]
        return all(i is not None and i.status is JobStatus.COMPLETED for i in infos)

    await wait_until(all_done, timeout=10, message="every job of the key to complete")
    # No member of the key's running set is left behind to hold its slot.
    assert await redis_client.scard(q.keys.extra("cc:k1")) == 0


@pytest.mark.parametrize("concurrency", [0, True, "3", 2.5, math.nan])
async def test_a_partitioned_worker_checks_its_concurrency(concurrency: Any) -> None:
    pq = PartitionedQueue("pc", partitions=2, redis="memory://")
    try:
        with pytest.raises(ConfigurationError, match="concurrency must be an int >= 1"):
            await pq.start(concurrency=concurrency)
        assert pq.workers == []
    finally:
        await pq.close()


@pytest.mark.parametrize(
    ("field", "mapping", "needle"),
    [
        ("per_key", {None: {"max": 1}}, "per_key key must be a non-empty string"),
        ("per_key", {5: {"max": 1}}, "per_key key must be a non-empty string"),
        ("per_key", {"a*b": {"max": 1}}, "per_key key: invalid key pattern 'a\\*b'"),
        ("per_key", {"k\x1b[2J": {"max": 1}}, "per_key key must be .* U\\+001B"),
        ("concurrency_per_key", {5: 2}, "concurrency_per_key key must be a non-empty"),
        ("concurrency_per_key", {"a*b": 2}, "concurrency_per_key key: invalid key pattern"),
    ],
)
def test_rate_limiting_patterns_are_checked_when_the_section_is_built(
    field: str, mapping: dict[Any, Any], needle: str
) -> None:
    with pytest.raises(ConfigurationError, match=f"advanced.rate_limiting.{needle}"):
        AdvancedQueueConfig.parse({"rate_limiting": {"enabled": False, field: mapping}})
