"""Small input defects of the public surface, on a real Redis.

Pinned here: a typo'd keyword of ``QueueConfig`` or of an option class raised a bare
``TypeError`` with no suggestion; ``jobs why`` showed a control character of a failure
reason escaped twice (``\\\\x1b``); a redis URL whose path and ``?db=`` name different
databases used the query's without a word, and a ``#fragment`` was dropped unseen; a
negative hand-written ``ts`` was not reported in ``damaged``. And what holds: two items of
one ``add_jobs`` call with the same ``job_id`` behave as two ``add_job`` calls would.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from click.testing import CliRunner

from helpers import app_module
from kitium_queue import JobQueue, QueueConfig
from kitium_queue.cli import main
from kitium_queue.errors import ConfigurationError
from kitium_queue.options import (
    BackoffOptions,
    DLQConfig,
    ExtendedJobOptions,
    JobOptions,
    LimiterConfig,
    QueueSettings,
    RetentionPolicy,
    RetryConfig,
    WorkerConfig,
)

pytestmark = pytest.mark.redis_only


def _base(redis_url: str) -> str:
    """The test server's URL without a database path."""
    return redis_url.rsplit("/", 1)[0] if redis_url.count("/") > 2 else redis_url


# ------------------------------------------------------------ unknown config keywords
TYPOS: list[tuple[Callable[..., Any], dict[str, Any], str]] = [
    (lambda **kw: QueueConfig("q", **kw), {"retyr": 3}, "retry"),
    (JobOptions, {"atempts": 3}, "attempts"),
    (ExtendedJobOptions, {"idempotency_ky": "k"}, "idempotency_key"),
    (BackoffOptions, {"dealy": 5}, "delay"),
    (RetryConfig, {"max_attempt": 2}, "max_attempts"),
    (DLQConfig, {"enabeld": True}, "enabled"),
    (QueueSettings, {"lock_duraton": 1000}, "lock_duration"),
    (WorkerConfig, {"concurency": 2}, "concurrency"),
    (lambda **kw: LimiterConfig(5, **kw), {"durration": 10}, "duration"),
    (RetentionPolicy, {"cont": 1}, "count"),
]


@pytest.mark.parametrize(("build", "kwargs", "close"), TYPOS)
def test_a_typod_config_keyword_names_the_closest_one(
    build: Callable[..., Any], kwargs: dict[str, Any], close: str
) -> None:
    """Was: ``TypeError: __init__() got an unexpected keyword argument 'retyr'``."""
    (bad,) = kwargs
    with pytest.raises(ConfigurationError) as err:
        build(**kwargs)
    text = str(err.value)
    assert f"keyword: {bad!r} (did you mean {close!r}?)" in text, text
    assert "valid keywords are: " in text and close in text.split("valid keywords are: ")[1]


def test_a_camel_case_keyword_gets_its_snake_case_spelling() -> None:
    with pytest.raises(ConfigurationError, match=r"'maxAttempts' \(did you mean 'max_attempts'"):
        RetryConfig(maxAttempts=2)  # type: ignore[call-arg]


async def test_a_queue_config_with_good_keywords_still_builds_a_queue(
    redis_url: str, prefix: str
) -> None:
    config = QueueConfig(
        "kw",
        redis=redis_url,
        prefix=prefix,
        retry=RetryConfig(max_attempts=4),
        worker=WorkerConfig(concurrency=2, limiter=LimiterConfig(max=5, duration=100)),
        default_job_options=JobOptions(priority=3, backoff=BackoffOptions(delay=5)),
    )
    q = JobQueue(config)
    try:
        jid = await q.add_job("n", {"v": 1})
        info = await q.get_job_status(jid)
        assert info is not None and info.max_attempts == 4 and info.priority == 3
    finally:
        await q.close()


# ------------------------------------------------------------ jobs why: escaped once
WIDE = {"COLUMNS": "400"}  # rich tables: each message on one line


@pytest.fixture
def why_app(tmp_path: Path, redis_url: str, prefix: str) -> Iterator[str]:
    source = (
        f"from kitium_queue import JobQueue\nqueue = JobQueue('wy', redis={redis_url!r}, "
        f"prefix={prefix!r})\n"
    )
    with app_module(tmp_path, source, "kq_leftover_why") as module:
        yield f"{module}:queue"


