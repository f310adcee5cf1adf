"""Hostile and careless inputs at the producer and query API (issue 19).

Every bad call raises a library error (a ``KitiumQueueError``) naming what is wrong, and
no other job is affected: a bystander job enqueued before it keeps its record, its state
and the event stream is not written to. Covered, per input class:

* names, ids and keys with lone surrogates, control characters, glob characters, wrong
  types and lengths; numeric chosen ids (reserved for auto ids);
* job data that JSON cannot carry as it is (surrogates, NaN/inf, ints beyond 64 bits,
  deep nesting, non-str keys);
* every numeric option and argument outside its documented range (inf, NaN, 2**64,
  negative, bool, str), ``timeout=0.4`` kept as 1 ms;
* a bad job among 20 concurrent ``add_job`` calls coalesced into one batch;
* ``max_log_lines=0``, ``events_max_len=-1``, huge ``idempotency_ttl``;
* progress updates bounded in the event stream in bytes;
* damaged job records shown as damaged by the queries; query ``limit`` ranges.
"""

from __future__ import annotations

import asyncio
import math
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import QueueFactory, wait_for_status
from kitium_queue import (
    ConfigurationError,
    JobInfo,
    JobQueue,
    JobStatus,
    KitiumQueueError,
    SerializationError,
)
from kitium_queue.codec import MAX_DEPTH, Serializer
from kitium_queue.jobspec import POLICY_OPTIONS
from kitium_queue.limits import MAX_DELAY_MS, MAX_PROGRESS_BYTES, MAX_PROGRESS_EVENT_BYTES
from kitium_queue.options import (
    MAX_CONCURRENCY,
    MAX_COUNT,
    MAX_EVENTS_MAX_LEN,
    MAX_LOG_LINES,
    MAX_PAYLOAD_LIMIT,
    MAX_QUERY_LIMIT,
    to_int,
    to_ms,
)

SURROGATE = b"r-\xff.csv".decode("utf-8", "surrogateescape")  # 'r-\udcff.csv'

# ---------------------------------------------------------------- input classes

#: Text no name, id or key may hold: lone surrogates, C0 controls and DEL.
BAD_TEXT = {
    "surrogate": SURROGATE,
    "high-surrogate": "a\ud800b",
    "nul": "a\x00b",
    "newline": "a\nb",
    "carriage-return": "a\rb",
    "tab": "a\tb",
    "escape": "a\x1b[31mred",
    "unit-separator": "a\x1fb",
    "del": "a\x7fb",
}
#: Not a name at all.
BAD_TYPES = {"empty": "", "none": None, "int": 5, "bytes": b"name", "list": ["a"]}
#: Characters that are fine in names and ids (they never reach a key pattern).
GLOB_TEXT = ["a*b", "a?b", "[ab]", "x\\y", "{tag}", "caf\u00e9-\u65e5\u672c", "emoji-\U0001f600"]


def _nested(depth: int) -> list[Any]:
    root: list[Any] = []
    cur = root
    for _ in range(depth):
        nxt: list[Any] = []
        cur.append(nxt)
        cur = nxt
    return root


#: Job data JSON cannot carry faithfully, with a fragment of the expected message.
BAD_DATA: dict[str, tuple[Any, str]] = {
    "surrogate-value": ({"file": SURROGATE}, "lone surrogate"),
    "surrogate-key": ({SURROGATE: 1}, "lone surrogate"),
    "surrogate-in-list": (["ok", ["deep", SURROGATE]], "lone surrogate"),
    "nan": ({"x": math.nan}, "NaN or infinite"),
    "inf": ([1.0, math.inf], "NaN or infinite"),
    "-inf": ({"a": {"b": -math.inf}}, "NaN or infinite"),
    "int-2**64": ({"n": 2**64}, "64-bit"),
    "int-below-int64": (-(2**63) - 1, "64-bit"),
    "int-2**200": (2**200, "64-bit"),
    "deep-1000": (_nested(1000), f"deeper than {MAX_DEPTH}"),
    "deep-dicts": ({"a": _nested(300)}, f"deeper than {MAX_DEPTH}"),
    "int-key": ({1: "one"}, "dict key 1 (int)"),
    "none-key": ({"a": {None: 1}}, "dict key None"),
    "tuple-key": ({(1, 2): 3}, "not a str"),
    "float-nan-key": ({math.nan: 1}, "not a str"),
    "object": (object(), "cannot be serialized"),
    "set": ({"s": {1, 2}}, "cannot be serialized"),
}

#: Numeric values that are never a valid count or duration.
NON_FINITE = [math.inf, -math.inf, math.nan]
HUGE = [2**64, 10**30, 1e300, 1e17]
WRONG_TYPE = [True, False, "5", "1000", b"5", [5], {"ms": 5}, 5j]


# ---------------------------------------------------------------- invariant helpers


async def _bystander(q: JobQueue) -> tuple[str, Any]:
    """Enqueue a job that must stay untouched; return its id and a snapshot."""
    jid = await q.add_job("bystander", {"keep": [1, 2, 3]}, priority=7, attempts=4)
    return jid, await _snapshot(q, jid)


