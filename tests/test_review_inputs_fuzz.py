"""Hostile input to the public core API, the CLI and the configuration, on a real Redis.

The defects these tests pin down: ``default_job_options`` holding a ``job_id`` or an
``idempotency_key`` made every job after the first a silent duplicate of it (its data
lost); a redis URL path that is not one database number (``/x``, ``/1/2``) was read by
redis-py as another database (0, 12); a URL holding a control character or a lone
surrogate was accepted, and its connection error could not even be printed; a hand-
written count or timestamp far out of range (``9``*40, ``1.5e300``) was read as a
300-digit number without a word in ``damaged``; an ``add_jobs`` item with both
``options`` and ``opts`` dropped one of them unseen. The other tests record what held
under the same inputs (a clear error, nothing written, other jobs unaffected).
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from click.testing import CliRunner

from helpers import app_module
from kitium_queue import JobQueue, JobStatus
from kitium_queue.cli import EXIT_USAGE, main
from kitium_queue.errors import ConfigurationError, KitiumQueueError, SerializationError

pytestmark = pytest.mark.redis_only


def _deep(n: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(n):
        value = [value]
    return value


# ---------------------------------------------------------------------------- defects
@pytest.mark.parametrize("option", ["job_id", "idempotency_key"])
async def test_default_job_options_refuse_one_jobs_identity(
    redis_url: str, prefix: str, redis_client: aioredis.Redis, option: str
) -> None:
    """Was: accepted, and the second add_job returned the first job's id while its data
    was dropped."""
    with pytest.raises(ConfigurationError, match=rf"default_job_options: {option} names one"):
        JobQueue("dflt", redis=redis_url, prefix=prefix, default_job_options={option: "k-1"})
    assert not [k async for k in redis_client.scan_iter(match=f"{prefix}:*")]
    # The rest of default_job_options is unaffected; a per-job id is still fine.
    q = JobQueue("dflt", redis=redis_url, prefix=prefix, default_job_options={"attempts": 2})
    try:
        a = await q.add_job("n", {"v": 1}, **{option: "k-1"})
        b = await q.add_job("n", {"v": 2})
        assert a != b
        info = await q.get_job_status(b)
        assert info is not None and info.data == {"v": 2} and info.max_attempts == 2
    finally:
        await q.close()


@pytest.mark.parametrize("path", ["/x", "/1/2", "/ 3", "//", "/0x1"])
def test_redis_url_path_must_be_one_database_number(redis_url: str, path: str) -> None:
    """Was: accepted; redis-py read ``/x`` as database 0 and ``/1/2`` as database 12."""
    base = redis_url.rsplit("/", 1)[0] if redis_url.count("/") > 2 else redis_url
    with pytest.raises(ConfigurationError, match="one database number"):
        JobQueue("u", redis=base + path)


def test_redis_url_paths_that_are_database_numbers_still_work(redis_url: str) -> None:
    base = redis_url.rsplit("/", 1)[0] if redis_url.count("/") > 2 else redis_url
    for path in ("", "/", "/0", "/3", "/3/", "/%33"):
        JobQueue("u", redis=base + path)
    JobQueue("u", redis="unix:///tmp/kq-nonexistent.sock?db=2")


@pytest.mark.parametrize(
    "url",
    ["redis://\x00", "redis://h\ud800:6379/0", "redis://u:p\x01w@h:6379/0", "redis://h%00:1/0"],
)
def test_redis_url_with_control_characters_is_refused_printably(url: str) -> None:
    """Was: accepted; the first connection failed with a message carrying the raw
    character (a lone surrogate: a message that cannot be printed or logged)."""
    with pytest.raises(ConfigurationError) as err:
        JobQueue("u", redis=url)
    text = str(err.value)
    text.encode("utf-8")  # printable: no lone surrogate
    assert "control character" in text or "lone surrogate" in text
    assert not any(ord(c) < 32 for c in text)
    assert "p\\x01w" not in text  # the password stays redacted


def test_cli_redis_option_with_a_bad_database_path_is_a_usage_error(
    tmp_path: Path, redis_url: str, prefix: str
) -> None:
    """Was: exit 1 "job x not found" after reading database 0."""
    source = f"from kitium_queue import JobQueue\nqueue = JobQueue('c', prefix={prefix!r})\n"
    base = redis_url.rsplit("/", 1)[0] if redis_url.count("/") > 2 else redis_url
    with app_module(tmp_path, source, "kq_review_inputs") as module:
        app = f"{module}:queue"
        res = CliRunner().invoke(main, ["jobs", "show", app, "x", "--redis", base + "/x"])
    assert res.exit_code == EXIT_USAGE, res.output
    assert "one database number" in res.output


async def test_out_of_range_counts_and_timestamps_read_as_damage(
    redis_url: str, prefix: str, redis_client: aioredis.Redis
) -> None:
    """Was: read as 40-digit numbers (beyond what JSON consumers hold exactly), with
    ``damaged`` None."""
    q = JobQueue("rb", redis=redis_url, prefix=prefix)
    try:
        edits = {
            "j-a": {"a": "9" * 40},
            "j-ts": {"ts": "9" * 30},
            "j-f": {"ts": "1.5e300"},
            "j-digits": {"ps": "1" * 5000},
        }
        for jid in [*edits, "j-good"]:
            await q.add_job("n", {"id": jid}, job_id=jid)
        for jid, fields in edits.items():
            await redis_client.hset(q.keys.job(jid), mapping=fields)
        for jid in edits:
            info = await q.get_job_status(jid)
            assert info is not None and info.damaged, jid
            assert len(info.damaged) < 400
            for value in (info.attempts, info.created_at, info.started_at):
                assert value is None or abs(value) <= 2**53, (jid, value)
        good = await q.get_job_status("j-good")
        assert good is not None and good.damaged is None and good.data == {"id": "j-good"}
        listed = await q.get_jobs_by_status(JobStatus.WAITING)
        assert sorted(j.id for j in listed) == sorted([*edits, "j-good"])
    finally:
        await q.close()


async def test_add_jobs_item_with_options_and_opts_is_refused(
    redis_url: str, prefix: str, redis_client: aioredis.Redis
) -> None:
    """Was: ``opts`` dropped unseen (here: its priority)."""
    q = JobQueue("b", redis=redis_url, prefix=prefix)
    try:
        item = {"name": "n", "data": {}, "options": {}, "opts": {"priority": 5}}
        with pytest.raises(ConfigurationError, match="add_jobs item 1: give options or opts"):
            await q.add_jobs([("n", {}), item])
        assert (await q.get_stats()).waiting == 0
    finally:
        await q.close()


# ---------------------------------------------------------------------------- held
HOSTILE_OPTIONS: list[dict[str, Any]] = [
    {"job_id": ""},
    {"job_id": "x" * 10_240},
    {"job_id": "a\ud800"},
    {"job_id": "a\x00b"},
    {"job_id": "\x1b[2J"},
    {"job_id": "123"},
    *(
        {name: value}
        for name in ("priority", "delay", "attempts", "timeout", "jitter", "backoff")
        for value in (math.nan, math.inf, -math.inf, 2**63, True, "5", decimal.Decimal(1), [])
    ),
    {"priority": -0.0},
    {"atempts": 3},
    {"backoff": {"type": "fixed", "delay": 1, "extra": 1}},
]


async def test_hostile_job_options_are_refused_clearly_and_write_nothing(
    redis_url: str, prefix: str, redis_client: aioredis.Redis
) -> None:
    q = JobQueue("h", redis=redis_url, prefix=prefix)
    try:
        sentinel = await q.add_job("n", {"s": 1}, job_id="sentinel")
        before = await redis_client.hgetall(q.keys.job(sentinel))
        for opts in HOSTILE_OPTIONS:
            with pytest.raises(ConfigurationError) as err:
                await q.add_job("n", {"v": 1}, **opts)
            text = str(err.value)
            text.encode("utf-8")
            assert len(text) < 2_000 and not any(ord(c) < 32 for c in text), opts
            assert next(iter(opts)).strip("a") in text or "attempts" in text, (opts, text)
        assert (await q.get_stats()).waiting == 1
        assert await redis_client.hgetall(q.keys.job(sentinel)) == before
    finally:
        await q.close()


@pytest.mark.parametrize(
    "data",
    [
        {1},
        b"x",
        datetime.datetime(2024, 1, 1),
        decimal.Decimal("1.1"),
        object(),
        _deep(10_000),
        {1: 2},
        {"a": math.nan},
        2**64,
        "\ud800",
        {"k\ud800": 1},
    ],
    ids=lambda d: type(d).__name__,
)
async def test_non_json_data_is_a_serialization_error_and_a_batch_writes_nothing(
    redis_url: str, prefix: str, data: Any
) -> None:
    q = JobQueue("d", redis=redis_url, prefix=prefix)
    try:
        with pytest.raises(SerializationError, match="cannot be serialized to JSON"):
            await q.add_job("n", data)
        with pytest.raises(SerializationError, match=r"^add_jobs item 1: "):
            await q.add_jobs([("n", {"a": 1}), ("n", data), ("n", {"c": 3})])
        assert (await q.get_stats()).waiting == 0
    finally:
        await q.close()


async def test_a_100_mb_payload_is_refused_with_the_bound(redis_url: str, prefix: str) -> None:
    q = JobQueue("big", redis=redis_url, prefix=prefix)
    try:
        with pytest.raises(KitiumQueueError, match="above max_payload_bytes=1048576"):
            await q.add_job("n", "x" * (100 * 1024 * 1024))
    finally:
        await q.close()


@pytest.mark.parametrize(
    ("name", "prefix_value"),
    [
        ("{a}", "p"),
        ("a b", "p"),
        ("x" * 1024, "p"),
        ("a\ud800", "p"),
        ("*", "p"),
        ("q", "{p}"),
        ("q", "p\x00"),
        ("q", "x" * 1024),
    ],
)
def test_queue_names_and_prefixes_with_key_characters_are_refused(
    name: str, prefix_value: str
) -> None:
    with pytest.raises(ConfigurationError, match=r"invalid (queue name|key prefix)"):
        JobQueue(name, prefix=prefix_value)


@pytest.mark.parametrize(
    "advanced",
    [
        {"fifoo": {}},
        {"fifo": {"enabeld": True}},
        {"fifo": {"enabled": "yes"}},
        {"monitoring": {"enabled": True, "alerts": [{"name": "b", "treshold": 5}]}},
        {"compliance": {"enabled": True, "retention": {"completd": 5}}},
        {"exactly_once": {"enabled": True, "ttl_ms": math.nan}},
    ],
)
def test_advanced_config_mistakes_name_the_path(advanced: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match=r"advanced"):
        JobQueue("adv", advanced=advanced)


@pytest.fixture
def evil_app(tmp_path: Path, redis_url: str, prefix: str) -> Iterator[str]:
    source = (
        "from kitium_queue import JobQueue\n"
        f"queue = JobQueue('ev', redis={redis_url!r}, prefix={prefix!r})\n"
    )
    with app_module(tmp_path, source, "kq_review_evil") as module:
        yield f"{module}:queue"


def test_cli_escapes_a_hand_written_name_and_data(
    evil_app: str, redis_url: str, prefix: str
) -> None:
    async def seed() -> None:
        q = JobQueue("ev", redis=redis_url, prefix=prefix)
        try:
            await q.add_job("n", {"t": "\x1b[2J\u202e"}, job_id="e-1")
            client = await q.ctx.client()
            await client.hset(q.keys.job("e-1"), mapping={"n": "\x1b[2Jevil", "e": "\x07x"})
        finally:
            await q.close()

    asyncio.run(seed())
    for args in (["jobs", "list", evil_app], ["jobs", "show", evil_app, "e-1"]):
        res = CliRunner().invoke(main, ["--plain", *args])
        assert res.exit_code == 0, res.output
        assert "\x1b" not in res.output and "\x07" not in res.output and "\u202e" not in res.output
        assert "evil" in res.output