def test_jobs_why_escapes_a_failure_reason_once(why_app: str, redis_url: str, prefix: str) -> None:
    """Was: ``bad \\\\x1b[31mred\\\\\\\\path`` (the message, escaped by ``explain``,
    escaped again by the table) where ``jobs show`` printed ``bad \\x1b[31mred\\\\path``."""
    reason = "bad \x1b[31mred\\path \u202e"

    async def seed() -> None:
        q = JobQueue("wy", redis=redis_url, prefix=prefix)
        try:
            await q.add_job("n", {}, job_id="w-1", delay=3_600_000)
            client = await q.ctx.client()
            await client.hset(q.keys.job("w-1"), mapping={"e": reason, "a": 1})
        finally:
            await q.close()

    asyncio.run(seed())
    once = "bad \\x1b[31mred\\\\path \\u202e"  # as printable() writes it
    for style in ("--plain", "--rich"):
        why = CliRunner().invoke(main, [style, "jobs", "why", why_app, "w-1"], env=WIDE)
        assert why.exit_code == 0, why.output
        assert once in why.output.replace("\n", ""), why.output
        assert "\\\\x1b" not in why.output and "\x1b" not in why.output
    show = CliRunner().invoke(main, ["--plain", "jobs", "show", why_app, "w-1"])
    assert f"failed reason\t{once}" in show.output, show.output  # the same text
    as_json = CliRunner().invoke(main, ["jobs", "why", why_app, "w-1", "--json"])
    messages = [r["message"] for r in json.loads(as_json.output)["reasons"]]
    assert any(once in m for m in messages), messages  # explain's own text, unchanged


def test_jobs_why_title_escapes_the_job_id_once(why_app: str, redis_url: str, prefix: str) -> None:
    """A job id read back from Redis with a backslash: one escape in the rich title."""

    async def seed() -> None:
        q = JobQueue("wy", redis=redis_url, prefix=prefix)
        try:
            await q.add_job("n", {}, job_id="w\\2", delay=3_600_000)
        finally:
            await q.close()

    asyncio.run(seed())
    why = CliRunner().invoke(main, ["--rich", "jobs", "why", why_app, "w\\2"], env=WIDE)
    assert why.exit_code == 0, why.output
    assert "job w\\\\2" in why.output and "job w\\\\\\\\2" not in why.output, why.output


# ------------------------------------------------------------ redis URL: one database
@pytest.mark.parametrize("tail", ["/0?db=5", "/5?db=0", "?db=1&db=2", "/3?db=3&db=4"])
def test_a_url_naming_two_databases_is_refused(redis_url: str, tail: str) -> None:
    """Was: accepted, and redis-py used the (first) ``?db=``, not the path's database."""
    with pytest.raises(ConfigurationError, match="name different databases"):
        JobQueue("u", redis=_base(redis_url) + tail)


@pytest.mark.parametrize("tail", ["/0#zq9", "/0?socket_timeout=1#zq9", "/0#", "#db=3zq9"])
def test_a_url_with_a_fragment_is_refused(redis_url: str, tail: str) -> None:
    """Was: accepted, the fragment dropped unseen."""
    with pytest.raises(ConfigurationError, match="a fragment") as err:
        JobQueue("u", redis=_base(redis_url) + tail)
    assert "zq9" not in str(err.value)  # what follows '#' is never quoted


async def test_a_url_naming_one_database_once_or_twice_uses_it(redis_url: str, prefix: str) -> None:
    base = _base(redis_url)
    for tail in ("/5?db=5", "?db=5", "/05?db=5", "/5?db=5&db=5"):
        q = JobQueue("u", redis=base + tail, prefix=prefix)
        try:
            jid = await q.add_job("n", {}, job_id="d-5")
            assert jid == "d-5"
        finally:
            await q.close()
    async with aioredis.Redis.from_url(base + "/5") as db5:
        written = [k async for k in db5.scan_iter(match=f"{prefix}:*")]
        assert written  # in database 5
        await db5.delete(*written)