async def _snapshot(q: JobQueue, jid: str) -> Any:
    client = await q.client()
    stats = await q.get_stats()
    return (
        await client.hgetall(q.keys.job(jid)),
        (stats.waiting, stats.active, stats.delayed, stats.completed, stats.failed, stats.dlq),
        await client.xlen(q.keys.events),
        await client.get(q.keys.id),
    )


async def _refused(q: JobQueue, call: Any, error: type[Exception] = KitiumQueueError) -> str:
    """Run ``call()`` expecting a library error; check the bystander is untouched."""
    jid, before = await _bystander(q)
    with pytest.raises(error) as err:
        await call()
    assert isinstance(err.value, KitiumQueueError), type(err.value)
    assert await _snapshot(q, jid) == before
    info = await q.get_job_status(jid)
    assert info is not None and type(info) is JobInfo
    assert (info.name, info.data, info.priority, info.max_attempts) == (
        "bystander",
        {"keep": [1, 2, 3]},
        7,
        4,
    )
    return str(err.value)


def _no_raw_text(message: str, value: Any) -> None:
    """The message shows a bad text escaped (repr), never its raw characters."""
    if isinstance(value, str) and value:
        bad = [c for c in value if ord(c) < 32 or ord(c) == 127 or 0xD800 <= ord(c) <= 0xDFFF]
        for c in bad:
            assert c not in message, f"raw {c!r} in message {message!r}"


# ---------------------------------------------------------------- names, ids, keys


@pytest.mark.parametrize(
    "value",
    list(BAD_TEXT.values()) + list(BAD_TYPES.values()),
    ids=list(BAD_TEXT) + list(BAD_TYPES),
)
async def test_bad_job_name_is_refused(make_queue: QueueFactory, value: Any) -> None:
    q = make_queue()
    msg = await _refused(q, lambda: q.add_job(value, {"a": 1}), ConfigurationError)
    assert "job name must be a non-empty string" in msg
    _no_raw_text(msg, value)


# None means "not set" for an option, so it is not among the bad ids.
BAD_ID_TYPES = {k: v for k, v in BAD_TYPES.items() if v is not None}


@pytest.mark.parametrize(
    "value",
    [*BAD_TEXT.values(), *BAD_ID_TYPES.values(), "x" * 513],
    ids=[*BAD_TEXT, *BAD_ID_TYPES, "too-long"],
)
@pytest.mark.parametrize("field", ["job_id", "idempotency_key"])
async def test_bad_job_id_and_idempotency_key_are_refused(
    make_queue: QueueFactory, field: str, value: Any
) -> None:
    q = make_queue()
    msg = await _refused(q, lambda: q.add_job("a", {}, **{field: value}), ConfigurationError)
    assert f"{field} must be a non-empty string" in msg
    _no_raw_text(msg, value)


async def test_error_names_the_bad_character(make_queue: QueueFactory) -> None:
    q = make_queue()
    msg = await _refused(q, lambda: q.add_job("a", {}, job_id="ok\x00no"), ConfigurationError)
    assert "control character U+0000 at index 2" in msg and "'ok\\x00no'" in msg
    msg = await _refused(q, lambda: q.add_job(SURROGATE), ConfigurationError)
    assert "lone surrogate U+DCFF at index 2" in msg


@pytest.mark.parametrize("value", BAD_TEXT.values(), ids=BAD_TEXT.keys())
async def test_bad_feature_option_text_is_refused(make_queue: QueueFactory, value: str) -> None:
    q = make_queue()
    q.set_concurrency_limit("*", 5)  # enables the flow-control options
    msg = await _refused(q, lambda: q.add_job("a", {}, concurrency_key=value))
    assert "concurrency_key" in msg
    _no_raw_text(msg, value)


@pytest.mark.parametrize("value", BAD_TEXT.values(), ids=BAD_TEXT.keys())
async def test_unknown_option_with_bad_name_is_shown_escaped(
    make_queue: QueueFactory, value: str
) -> None:
    q = make_queue()
    msg = await _refused(q, lambda: q.add_job("a", {}, {value: 1, 7: 2}), ConfigurationError)
    assert "unknown job options" in msg
    _no_raw_text(msg, value)


@pytest.mark.parametrize("text", GLOB_TEXT)
async def test_glob_and_unicode_text_is_accepted(make_queue: QueueFactory, text: str) -> None:
    q = make_queue()
    jid, before = await _bystander(q)
    mine = await q.add_job(text, {"t": text}, job_id=f"id-{text}", idempotency_key=f"k-{text}")
    assert mine == f"id-{text}"
    info = await q.get_job_status(mine)
    assert info is not None and (info.name, info.data) == (text, {"t": text})
    assert (await q.get_job_status(jid)) is not None
    client = await q.client()
    assert await client.hgetall(q.keys.job(jid)) == before[0]


