"""Option and configuration validation: bad input gets a clear error and writes nothing."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from helpers import QueueFactory
from kitium_queue import (
    BackoffOptions,
    ConfigurationError,
    DeliveryGuarantee,
    ExtendedJobOptions,
    JobOptions,
    JobQueue,
    JobStatus,
    PayloadTooLargeError,
    SerializationError,
)
from kitium_queue.jobspec import FEATURE_HOWTO, FEATURE_OPTION_NAMES
from kitium_queue.options import MAX_PRIORITY


async def _nothing_written(queue: JobQueue) -> None:
    stats = await queue.get_stats()
    assert (stats.waiting, stats.delayed, stats.active) == (0, 0, 0), stats
    client = await queue.client()
    assert await client.xlen(queue.keys.events) == 0


# ---------------------------------------------------------------- unknown options


async def test_misspelt_job_option_is_named_with_suggestion(make_queue: QueueFactory) -> None:
    q = make_queue()
    with pytest.raises(ConfigurationError) as err:
        await q.add_job("a", {}, attemps=3)
    msg = str(err.value)
    assert "'attemps'" in msg
    assert "did you mean 'attempts'" in msg
    await _nothing_written(q)


async def test_several_unknown_options_are_all_named(make_queue: QueueFactory) -> None:
    q = make_queue()
    with pytest.raises(ConfigurationError) as err:
        await q.add_job("a", {}, priorty=3, bogus_flag=True)
    msg = str(err.value)
    assert "'priorty'" in msg and "did you mean 'priority'" in msg
    assert "'bogus_flag'" in msg
    await _nothing_written(q)


async def test_unknown_option_in_options_dict(make_queue: QueueFactory) -> None:
    q = make_queue()
    with pytest.raises(ConfigurationError, match=r"'dealy'.*did you mean 'delay'"):
        await q.add_job("a", {}, {"dealy": 100})


async def test_unknown_option_in_add_jobs_writes_nothing(make_queue: QueueFactory) -> None:
    q = make_queue()
    with pytest.raises(ConfigurationError, match=r"'remove_on_compelte'"):
        await q.add_jobs(
            [
                ("a", {"i": 1}),
                ("a", {"i": 2}, {"remove_on_compelte": True}),
            ]
        )
    await _nothing_written(q)


async def test_add_jobs_item_with_unknown_key(make_queue: QueueFactory) -> None:
    q = make_queue()
    with pytest.raises(ConfigurationError, match=r"item 1.*'payload'"):
        await q.add_jobs([{"name": "a", "data": 1}, {"name": "a", "payload": 2}])
    with pytest.raises(ConfigurationError, match=r"item 0"):
        await q.add_jobs(["just-a-name"])
    await _nothing_written(q)


@pytest.mark.parametrize(
    ("section", "value", "bad", "hint"),
    [
        ("default_job_options", {"atempts": 2}, "atempts", "attempts"),
        ("retry", {"max_atempts": 2}, "max_atempts", "max_attempts"),
        ("settings", {"lock_duraton": 1000}, "lock_duraton", "lock_duration"),
        ("worker", {"concurency": 2}, "concurency", "concurrency"),
        ("dlq", {"enable": False}, "enable", "enabled"),
    ],
)
def test_unknown_queue_config_keys_are_named(
    section: str, value: dict[str, object], bad: str, hint: str
) -> None:
    with pytest.raises(ConfigurationError) as err:
        JobQueue("q", **{section: value})  # type: ignore[arg-type]
    msg = str(err.value)
    assert f"'{bad}'" in msg and f"did you mean '{hint}'" in msg, msg


def test_unknown_backoff_and_limiter_keys() -> None:
    with pytest.raises(ConfigurationError, match=r"'dely'.*did you mean 'delay'"):
        JobQueue("q", default_job_options={"backoff": {"type": "fixed", "dely": 5}})
    with pytest.raises(ConfigurationError, match=r"'maximum'"):
        JobQueue("q", worker={"limiter": {"maximum": 5, "duration": 1000}})


# ---------------------------------------------------------------- invalid values


@pytest.mark.parametrize("priority", [-1, MAX_PRIORITY + 1, 1.5, "high", True])
async def test_invalid_priority(make_queue: QueueFactory, priority: object) -> None:
    q = make_queue()
    with pytest.raises(ConfigurationError, match=r"priority must be an int from 0 to 65535"):
        await q.add_job("a", {}, priority=priority)
    await _nothing_written(q)


async def test_priority_bounds_are_accepted(make_queue: QueueFactory) -> None:
    q = make_queue()
    low = await q.add_job("a", {}, priority=0)
    high = await q.add_job("a", {}, priority=MAX_PRIORITY)
    infos = {i: await q.get_job_status(i) for i in (low, high)}
    assert infos[low] is not None and infos[low].priority == 0
    assert infos[high] is not None and infos[high].priority == MAX_PRIORITY


@pytest.mark.parametrize("attempts", [0, -1, 2.5, "3", True])
async def test_invalid_attempts(make_queue: QueueFactory, attempts: object) -> None:
    q = make_queue()
    with pytest.raises(ConfigurationError, match=r"attempts must be an int >= 1"):
        await q.add_job("a", {}, attempts=attempts)
    await _nothing_written(q)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("delay", -1),
        ("delay", timedelta(milliseconds=-5)),
        ("delay", "1000"),
        ("delay", float("nan")),
        ("jitter", -10),
        ("timeout", -1),
    ],
)
async def test_invalid_durations(make_queue: QueueFactory, option: str, value: object) -> None:
    q = make_queue()
    with pytest.raises(ConfigurationError, match=option):
        await q.add_job("a", {}, **{option: value})
    await _nothing_written(q)


async def test_durations_accept_timedelta(make_queue: QueueFactory) -> None:
    q = make_queue()
    jid = await q.add_job("a", {}, delay=timedelta(seconds=5), timeout=timedelta(seconds=2))
    info = await q.get_job_status(jid)
    assert info is not None and info.status is JobStatus.DELAYED
    assert info.created_at is not None and info.delayed_until == info.created_at + 5000
    assert info.options["timeout"] == 2000


@pytest.mark.parametrize(
    ("backoff", "pattern"),
    [
        ({"type": "linear", "delay": 10}, "backoff type 'linear' is not supported"),
        ({"type": "custom"}, "needs strategy="),
        ({"type": "fixed", "delay": -1}, "backoff.delay must be >= 0"),
        ({"type": "fixed", "max_delay": "soon"}, "backoff.max_delay"),
        ("fast", "backoff must be a dict"),
    ],
)
async def test_invalid_backoff(make_queue: QueueFactory, backoff: object, pattern: str) -> None:
    q = make_queue()
    with pytest.raises(ConfigurationError, match=re.escape(pattern)):
        await q.add_job("a", {}, backoff=backoff)
    await _nothing_written(q)


async def test_backoff_as_number_means_fixed(make_queue: QueueFactory) -> None:
    q = make_queue()
    jid = await q.add_job("a", {}, backoff=250)
    info = await q.get_job_status(jid)
    assert info is not None and info.options["backoff"] == {
        "type": "fixed",
        "delay": 250,
        "max_delay": 30000,
    }


@pytest.mark.parametrize("job_id", ["", "a\nb", "x" * 513, 42])
async def test_invalid_job_id(make_queue: QueueFactory, job_id: object) -> None:
    q = make_queue()
    with pytest.raises(ConfigurationError, match=r"job_id must be a non-empty string"):
        await q.add_job("a", {}, job_id=job_id)
    await _nothing_written(q)


async def test_invalid_idempotency_key(make_queue: QueueFactory) -> None:
    q = make_queue()
    with pytest.raises(ConfigurationError, match=r"idempotency_key"):
        await q.add_job("a", {}, idempotency_key="")
    await _nothing_written(q)


@pytest.mark.parametrize("value", [-1, {"count": -2}, {"cnt": 1}, "yes", {"age": -1}])
async def test_invalid_retention(make_queue: QueueFactory, value: object) -> None:
    q = make_queue()
    with pytest.raises(ConfigurationError, match=r"remove_on_complete"):
        await q.add_job("a", {}, remove_on_complete=value)
    await _nothing_written(q)


@pytest.mark.parametrize("name", ["", None, 5])
async def test_invalid_job_name(make_queue: QueueFactory, name: object) -> None:
    q = make_queue()
    with pytest.raises(ConfigurationError, match=r"job name must be a non-empty string"):
        await q.add_job(name, {})  # type: ignore[arg-type]


def test_invalid_queue_settings() -> None:
    with pytest.raises(ConfigurationError, match=r"lock_duration must be at least 100 ms"):
        JobQueue("q", settings={"lock_duration": 50})
    with pytest.raises(ConfigurationError, match=r"lock_renew_time .* must be shorter"):
        JobQueue("q", settings={"lock_duration": 1000, "lock_renew_time": 1000})
    with pytest.raises(ConfigurationError, match=r"max_stalled_count must be an int >= 0"):
        JobQueue("q", settings={"max_stalled_count": -1})
    with pytest.raises(ConfigurationError, match=r"worker.concurrency must be an int >= 1"):
        JobQueue("q", worker={"concurrency": 0})
    with pytest.raises(ConfigurationError, match=r"worker.limiter.max must be an int >= 1"):
        JobQueue("q", worker={"limiter": {"max": 0, "duration": 1000}})
    with pytest.raises(ConfigurationError, match=r"worker.limiter.duration must be >= 1 ms"):
        JobQueue("q", worker={"limiter": {"max": 1, "duration": 0}})
    with pytest.raises(ConfigurationError, match=r"retry.max_attempts must be an int >= 1"):
        JobQueue("q", retry={"max_attempts": 0})


def test_invalid_queue_name_and_redis_setting() -> None:
    for name in ("", "a{b}", "line\nbreak"):
        with pytest.raises(ConfigurationError, match=r"invalid queue name"):
            JobQueue(name)
    with pytest.raises(ConfigurationError, match=r"unsupported redis URL 'http://x'"):
        JobQueue("q", redis="http://x")
    with pytest.raises(ConfigurationError, match=r"unknown redis connection option"):
        JobQueue("q", redis={"hostname": "localhost"})
    with pytest.raises(ConfigurationError, match=r"redis must be a URL"):
        JobQueue("q", redis=12345)


async def test_unknown_status_name(make_queue: QueueFactory) -> None:
    q = make_queue()
    with pytest.raises(ConfigurationError, match=r"unknown status 'done'"):
        await q.get_jobs_by_status("done")
    with pytest.raises(ConfigurationError, match=r"unknown status"):
        await q.bulk_retry("finished")


# ---------------------------------------------------------------- enterprise options

ENTERPRISE = {
    "message_group_id": "g1",
    "encrypted": True,
    "circuit_breaker_id": "payments",
    "webhook_url": "https://example.invalid/hook",
    "workflow_id": "wf-1",
    "depends_on": ["1"],
    "region": "eu",
    "tenant_id": "acme",
}


@pytest.mark.parametrize(("option", "value"), sorted(ENTERPRISE.items()))
async def test_feature_option_without_feature_is_rejected(
    make_queue: QueueFactory, option: str, value: object
) -> None:
    q = make_queue("orders")
    with pytest.raises(ConfigurationError) as err:
        await q.add_job("a", {}, **{option: value})
    msg = str(err.value)
    feature, how = FEATURE_HOWTO[option]  # named, with how to enable it
    assert f"option {option!r} needs {feature} (not enabled on queue 'orders'): {how}" in msg
    await _nothing_written(q)


def test_every_feature_option_names_its_feature() -> None:
    assert set(FEATURE_HOWTO) == set(FEATURE_OPTION_NAMES)
    assert FEATURE_HOWTO["message_group_id"] == ("FIFO groups", "create FIFOQueueManager(queue)")


async def test_feature_option_in_typed_options_is_rejected(make_queue: QueueFactory) -> None:
    q = make_queue()
    with pytest.raises(ConfigurationError, match=r"'message_group_id' needs FIFO groups"):
        await q.add_job("a", {}, ExtendedJobOptions(message_group_id="g"))
    with pytest.raises(ConfigurationError, match=r"'tenant_id' needs multi-tenancy"):
        JobQueue("q", default_job_options={"tenant_id": "acme"})
    await _nothing_written(q)


async def test_feature_option_set_to_none_is_ignored(make_queue: QueueFactory) -> None:
    q = make_queue()
    jid = await q.add_job("a", {}, message_group_id=None, region=None)
    info = await q.get_job_status(jid)
    assert info is not None and info.status is JobStatus.WAITING
    assert "message_group_id" not in info.options


async def test_delivery_guarantee(make_queue: QueueFactory) -> None:
    q = make_queue()
    jid = await q.add_job("a", {}, delivery_guarantee=DeliveryGuarantee.AT_LEAST_ONCE)
    info = await q.get_job_status(jid)
    assert info is not None and info.options["delivery_guarantee"] == "at-least-once"
    with pytest.raises(ConfigurationError, match=r"IdempotencyManager.*idempotency_key"):
        await q.add_job("a", {}, delivery_guarantee="exactly-once")
    with pytest.raises(ConfigurationError, match=r"'at-most-once'"):
        await q.add_job("a", {}, delivery_guarantee="at-most-once")
    assert (await q.get_stats()).waiting == 1


# ---------------------------------------------------------------- typed options objects


async def test_typed_options_objects_are_accepted(make_queue: QueueFactory) -> None:
    q = make_queue()
    jid = await q.add_job(
        "a",
        {},
        JobOptions(
            attempts=7,
            priority=3,
            backoff=BackoffOptions("fixed", 20, None),
            remove_on_fail=5,
        ),
    )
    info = await q.get_job_status(jid)
    assert info is not None
    assert info.max_attempts == 7 and info.priority == 3
    assert info.options["backoff"] == {"type": "fixed", "delay": 20}
    assert info.options["remove_on_fail"] == {"count": 5, "age": -1}


async def test_keyword_options_override_options_object(make_queue: QueueFactory) -> None:
    q = make_queue()
    jid = await q.add_job("a", {}, JobOptions(attempts=2, priority=1), attempts=9)
    info = await q.get_job_status(jid)
    assert info is not None and info.max_attempts == 9 and info.priority == 1


async def test_default_job_options_and_retry_section(make_queue: QueueFactory) -> None:
    q = make_queue(default_job_options={"attempts": 6, "priority": 4})
    jid = await q.add_job("a", {})
    info = await q.get_job_status(jid)
    assert info is not None and info.max_attempts == 6 and info.priority == 4
    own = await q.add_job("a", {}, attempts=2)
    info = await q.get_job_status(own)
    assert info is not None and info.max_attempts == 2

    r = make_queue("r", retry={"max_attempts": 4, "backoff_type": "fixed", "backoff_delay": 15})
    assert r.policy.attempts == 4
    assert (r.policy.backoff.type, r.policy.backoff.delay) == ("fixed", 15)


# ---------------------------------------------------------------- data


@pytest.mark.parametrize("data", [object(), {"when": {1, 2}}, b"\xff raw bytes", {"f": len}])
async def test_non_json_data_is_a_serialization_error(
    make_queue: QueueFactory, data: object
) -> None:
    q = make_queue()
    with pytest.raises(SerializationError, match=r"job data cannot be serialized to JSON"):
        await q.add_job("a", data)
    await _nothing_written(q)


async def test_non_json_data_in_bulk_writes_nothing(make_queue: QueueFactory) -> None:
    q = make_queue()
    with pytest.raises(SerializationError):
        await q.add_jobs([("a", {"ok": 1}), ("a", {"bad": object()})])
    await _nothing_written(q)


async def test_oversized_payload_is_rejected(make_queue: QueueFactory) -> None:
    q = make_queue(max_payload_bytes=1000)
    with pytest.raises(PayloadTooLargeError) as err:
        await q.add_job("big", {"blob": "x" * 2000})
    msg = str(err.value)
    assert "'big'" in msg and "max_payload_bytes=1000" in msg
    await _nothing_written(q)
    # Just under the limit is fine.
    jid = await q.add_job("big", "x" * 990)
    info = await q.get_job_status(jid)
    assert info is not None and info.data == "x" * 990


async def test_default_payload_limit_is_one_mib(make_queue: QueueFactory) -> None:
    q = make_queue()
    with pytest.raises(PayloadTooLargeError):
        await q.add_job("big", "x" * (1024 * 1024 + 1))
    await _nothing_written(q)