# ------------------------------------------------------------ negative timestamps
async def test_a_negative_hand_written_timestamp_reads_as_damage(
    redis_url: str, prefix: str, redis_client: aioredis.Redis
) -> None:
    """Was: ``created_at=-5`` read as it is, ``damaged`` None."""
    q = JobQueue("neg", redis=redis_url, prefix=prefix)
    try:
        edits = {"n-ts": {"ts": "-5"}, "n-due": {"due": "-1"}, "n-a": {"a": "-2"}}
        for jid in [*edits, "n-good"]:
            await q.add_job("n", {"id": jid}, job_id=jid)
        for jid, fields in edits.items():
            await redis_client.hset(q.keys.job(jid), mapping=fields)
        for jid in edits:
            info = await q.get_job_status(jid)
            assert info is not None and info.damaged and "out of range" in info.damaged, jid
            assert info.data == {"id": jid}  # the rest of the record is read
            assert info.created_at is None or info.created_at >= 0
        created = await q.get_job_status("n-ts")
        assert created is not None and created.created_at is None
        assert "created_at is out of range: b'-5'" in (created.damaged or "")
        good = await q.get_job_status("n-good")
        assert good is not None and good.damaged is None and (good.created_at or 0) > 0
        await redis_client.hset(q.keys.job("n-good"), "ts", "-0")  # zero: not damage
        zero = await q.get_job_status("n-good")
        assert zero is not None and zero.damaged is None and zero.created_at == 0
    finally:
        await q.close()


# ------------------------------------------------------------ add_jobs duplicates
async def test_add_jobs_with_one_job_id_twice_keeps_the_first_like_add_job(
    redis_url: str, prefix: str
) -> None:
    """Documented (README, add_jobs): the later item returns the first's id and writes
    nothing, as a second ``add_job`` with that id does."""
    q = JobQueue("dup", redis=redis_url, prefix=prefix)
    try:
        ids = await q.add_jobs(
            [
                ("a", {"n": 1}, {"job_id": "x-1"}),
                ("b", {"n": 2}, {"job_id": "x-1"}),
                ("c", {"n": 3}),
                ("d", {"n": 4}, {"idempotency_key": "k"}),
                ("e", {"n": 5}, {"idempotency_key": "k"}),
            ]
        )
        assert ids[0] == ids[1] == "x-1" and ids[3] == ids[4]
        assert len(set(ids)) == 3
        first = await q.get_job_status("x-1")
        assert first is not None and first.name == "a" and first.data == {"n": 1}
        keyed = await q.get_job_status(ids[3])
        assert keyed is not None and keyed.data == {"n": 4}
        assert await q.add_job("z", {"n": 9}, job_id="x-1") == "x-1"  # the same rule
        assert (await q.get_stats()).waiting == 3
    finally:
        await q.close()


ADVANCED_TYPOS = [
    (
        "AdvancedQueueConfig",
        {"fifoo": {}},
        "unknown advanced section: 'fifoo' (did you mean 'fifo'?)",
    ),
    (
        "FifoConfig",
        {"enabeld": True},
        "unknown advanced.fifo option: 'enabeld' (did you mean 'enabled'?)",
    ),
    (
        "EncryptionConfig",
        {"enabeld": True},
        "unknown advanced.encryption option: 'enabeld' (did you mean 'enabled'?)",
    ),
    (
        "ComplianceConfig",
        {"enabeld": True},
        "unknown advanced.compliance option: 'enabeld' (did you mean 'enabled'?)",
    ),
    ("RateLimitRule", {"maxx": 1}, "unknown RateLimitRule keyword: 'maxx' (did you mean 'max'?)"),
]


@pytest.mark.parametrize(("name", "kwargs", "needle"), ADVANCED_TYPOS)
def test_a_typod_advanced_config_keyword_names_the_closest_one(
    name: str, kwargs: dict[str, Any], needle: str
) -> None:
    """The advanced configuration's classes too, in the words the same key in a dict
    gets (were a bare ``TypeError``)."""
    import kitium_queue.features.advanced as advanced

    with pytest.raises(ConfigurationError) as err:
        getattr(advanced, name)(**kwargs)
    assert needle in str(err.value), str(err.value)