@pytest.mark.parametrize("job_id", ["3", "0", "007", "18446744073709551616"])
async def test_numeric_job_id_is_refused_with_a_hint(make_queue: QueueFactory, job_id: str) -> None:
    q = make_queue()
    msg = await _refused(
        q, lambda: q.add_job("charge", {"amt": 100}, job_id=job_id), ConfigurationError
    )
    assert "digits only" in msg and "reserved" in msg
    assert f"'order-{job_id}'" in msg


async def test_ids_that_merely_contain_digits_are_fine(make_queue: QueueFactory) -> None:
    q = make_queue()
    for job_id in ("order-3", "3a", "-3", "3.0", "\u0663"):  # the last: ARABIC-INDIC THREE
        assert await q.add_job("a", {}, job_id=job_id) == job_id


# ---------------------------------------------------------------- job data


@pytest.mark.parametrize(("data", "fragment"), BAD_DATA.values(), ids=BAD_DATA.keys())
async def test_unencodable_data_is_a_serialization_error(
    make_queue: QueueFactory, data: Any, fragment: str
) -> None:
    q = make_queue()
    msg = await _refused(q, lambda: q.add_job("a", data), SerializationError)
    assert "job data cannot be serialized to JSON" in msg and fragment in msg, msg
    assert len(msg) < 600


@pytest.mark.parametrize(("data", "fragment"), BAD_DATA.values(), ids=BAD_DATA.keys())
def test_serializer_never_raises_a_foreign_error(data: Any, fragment: str) -> None:
    with pytest.raises(SerializationError, match="result cannot be serialized"):
        Serializer().dumps(data, "result")


@pytest.mark.parametrize(
    "data",
    [
        None,
        {"x": None},
        [None, 1.5, -0.0],
        {"big": 2**64 - 1, "neg": -(2**63)},
        _nested(MAX_DEPTH - 1),
        {"k": "\u0000 is fine in data"},
    ],
    ids=["none", "null-value", "null-and-floats", "int64-bounds", "deep-ok", "nul-in-data"],
)
async def test_data_at_the_edges_round_trips(make_queue: QueueFactory, data: Any) -> None:
    q = make_queue()
    jid = await q.add_job("a", data)
    info = await q.get_job_status(jid)
    assert info is not None and info.data == data


def test_str_enum_keys_are_still_accepted() -> None:
    raw = Serializer().dumps({JobStatus.ACTIVE: 1, "b": 2})
    assert raw == b'{"active":1,"b":2}'


async def test_result_with_nan_fails_only_its_own_job(make_queue: QueueFactory) -> None:
    q = make_queue()

    @q.process("calc")
    async def calc(job: Any) -> Any:
        return {"ratio": math.nan} if job.data == "bad" else {"ratio": 0.5}

    good = await q.add_job("calc", "good")
    bad = await q.add_job("calc", "bad", attempts=1)
    await q.start()
    ok = await wait_for_status(q, good, JobStatus.COMPLETED)
    assert ok.result == {"ratio": 0.5}
    failed = await wait_for_status(q, bad, JobStatus.DLQ, JobStatus.FAILED)
    assert failed.failed_reason is not None and "NaN or infinite" in failed.failed_reason


# ---------------------------------------------------------------- one bad job in a batch


