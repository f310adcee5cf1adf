"""Messages a new user met (stop 62), each checked against a real Redis where a queue
is involved:

1. ``JobQueue(name, lock_duration=5)`` (a section's option given as a keyword of the
   queue) raised Python's bare ``TypeError`` (unexpected keyword argument). Now an
   unknown keyword of ``JobQueue`` (and ``SyncJobQueue``) is a ``ConfigurationError``
   naming the closest keyword, every valid one, and the section an option belongs to,
   also when it is misspelt there (``concurency``: ``worker={'concurrency': ...}``).
2. a feature's option declared beyond ``ExtendedJobOptions`` (``idempotency_conflict``,
   ``idempotency_window``, ``wait_replicas``, ``on_failure``...) given to a queue without
   that feature was "unknown job option ... (did you mean 'idempotency_key'?)": now it
   is refused by what it needs and how to enable it, as ``tenant_id`` already was; with
   the feature enabled it is accepted.
3. ``kitium-queue groups show`` of a ``high_throughput`` group whose only jobs are
   delayed said "it has no jobs": that mode keeps no per-group totals, so such a group
   leaves no trace until its jobs are due; the message says so (exit 1 still).
"""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from helpers import app_module
from kitium_queue import ConfigurationError, JobQueue, QueueConfig, SyncJobQueue
from kitium_queue.cli import main
from kitium_queue.features.groups import FIFOQueueManager
from kitium_queue.features.idempotency import IdempotencyManager


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ({"lock_duration": 5}, "JobQueue(name, ..., settings={'lock_duration': ...})"),
        ({"max_attempts": 3}, "JobQueue(name, ..., retry={'max_attempts': ...})"),
        ({"concurency": 3}, "'concurency' looks like worker's 'concurrency'"),
        ({"lockDuration": 3}, "looks like settings's 'lock_duration'"),
        ({"retyr": {}}, "'retyr' (did you mean 'retry'?)"),
    ],
)
def test_an_unknown_keyword_of_the_queue_says_where_it_belongs(
    redis_url: str, given: dict[str, object], said: str
) -> None:
    with pytest.raises(ConfigurationError) as err:
        JobQueue("kw", redis=redis_url, **given)  # type: ignore[arg-type]
    text = str(err.value)
    assert text.startswith("unknown JobQueue keyword"), text
    assert said in text, text
    assert "valid keywords are: advanced, codecs" in text, text


def test_a_keyword_that_belongs_nowhere_gets_no_guess(redis_url: str) -> None:
    with pytest.raises(ConfigurationError) as err:
        JobQueue("kw", redis=redis_url, zzz=1)  # type: ignore[call-arg]
    assert "looks like" not in str(err.value) and "did you mean" not in str(err.value)


def test_the_sync_client_and_queue_config_say_the_same(redis_url: str) -> None:
    with pytest.raises(ConfigurationError, match=r"settings=\{'lock_duration'"):
        SyncJobQueue("kw", redis=redis_url, lock_duration=5)
    with pytest.raises(ConfigurationError, match=r"QueueConfig\(name, \.\.\., worker="):
        QueueConfig("kw", concurency=3)  # type: ignore[call-arg]


async def test_valid_keywords_and_the_signature_are_unchanged(redis_url: str) -> None:
    q = JobQueue(name="kw", redis=redis_url, worker={"concurrency": 2})
    try:
        assert q.name == "kw"
        params = inspect.signature(JobQueue).parameters
        assert "redis" in params and "advanced" in params and "kwargs" not in params
    finally:
        await q.close()


@pytest.mark.parametrize(
    ("option", "value", "needs"),
    [
        ("idempotency_conflict", "raise", "effectively-once processing"),
        ("idempotency_window", "until_finished", "effectively-once processing"),
        ("wait_replicas", 1, "replica-acknowledged writes"),
        ("on_failure", "fail", "workflows"),
        ("workflow_step", "s1", "workflows"),
    ],
)
async def test_a_feature_option_without_its_feature_says_what_it_needs(
    redis_url: str, prefix: str, option: str, value: Any, needs: str
) -> None:
    q = JobQueue("fo", redis=redis_url, prefix=prefix)
    try:
        with pytest.raises(ConfigurationError) as err:
            await q.add_job("a", {}, {option: value})
        text = str(err.value)
        assert f"option {option!r} needs " in text and needs in text, text
        assert "unknown job option" not in text and "did you mean" not in text, text
        assert "create " in text, text
        assert (await q.get_stats()).waiting == 0  # nothing written
    finally:
        await q.close()


async def test_with_the_feature_enabled_its_option_is_accepted(redis_url: str, prefix: str) -> None:
    q = JobQueue("fo", redis=redis_url, prefix=prefix)
    try:
        IdempotencyManager(q, conflicts="return")
        jid = await q.add_job(
            "a", {"n": 1}, {"idempotency_key": "k1", "idempotency_conflict": "raise"}
        )
        assert jid and (await q.get_stats()).waiting == 1
        with pytest.raises(ConfigurationError, match="unknown job option: 'idempotency_conflct'"):
            await q.add_job("a", {}, {"idempotency_conflct": "raise"})
    finally:
        await q.close()


@pytest.mark.redis_only
@pytest.mark.parametrize("high_throughput", [False, True])
def test_groups_show_of_a_delayed_only_group_says_why_it_is_not_seen(
    tmp_path: Path, redis_url: str, prefix: str, high_throughput: bool
) -> None:
    source = (
        "from kitium_queue import JobQueue\n"
        "from kitium_queue.features.groups import FIFOQueueManager\n"
        f"queue = JobQueue('ht', redis={redis_url!r}, prefix={prefix!r})\n"
        f"fifo = FIFOQueueManager(queue, high_throughput={high_throughput})\n"
    )

    async def add() -> None:
        q = JobQueue("ht", redis=redis_url, prefix=prefix)
        FIFOQueueManager(q, high_throughput=high_throughput)
        try:
            await q.add_job("n", {}, message_group_id="later", delay=60_000)
        finally:
            await q.close()

    asyncio.run(add())
    with app_module(tmp_path, source, f"kq_ht_{int(high_throughput)}") as module:
        got = CliRunner().invoke(main, ["groups", "show", f"{module}:queue", "later"])
    if not high_throughput:  # the group's size counts its delayed job
        assert got.exit_code == 0 and "later" in got.stdout, got.output
        return
    assert got.exit_code == 1, got.output
    assert "group 'later' not found in queue 'ht'" in got.stderr, got.stderr
    assert "high_throughput mode keeps no per-group totals" in got.stderr, got.stderr
    assert "its delayed jobs show once they are due" in got.stderr