@pytest.mark.parametrize(
    "bad",
    [
        {"job_name": SURROGATE},
        {"job_name": "a", "job_id": "k\udcff"},
        {"job_name": "a", "idempotency_key": "\x00"},
        {"job_name": "a", "data": {"x": math.nan}},
        {"job_name": "a", "delay": math.inf},
        {"job_name": "a", "job_id": "17"},
    ],
    ids=["name-surrogate", "id-surrogate", "key-nul", "data-nan", "delay-inf", "numeric-id"],
)
async def test_bad_job_in_coalesced_batch_fails_alone(
    make_queue: QueueFactory, bad: dict[str, Any]
) -> None:
    q = make_queue()
    jid, before = await _bystander(q)
    bad = dict(bad)
    name, data = bad.pop("job_name"), bad.pop("data", {"bad": True})

    async def good(i: int) -> str:
        return await q.add_job("good", {"i": i}, idempotency_key=f"good-{i}")

    calls = [good(i) for i in range(10)]
    calls.append(q.add_job(name, data, **bad))
    calls += [good(i) for i in range(10, 20)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == 1 and isinstance(errors[0], KitiumQueueError), errors
    assert results.index(errors[0]) == 10
    ids = [r for r in results if isinstance(r, str)]
    assert len(set(ids)) == 20
    infos = {i.id: i for i in await q.get_jobs_by_status(JobStatus.WAITING, 100)}
    assert {infos[i].data["i"] for i in ids} == set(range(20))
    assert infos[jid].data == {"keep": [1, 2, 3]}
    client = await q.client()
    assert await client.hgetall(q.keys.job(jid)) == before[0]
    assert (await q.get_stats()).waiting == 21


async def test_bad_job_in_add_jobs_writes_nothing(make_queue: QueueFactory) -> None:
    q = make_queue()
    jid, before = await _bystander(q)
    with pytest.raises(ConfigurationError, match="job_id"):
        await q.add_jobs([("a", {"i": i}) for i in range(5)] + [("a", {}, {"job_id": "x\n"})])
    assert await _snapshot(q, jid) == before


# ---------------------------------------------------------------- numeric options


DURATION_OPTIONS = ["delay", "jitter", "timeout"]


@pytest.mark.parametrize(
    "value",
    NON_FINITE + HUGE + [-1, -0.6, timedelta(days=-1), timedelta.max] + WRONG_TYPE,
    ids=repr,
)
@pytest.mark.parametrize("option", DURATION_OPTIONS)
async def test_bad_duration_option(make_queue: QueueFactory, option: str, value: Any) -> None:
    q = make_queue()
    msg = await _refused(q, lambda: q.add_job("a", {}, **{option: value}), ConfigurationError)
    assert f"job.{option}" in msg and "ms" in msg


@pytest.mark.parametrize(
    ("option", "value"),
    [
        *[("attempts", v) for v in [0, -1, 1.0, MAX_COUNT + 1, 2**64, *NON_FINITE, *WRONG_TYPE]],
        *[("priority", v) for v in [-1, 65536, 2**64, 1.0, *NON_FINITE, *WRONG_TYPE]],
        *[("backoff", v) for v in [-1, math.inf, math.nan, 2**64, 1e17, "1000", [1]]],
        *[("backoff", {"type": "fixed", "delay": v}) for v in [math.inf, 2**64, -5, "5"]],
        *[("backoff", {"type": "exponential", "max_delay": v}) for v in [math.nan, 1e300]],
        ("backoff", {"type": 5}),
        ("backoff", {"type": "custom", "strategy": SURROGATE}),
        *[
            (opt, v)
            for opt in ("remove_on_complete", "remove_on_fail")
            for v in [
                -1,
                2**64,
                MAX_COUNT + 1,
                1.5,
                math.inf,
                "all",
                {"count": True},
                {"count": 2**64},
                {"age": math.inf},
                {"age": -1},
                {"count": -2},
                timedelta(days=-1),
            ]
        ],
        *[("lifo", v) for v in ["no", 2, [1]]],
    ],
    ids=repr,
)
async def test_bad_numeric_option(make_queue: QueueFactory, option: str, value: Any) -> None:
    q = make_queue()
    msg = await _refused(q, lambda: q.add_job("a", {}, **{option: value}), ConfigurationError)
    assert option.split("_")[0] in msg or "backoff" in msg, msg


async def test_sub_millisecond_timeout_is_not_no_limit(make_queue: QueueFactory) -> None:
    q = make_queue()
    for value, stored in [
        (0.4, 1),
        (0.5, 1),
        (1.4, 1),
        (1.6, 2),
        (timedelta(microseconds=1), 1),
        (timedelta(microseconds=1500), 2),
        (0, 0),
    ]:
        jid = await q.add_job("a", {}, timeout=value)
        info = await q.get_job_status(jid)
        assert info is not None and info.options["timeout"] == stored, value
    policy = q.policy_for({"timeout": 1})
    assert policy.timeout_ms == 1


async def test_duration_bounds_are_inclusive(make_queue: QueueFactory) -> None:
    q = make_queue()
    jid = await q.add_job(
        "a",
        {},
        delay=MAX_DELAY_MS,
        timeout=timedelta(days=3650),
        backoff={"type": "fixed", "delay": MAX_DELAY_MS},
    )
    info = await q.get_job_status(jid)
    assert info is not None and info.status is JobStatus.DELAYED
    assert info.delayed_until == (info.created_at or 0) + MAX_DELAY_MS
    with pytest.raises(ConfigurationError, match=r"job.delay must be at most 315360000000 ms"):
        await q.add_job("a", {}, delay=MAX_DELAY_MS + 1)
    # delay + jitter never goes past the maximum either.
    jid = await q.add_job("a", {}, delay=MAX_DELAY_MS, jitter=MAX_DELAY_MS)
    info = await q.get_job_status(jid)
    assert info is not None and info.delayed_until == (info.created_at or 0) + MAX_DELAY_MS


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"events_max_len": -1}, "events_max_len"),
        ({"events_max_len": MAX_EVENTS_MAX_LEN + 1}, "events_max_len"),
        ({"events_max_len": True}, "events_max_len"),
        ({"events_max_len": 1e4}, "events_max_len"),
        ({"idempotency_ttl": 1e17}, "idempotency_ttl must be at most"),
        ({"idempotency_ttl": 10**17}, "idempotency_ttl must be at most"),
        ({"idempotency_ttl": 0}, "idempotency_ttl must be >= 1 ms"),
        ({"idempotency_ttl": math.inf}, "idempotency_ttl"),
        ({"idempotency_ttl": "1d"}, "idempotency_ttl"),
        ({"max_payload_bytes": 0}, "max_payload_bytes"),
        ({"max_payload_bytes": MAX_PAYLOAD_LIMIT + 1}, "max_payload_bytes"),
        ({"max_payload_bytes": math.inf}, "max_payload_bytes"),
        ({"max_log_lines": -1}, "max_log_lines"),
        ({"max_log_lines": MAX_LOG_LINES + 1}, "max_log_lines"),
        ({"max_log_lines": math.nan}, "max_log_lines"),
        ({"settings": {"lock_duration": math.inf}}, "settings.lock_duration"),
        ({"settings": {"lock_duration": 2**64}}, "settings.lock_duration"),
        ({"settings": {"lock_renew_time": 0}}, "settings.lock_renew_time"),
        ({"settings": {"lock_renew_time": math.nan}}, "settings.lock_renew_time"),
        ({"settings": {"max_stalled_count": True}}, "settings.max_stalled_count"),
        ({"settings": {"max_stalled_count": 2**64}}, "settings.max_stalled_count"),
        ({"settings": {"max_stalled_interval": 0}}, "settings.max_stalled_interval"),
        ({"settings": {"max_stalled_interval": -math.inf}}, "settings.max_stalled_interval"),
        ({"worker": {"concurrency": MAX_CONCURRENCY + 1}}, "worker.concurrency"),
        ({"worker": {"concurrency": True}}, "worker.concurrency"),
        ({"worker": {"concurrency": 2.0}}, "worker.concurrency"),
        ({"worker": {"shutdown_timeout": math.inf}}, "worker.shutdown_timeout"),
        ({"worker": {"shutdown_timeout": -1}}, "worker.shutdown_timeout"),
        ({"worker": {"limiter": {"max": 2**64}}}, "worker.limiter.max"),
        ({"worker": {"limiter": {"max": 5, "duration": math.nan}}}, "worker.limiter.duration"),
        ({"retry": {"max_attempts": 2**64}}, "retry.max_attempts"),
        ({"retry": {"max_attempts": True}}, "retry.max_attempts"),
        ({"retry": {"backoff_delay": math.inf}}, "backoff.delay"),
        ({"retry": {"max_backoff_delay": 2**64}}, "backoff.max_delay"),
        ({"default_job_options": {"timeout": math.inf}}, "default_job_options.timeout"),
    ],
    ids=repr,
)
def test_bad_queue_setting_is_refused_at_construction(
    kwargs: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(ConfigurationError) as err:
        JobQueue("q", **kwargs)
    assert fragment in str(err.value), str(err.value)


def test_error_message_names_field_and_range() -> None:
    with pytest.raises(ConfigurationError) as err:
        JobQueue("q", events_max_len=-1)
    assert str(err.value) == "events_max_len must be an int >= 0 and <= 10000000, got -1"
    with pytest.raises(ConfigurationError) as err:
        JobQueue("q", idempotency_ttl=1e17)
    assert str(err.value) == (
        "idempotency_ttl must be at most 315360000000 ms (10 years), got 1e+17"
    )


@pytest.mark.parametrize("value", NON_FINITE + HUGE + [-1] + WRONG_TYPE, ids=repr)
def test_to_ms_and_to_int_raise_only_configuration_errors(value: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"^field "):
        to_ms(value, "field")
    with pytest.raises(ConfigurationError, match=r"^field must be an int"):
        to_int(value, "field", minimum=0, maximum=10**12)


# ---------------------------------------------------------------- flow control, schedules


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda q: q.set_rate_limit("k", max=2**64), "rate limit max"),
        (lambda q: q.set_rate_limit("k", max=True), "rate limit max"),
        (lambda q: q.set_rate_limit("k", max=5, duration=math.inf), "rate limit duration"),
        (lambda q: q.set_rate_limit("k", max=5, duration=2**64), "rate limit duration"),
        (lambda q: q.set_rate_limit("k", max=5, duration=0.0), "rate limit duration"),
        (lambda q: q.set_concurrency_limit("k", math.nan), "concurrency limit"),
        (lambda q: q.set_concurrency_limit("k", MAX_COUNT + 1), "concurrency limit"),
        (lambda q: q.set_global_concurrency(True), "global concurrency"),
        (lambda q: q.set_global_concurrency(1.5), "global concurrency"),
    ],
    ids=[
        "rate-max-2**64",
        "rate-max-bool",
        "rate-duration-inf",
        "rate-duration-2**64",
        "rate-duration-0",
        "cap-nan",
        "cap-huge",
        "global-bool",
        "global-float",
    ],
)
def test_bad_flow_control_limits(make_queue: QueueFactory, call: Any, fragment: str) -> None:
    q = make_queue()
    with pytest.raises(ConfigurationError, match=fragment):
        call(q)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"interval_ms": math.inf}, "interval_ms"),
        ({"interval_ms": 2**64}, "interval_ms"),
        ({"interval_ms": True}, "interval_ms"),
        ({"interval_ms": 1000, "start_date": math.inf}, "start_date"),
        ({"interval_ms": 1000, "end_date": 10**20}, "end_date"),
        ({"interval_ms": 1000, "limit": True}, "limit"),
        ({"interval_ms": 1000, "limit": 2**64}, "limit"),
        ({"interval_ms": 1000, "jitter": math.nan}, "jitter"),
        ({"interval_ms": 1000, "misfire_grace": 1e300}, "misfire_grace"),
    ],
    ids=repr,
)
async def test_bad_schedule_numbers(
    make_queue: QueueFactory, kwargs: dict[str, Any], fragment: str
) -> None:
    q = make_queue()
    kwargs = dict(kwargs)  # shared by both backends' runs
    every = kwargs.pop("interval_ms")
    msg = await _refused(
        q, lambda: q.schedule_every("beat", {}, every, **kwargs), ConfigurationError
    )
    assert fragment in msg


# ---------------------------------------------------------------- item 10: logs, stream


async def test_max_log_lines_zero_keeps_no_lines(make_queue: QueueFactory) -> None:
    q = make_queue(max_log_lines=0)

    @q.process("chatty")
    async def chatty(job: Any) -> str:
        for i in range(3):
            await job.log(f"line {i}")
        return "done"

    jid = await q.add_job("chatty")
    await q.start()
    info = await wait_for_status(q, jid, JobStatus.COMPLETED)
    assert info.result == "done"
    assert await q.get_job_logs(jid) == []


async def test_events_max_len_zero_is_accepted(make_queue: QueueFactory) -> None:
    q = make_queue(events_max_len=0)
    jid = await q.add_job("a", {})
    assert (await q.get_job_status(jid)) is not None


# ---------------------------------------------------------------- item 7: progress


@pytest.mark.redis_only
async def test_large_progress_does_not_fill_the_event_stream(make_queue: QueueFactory) -> None:
    q = make_queue()
    updates = 1500
    big = "p" * (MAX_PROGRESS_BYTES - 100)  # ~64 KiB encoded

    @q.process("upload")
    async def upload(job: Any) -> None:
        await job.update_progress(7)  # small: travels in the event
        for i in range(updates):
            await job.update_progress({"i": i, "pad": big})
        await job.log("log-line-marker " * 100)

    jid = await q.add_job("upload")
    await q.start()
    info = await wait_for_status(q, jid, JobStatus.COMPLETED, timeout=60)
    assert info.progress == {"i": updates - 1, "pad": big}

    client = await q.client()
    assert await client.xlen(q.keys.events) >= updates
    used = await client.memory_usage(q.keys.events, samples=0)
    assert used < 4 * 1024 * 1024, f"event stream uses {used} bytes"
    entries = await client.xrange(q.keys.events)
    progress = [f for _, f in entries if f[b"e"] == b"job-progress"]
    assert progress[0][b"progress"] == b"7"
    assert all(len(v) <= MAX_PROGRESS_EVENT_BYTES for f in progress for v in f.values())
    assert (
        progress[-1][b"progress_bytes"]
        == str(len(b'{"i":%d,"pad":"' % (updates - 1)) + len(big) + 2).encode()
    )
    # Log lines never reach the stream.
    assert not any(b"log-line-marker" in v for _, f in entries for v in f.values())

    # A reader of events() still gets the value: from the job record.
    seen = [
        ev
        async for ev in q.events(last_id="0", follow=False, block_ms=50)
        if ev.event == "job-progress"
    ]
    assert seen[0].fields["progress"] == "7"
    assert seen[-1].fields["progress"] == f'{{"i":{updates - 1},"pad":"{big}"}}'


async def test_progress_of_a_removed_job_reads_as_absent(make_queue: QueueFactory) -> None:
    q = make_queue()
    gate = asyncio.Event()

    @q.process("p")
    async def p(job: Any) -> None:
        await job.update_progress("x" * 1000)
        gate.set()

    jid = await q.add_job("p", {}, remove_on_complete=True)
    await q.start()
    await gate.wait()
    await asyncio.wait_for(_gone(q, jid), 5)
    seen = [
        ev
        async for ev in q.events(last_id="0", follow=False, block_ms=50)
        if ev.event == "job-progress"
    ]
    assert seen and "progress" not in seen[0].fields
    assert seen[0].fields["progress_bytes"] == "1002" and seen[0].job_id == jid


async def _gone(q: JobQueue, jid: str) -> None:
    while await q.get_job_status(jid) is not None:
        await asyncio.sleep(0.01)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"last_id": "abc"}, "last_id"),
        ({"last_id": SURROGATE}, "last_id"),
        ({"last_id": "99999999999999999999-0"}, "last_id"),
        ({"last_id": 0}, "last_id"),
        ({"block_ms": -1}, "block_ms"),
        ({"block_ms": math.inf}, "block_ms"),
        ({"block_ms": 0, "follow": False}, "block_ms"),
    ],
    ids=repr,
)
async def test_bad_events_arguments(
    make_queue: QueueFactory, kwargs: dict[str, Any], fragment: str
) -> None:
    q = make_queue()
    with pytest.raises(ConfigurationError, match=fragment):
        async for _ in q.events(**kwargs):
            pass


# ---------------------------------------------------------------- item 12: damaged records


DAMAGE: dict[str, tuple[dict[str, bytes], str]] = {
    "options-not-json": ({"o": b"{not json"}, "options are not valid JSON"),
    "options-not-object": ({"o": b"[1, 2]"}, "options are not a JSON object"),
    "options-bad-values": (
        {"o": b'{"attempts": "x", "backoff": 5, "timeout": 1e300}'},
        "option 'attempts' ignored",
    ),
    "unknown-state": ({"st": b"zombie"}, "unknown state b'zombie'"),
    "state-not-utf8": ({"st": b"\xff"}, "unknown state"),
    "attempts-garbage": ({"a": b"abc"}, "attempts is not a number"),
    "created-nan": ({"ts": b"nan"}, "created_at is not a number"),
    "priority-inf": ({"p": b"inf"}, "priority is not a number"),
    "progress-garbage": ({"pg": b"{oops"}, "progress is not valid JSON"),
    "name-not-utf8": ({"n": b"n\xff\xfe"}, "name is not valid UTF-8"),
    "reason-not-utf8": ({"e": b"\xc3("}, "failed_reason is not valid UTF-8"),
    "data-garbage": ({"d": b"\x00\x01"}, "data cannot be decoded"),
}


@pytest.mark.parametrize(("fields", "fragment"), DAMAGE.values(), ids=DAMAGE.keys())
async def test_damaged_record_is_shown_as_damaged(
    make_queue: QueueFactory, fields: dict[str, bytes], fragment: str
) -> None:
    q = make_queue()
    healthy = await q.add_job("ok", {"v": 1}, attempts=5)
    victim = await q.add_job("victim", {"v": 2}, attempts=6)
    client = await q.client()
    await client.hset(q.keys.job(victim), mapping=fields)

    listed = await q.get_jobs_by_status(JobStatus.WAITING)
    assert [i.id for i in listed] == [healthy, victim]
    good, bad = listed
    assert type(good) is JobInfo and good.data == {"v": 1} and good.max_attempts == 5
    assert bad.damaged
    assert fragment in bad.damaged, bad.damaged
    assert bad.status is JobStatus.WAITING
    assert bad.to_dict()["damaged"] == bad.damaged

    one = await q.get_job_status(victim)
    assert one.damaged is not None and fragment in one.damaged
    assert one.status is JobStatus.WAITING  # from the wait set when the state is unknown
    assert (await q.get_job_status(healthy)) == good


async def test_damaged_set_member_that_is_not_utf8(make_queue: QueueFactory) -> None:
    q = make_queue()
    healthy = await q.add_job("ok", {})
    client = await q.client()
    raw_id = b"bad-\xff"
    await client.hset(q.keys.job("").encode() + raw_id, mapping={"n": "x", "st": "dlq", "d": "1"})
    await client.zadd(q.keys.dlq, {raw_id: 1})
    dead = await q.get_dlq_jobs()
    assert len(dead) == 1 and dead[0].damaged
    assert dead[0].id == "bad-\\xff" and "job id is not valid UTF-8" in dead[0].damaged
    assert [i.id for i in await q.get_jobs_by_status("waiting")] == [healthy]


async def test_record_in_no_state_set_with_unknown_state(make_queue: QueueFactory) -> None:
    q = make_queue()
    jid = await q.add_job("a", {})
    client = await q.client()
    await client.zrem(q.keys.wait, jid)
    await client.hset(q.keys.job(jid), "st", "limbo")
    info = await q.get_job_status(jid)
    assert info.damaged and info.status is JobStatus.PENDING
    assert "unknown state" in info.damaged


async def test_damaged_options_fall_back_to_queue_defaults(make_queue: QueueFactory) -> None:
    q = make_queue(retry={"max_attempts": 4})
    p = q.policy_for(
        {
            "attempts": True,
            "backoff": [1],
            "timeout": "x",
            "jitter": 2**70,
            "remove_on_complete": {"count": 2**70},
            "remove_on_fail": 3,
        }
    )
    assert p.attempts == 4 and p.backoff == q.policy.backoff
    assert p.timeout_ms == q.policy.timeout_ms and p.jitter_ms == 0
    assert p.keep_completed == q.policy.keep_completed
    assert q.policy_for({"attempts": 2, "timeout": 0}).timeout_ms is None


async def test_policy_options_are_the_ones_a_policy_reads(make_queue: QueueFactory) -> None:
    # The worker keeps the queue's policy for a job that sets none of POLICY_OPTIONS:
    # each of them must change the policy, and a job with other options only (an
    # idempotency key here) runs under the queue's retry settings.
    q = make_queue(retry={"max_attempts": 3, "backoff_type": "fixed", "backoff_delay": 1})
    changed = {
        "attempts": 7,
        "backoff": {"type": "fixed", "delay": 5},
        "timeout": 1234,
        "jitter": 10,
        "remove_on_complete": {"count": 5},
        "remove_on_fail": {"count": 6},
    }
    assert set(changed) == POLICY_OPTIONS
    for key, value in changed.items():
        assert q.policy_for({key: value}) != q.policy, key
    assert q.policy_for({"idempotency_key": "k", "priority": 3}) == q.policy
    runs: list[int] = []

    @q.process("flaky")
    async def flaky(job: Any) -> None:
        runs.append(job.attempts)
        if job.attempts < 3:
            raise RuntimeError("again")

    jid = await q.add_job("flaky", {}, idempotency_key="only-a-key")
    await q.start()
    await wait_for_status(q, jid, JobStatus.COMPLETED)
    assert runs == [1, 2, 3]


# ---------------------------------------------------------------- item 13: query limits


async def test_limit_zero_returns_nothing(make_queue: QueueFactory) -> None:
    q = make_queue()
    await q.add_job("a", {})
    assert await q.get_jobs_by_status(JobStatus.WAITING, 0) == []
    assert await q.get_dlq_jobs(0) == []
    assert len(await q.get_jobs_by_status(JobStatus.WAITING, 1)) == 1
    assert len(await q.get_jobs_by_status(JobStatus.WAITING, MAX_QUERY_LIMIT)) == 1


@pytest.mark.parametrize(
    "limit",
    [-1, -100, MAX_QUERY_LIMIT + 1, 2**64, 1.5, 10.0, *NON_FINITE, *WRONG_TYPE, None],
    ids=repr,
)
async def test_bad_query_limit(make_queue: QueueFactory, limit: Any) -> None:
    q = make_queue()
    await q.add_job("a", {})
    with pytest.raises(ConfigurationError, match=r"limit must be an int >= 0 and <= 100000"):
        await q.get_jobs_by_status(JobStatus.WAITING, limit)
    with pytest.raises(ConfigurationError, match=r"limit"):
        await q.get_dlq_jobs(limit)


@pytest.mark.parametrize(
    ("job_id", "start", "end"),
    [
        (SURROGATE, 0, -1),
        (None, 0, -1),
        ("a", True, -1),
        ("a", 0, 2**64),
        ("a", 0.5, -1),
        ("a", 0, "x"),
    ],
    ids=repr,
)
async def test_bad_log_query_arguments(
    make_queue: QueueFactory, job_id: Any, start: Any, end: Any
) -> None:
    q = make_queue()
    with pytest.raises(ConfigurationError):
        await q.get_job_logs(job_id, start, end)


async def test_query_ids(make_queue: QueueFactory) -> None:
    q = make_queue()
    jid = await q.add_job("a", {})
    info = await q.get_job_status(int(jid))  # type: ignore[arg-type]
    assert info is not None and info.id == jid
    # Queries accept control characters: ids stored by older versions may hold them.
    assert await q.get_job_status("no\x00such") is None
    with pytest.raises(ConfigurationError, match="lone surrogate"):
        await q.get_job_status(SURROGATE)
    with pytest.raises(ConfigurationError, match="job_id"):
        await q.get_job_status(None)  # type: ignore[arg-type]


# ---------------------------------------------------------------- properties of the checks

ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=8),
    st.binary(max_size=4),
    st.timedeltas(),
    st.lists(st.integers(), max_size=2),
)
#: Text from every code point, lone surrogates and controls included.
ANY_TEXT = st.text(st.characters(blacklist_categories=()), max_size=40)
JSONISH = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), ANY_TEXT),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(ANY_TEXT, st.integers()), inner, max_size=4),
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(ANY_VALUE)
def test_property_to_ms_in_range_or_configuration_error(value: Any) -> None:
    try:
        ms = to_ms(value, "f", minimum=1)
    except ConfigurationError:
        return
    assert type(ms) is int and 1 <= ms <= MAX_DELAY_MS


@settings(max_examples=300, deadline=None)
@given(ANY_VALUE)
def test_property_to_int_in_range_or_configuration_error(value: Any) -> None:
    try:
        n = to_int(value, "f", minimum=0, maximum=MAX_COUNT)
    except ConfigurationError:
        return
    assert type(n) is int and 0 <= n <= MAX_COUNT


@settings(max_examples=300, deadline=None)
@given(JSONISH)
def test_property_serializer_round_trips_or_refuses(value: Any) -> None:
    s = Serializer()
    try:
        raw = s.dumps(value)
    except SerializationError:
        return
    assert s.loads(raw) == value  # exactly what was given: nothing changed on the way


@settings(max_examples=300, deadline=None)
@given(
    name=ANY_TEXT,
    job_id=st.one_of(st.none(), ANY_TEXT),
    key=st.one_of(st.none(), ANY_TEXT),
    data=JSONISH,
)
def test_property_prepared_job_is_encodable_or_refused(
    name: str, job_id: str | None, key: str | None, data: Any
) -> None:
    q = JobQueue("fuzz", redis="memory://hardening-fuzz")
    try:
        prepared = q.producer.prepare(name, data, {"job_id": job_id, "idempotency_key": key})
    except KitiumQueueError as exc:
        _no_raw_text(str(exc), name)
        return
    for arg in prepared:
        if isinstance(arg, str):
            arg.encode()  # would raise for a lone surrogate
            assert not any(ord(c) < 32 or ord(c) == 127 for c in arg)
