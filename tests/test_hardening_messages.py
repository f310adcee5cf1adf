"""Refusals that name what is wrong, show caller input escaped and clipped, and change
nothing (real Redis).

* flow-control patterns follow the rules of the keys of a job (README "Limits and
  ranges": no control characters, no lone surrogates, at most 512 characters): a bad
  one is refused with ``ConfigurationError`` before anything is stored, and every later
  declaration still works and is enforced; a declaration whose Lua cannot be installed
  leaves the previous declarations and their Lua in force;
* ``add_jobs`` names the item of every per-job refusal (``add_jobs item 637: ...``),
  keeping the exception type, and refuses what is not an iterable of jobs;
* ids, statuses and option values quoted in errors (``cancel_job``, ``retry_job``,
  ``promote_job``, ``get_jobs_by_status``, ``delivery_guarantee``,
  ``concurrency_key``) never carry raw control characters and never run to megabytes;
  a plain id still reads bare (``job nope does not exist``);
* a feature key's error states its real length limit.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from helpers import QueueFactory, wait_for_status
from kitium_queue import (
    ConfigurationError,
    JobNotFoundError,
    JobQueue,
    JobStateError,
    JobStatus,
    PartialEnqueueError,
    PayloadTooLargeError,
    SerializationError,
)

FORGED = "x\n2026-01-01 ERROR kitium_queue: forged line \x1b[2J"
HUGE = 1_000_000
#: Longest message a refusal quoting one huge value may have (the value clipped).
MAX_MESSAGE = 600


@pytest.fixture
async def rq(redis_url: str, prefix: str) -> AsyncIterator[QueueFactory]:
    factory = QueueFactory(redis_url, prefix)
    yield factory
    await factory.aclose()


def clean(message: str) -> None:
    """No raw control character (line break, ESC, NUL) and no huge quote."""
    assert not any(ord(c) < 32 or c == "\x7f" for c in message), repr(message[:200])
    assert len(message) <= MAX_MESSAGE, f"{len(message)} characters: {message[:200]!r}"


# ---------------------------------------------------------------- flow-control patterns

BAD_PATTERNS: dict[str, Any] = {
    "lone surrogate": "a\ud800",
    "NUL": "tenant:\x00",
    "line break": "tenant:\n*",
    "ESC": "a\x1b[2J*",
    "DEL": "a\x7f",
    "too long": "k" * 513,
    "huge": "k" * HUGE,
    "empty": "",
    "not a str": 5,
    "None": None,
}


@pytest.mark.parametrize("kind", list(BAD_PATTERNS))
async def test_bad_pattern_is_refused_before_anything_is_stored(
    rq: QueueFactory, kind: str
) -> None:
    q = rq()
    q.set_concurrency_limit("tenant:*", 2)
    q.set_rate_limit("api:*", max=5, duration=1000)
    flow = q.flow
    lua_before = (flow.lua(), flow.enqueue_lua())
    bad = BAD_PATTERNS[kind]
    for call in (
        lambda: q.set_concurrency_limit(bad, 2),
        lambda: q.set_rate_limit(bad, max=10, duration=1000),
        lambda: flow.remove_concurrency_limit(bad),
        lambda: flow.remove_rate_limit(bad),
    ):
        with pytest.raises(ConfigurationError, match="key pattern") as info:
            call()
        clean(str(info.value))
        assert "lone surrogates" in str(info.value) and "512 characters" in str(info.value)
    assert flow.concurrency_limits == {"tenant:*": 2}
    assert list(flow.rate_limits) == ["api:*"]
    assert (flow.lua(), flow.enqueue_lua()) == lua_before
    # The queue is not poisoned: every later declaration works.
    q.set_concurrency_limit("customer:*", 5)
    q.set_rate_limit("api2:*", max=10, duration=1000)
    q.set_global_concurrency(10)
    flow.remove_concurrency_limit("tenant:*")
    flow.remove_rate_limit("api:*")
    flow.park_rate_limited_jobs(True)
    assert flow.concurrency_limits == {"customer:*": 5}
    assert list(flow.rate_limits) == ["api2:*"]
    assert flow.global_concurrency == 10


async def test_bad_pattern_error_says_what_is_wrong(rq: QueueFactory) -> None:
    q = rq()
    with pytest.raises(ConfigurationError) as info:
        q.set_concurrency_limit("a\ud800", 2)
    text = str(info.value)
    assert "'a\\ud800'" in text and "a lone surrogate U+D800 at index 1" in text
    assert "a prefix ending in '*'" in text
    with pytest.raises(ConfigurationError, match=r"U\+0000 at index 7"):
        q.set_rate_limit("tenant:\x00", max=1)
    with pytest.raises(ConfigurationError, match="only allowed at the end") as info:
        q.set_concurrency_limit("a*b" + "c" * 400, 1)
    clean(str(info.value))


async def test_caps_declared_after_a_refused_pattern_are_enforced(rq: QueueFactory) -> None:
    q = rq()
    with pytest.raises(ConfigurationError):
        q.set_concurrency_limit("a\ud800", 2)
    q.set_concurrency_limit("customer:*", 1)
    release = asyncio.Event()

    async def hold(job: Any) -> None:
        await release.wait()

    q.process("hold", hold)
    first = await q.add_job("hold", {}, concurrency_key="customer:1")
    second = await q.add_job("hold", {}, concurrency_key="customer:1")
    await q.start()
    await wait_for_status(q, first, JobStatus.ACTIVE)
    await asyncio.sleep(0.2)
    info = await q.get_job_status(second)
    assert info is not None and info.status is JobStatus.PENDING  # parked behind the cap
    reasons = await q.explain(second)
    assert any(r.code == "concurrency-cap" for r in reasons.reasons)
    release.set()
    await wait_for_status(q, second, JobStatus.COMPLETED)


async def test_failed_install_keeps_the_previous_declarations_and_lua(
    rq: QueueFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = rq()
    flow = q.flow
    q.set_concurrency_limit("tenant:*", 2)
    q.set_global_concurrency(4)
    before = (flow.enqueue_lua(), flow.lua())
    real = q.scripts.add_slot
    installed: dict[str, str] = {}
    fail = [True]

    def add_slot(slot: str, name: str, source: str, **kw: Any) -> None:
        if slot == "admission" and fail[0]:
            fail[0] = False
            raise ConfigurationError("admission fragment refused (test)")
        real(slot, name, source, **kw)
        installed[slot] = source

    monkeypatch.setattr(q.scripts, "add_slot", add_slot)
    with pytest.raises(ConfigurationError, match="refused \\(test\\)"):
        q.set_concurrency_limit("customer:*", 7)
    assert flow.concurrency_limits == {"tenant:*": 2}
    assert flow.global_concurrency == 4
    # The enqueue fragment went in before the failure: it was put back.
    assert (installed["enqueue"], installed["admission"]) == before
    q.set_concurrency_limit("customer:*", 7)
    assert flow.concurrency_limits == {"tenant:*": 2, "customer:*": 7}
    assert installed["admission"] == flow.lua() != before[1]


# ---------------------------------------------------------------- add_jobs item index


async def _refused(q: JobQueue, jobs: list[Any], exc_type: type[Exception], index: int) -> str:
    with pytest.raises(exc_type) as info:
        await q.add_jobs(jobs)
    assert type(info.value) is exc_type
    text = str(info.value)
    assert text.startswith(f"add_jobs item {index}: "), text[:200]
    assert (await q.get_stats()).waiting == 0  # nothing written
    return text


async def test_add_jobs_names_the_item_of_every_refusal(rq: QueueFactory) -> None:
    q = rq(max_payload_bytes=10_000)
    nan = [("email", {"i": i, "score": float("nan") if i == 637 else 1.0}) for i in range(1000)]
    text = await _refused(q, nan, SerializationError, 637)
    assert "NaN" in text
    prio = [("email", {"i": i}, {"priority": -1} if i == 412 else {}) for i in range(1000)]
    text = await _refused(q, prio, ConfigurationError, 412)
    assert "priority must be" in text
    big = [("email", "x" * 20_000 if i == 9 else "ok") for i in range(20)]
    text = await _refused(q, big, PayloadTooLargeError, 9)
    assert "max_payload_bytes=10000" in text
    ids = [("email", i, {"job_id": "42" if i == 3 else f"mail-{i}"}) for i in range(5)]
    await _refused(q, ids, ConfigurationError, 3)
    unknown = [{"name": "email", "data": i, "options": {"atempts": 3} if i == 5 else {}}
               for i in range(8)]  # fmt: skip
    text = await _refused(q, unknown, ConfigurationError, 5)
    assert "did you mean 'attempts'" in text
    names = [("email" if i != 2 else "bad\nname", i) for i in range(4)]
    text = await _refused(q, names, ConfigurationError, 2)
    clean(text)
    # Item shapes said their index already: said once.
    with pytest.raises(ConfigurationError, match=r"^add_jobs item 2 must be a dict"):
        await q.add_jobs([("email", 1), ("email", 2), ("email",)])


async def test_add_jobs_names_the_item_refused_by_middleware(rq: QueueFactory) -> None:
    q = rq()

    def refuse_odd(name: str, data: Any, opts: Any) -> Any:
        if data % 2:
            raise ConfigurationError(f"odd data {data}")
        return name, data, opts

    q.use_enqueue(refuse_odd)
    with pytest.raises(ConfigurationError, match=r"^add_jobs item 3: odd data 3$"):
        await q.add_jobs([("n", 0), ("n", 2), ("n", 4), ("n", 3)])
    assert await q.add_jobs([("n", 0), ("n", 2)]) == ["1", "2"]


@pytest.mark.parametrize("jobs", [None, 5, 1.5, "abc", b"ab", {"name": "n", "data": 1}])
async def test_add_jobs_refuses_what_is_not_an_iterable_of_jobs(
    rq: QueueFactory, jobs: Any
) -> None:
    q = rq()
    with pytest.raises(ConfigurationError, match="add_jobs takes an iterable of jobs") as info:
        await q.add_jobs(jobs)
    assert type(jobs).__name__ in str(info.value)
    if isinstance(jobs, dict):
        assert "use add_job" in str(info.value)
    assert (await q.get_stats()).waiting == 0


async def test_add_jobs_takes_any_iterable(rq: QueueFactory) -> None:
    q = rq()
    assert await q.add_jobs(iter([("n", 1)])) == ["1"]
    assert await q.add_jobs(("n", i) for i in range(2)) == ["2", "3"]
    assert await q.add_jobs([]) == []


# ---------------------------------------------------------------- caller input in errors


async def test_job_ids_in_errors_are_escaped(rq: QueueFactory) -> None:
    q = rq()
    for call in (q.cancel_job, q.retry_job, q.promote_job):
        with pytest.raises(JobNotFoundError) as info:
            await call(FORGED)
        text = str(info.value)
        clean(text)
        assert "\\n2026-01-01" in text and "\\x1b[2J" in text, text
        assert "does not exist" in text


async def test_huge_values_in_errors_are_clipped(rq: QueueFactory) -> None:
    q = rq()
    for call in (q.cancel_job, q.retry_job, q.promote_job):
        with pytest.raises(JobNotFoundError, match="truncated") as info:
            await call("1" * HUGE)
        clean(str(info.value))
    with pytest.raises(ConfigurationError, match="unknown status") as info:
        await q.get_jobs_by_status("x" * HUGE)
    clean(str(info.value))
    with pytest.raises(ConfigurationError, match="unknown status '\\\\x1b'"):
        await q.get_jobs_by_status("\x1b")
    with pytest.raises(ConfigurationError, match="delivery_guarantee must be") as info:
        await q.add_job("n", {}, delivery_guarantee="x" * HUGE)
    clean(str(info.value))
    with pytest.raises(ConfigurationError, match="delivery_guarantee must be") as info:
        await q.add_job("n", {}, delivery_guarantee="x\n\x1b")
    clean(str(info.value))
    q.set_concurrency_limit("k*", 1)
    for key in ("k" * HUGE, "k\n\x1b[2J"):
        with pytest.raises(ConfigurationError, match="concurrency_key must be") as info:
            await q.add_job("n", {}, concurrency_key=key)
        clean(str(info.value))
    assert (await q.get_stats()).waiting == 0


async def test_plain_ids_still_read_bare(rq: QueueFactory) -> None:
    q = rq()
    with pytest.raises(JobNotFoundError, match=r"^job nope does not exist$"):
        await q.retry_job("nope")
    with pytest.raises(JobNotFoundError, match=r"^job nope does not exist$"):
        await q.promote_job("nope")
    with pytest.raises(JobNotFoundError, match=r"^job nope does not exist in queue 'q'$"):
        await q.cancel_job("nope")
    jid = await q.add_job("n", job_id="order-1")
    with pytest.raises(JobStateError, match=r"^job order-1 is waiting; only failed"):
        await q.retry_job(jid)
    with pytest.raises(JobStateError, match=r"^job order-1 is waiting; only delayed"):
        await q.promote_job(jid)


async def test_remove_job_of_a_running_job_names_it(rq: QueueFactory) -> None:
    q = rq()
    release = asyncio.Event()

    async def hold(job: Any) -> None:
        await release.wait()

    q.process("hold", hold)
    jid = await q.add_job("hold", job_id="run 1")
    await q.start()
    await wait_for_status(q, jid, JobStatus.ACTIVE)
    with pytest.raises(Exception, match=r"^job run 1 is running; cancel it"):
        await q.remove_job(jid)
    release.set()
    await wait_for_status(q, jid, JobStatus.COMPLETED)


# ---------------------------------------------------------------- feature keys


@pytest.mark.parametrize("option", ["concurrency_key", "rate_limit_key"])
async def test_flow_control_key_error_names_the_real_limit(rq: QueueFactory, option: str) -> None:
    q = rq()
    q.set_concurrency_limit("tenant:*", 2)
    for key in ("tenant:a\x00", "tenant:\ud800", "k" * 513):
        with pytest.raises(ConfigurationError, match="at most 512 characters") as info:
            await q.add_job("n", {}, **{option: key})
        clean(str(info.value))
        assert option in str(info.value)
    # In a schedule too (the options are checked by the same rules).
    with pytest.raises(ConfigurationError, match="at most 512 characters"):
        await q.schedule_every("n", {}, 60_000, **{option: "tenant:a\x00"})
    assert await q.add_job("n", {}, **{option: "tenant:" + "a" * 505})


async def test_other_feature_options_claim_no_length_limit(rq: QueueFactory) -> None:
    q = rq()
    q.declare_option("shard_key", feature="test-feature")
    with pytest.raises(ConfigurationError) as info:
        await q.add_job("n", {}, shard_key="tenant:a\x00")
    text = str(info.value)
    assert "job: shard_key" in text and "U+0000 at index 8" in text
    assert "at most" not in text
    with pytest.raises(ConfigurationError, match=r"shard_key\[1\].*U\+001B"):
        await q.add_job("n", {}, shard_key=["ok", "bad\x1b"])
    assert await q.add_job("n", {}, shard_key="tenant:a")


async def test_a_partitioned_add_jobs_names_the_callers_index(
    redis_url: str, prefix: str
) -> None:
    from kitium_queue.features.partitioned import PartitionedQueue

    pq = PartitionedQueue("pidx", partitions=3, redis=redis_url, prefix=prefix)
    try:
        # Jobs spread over the partitions by key: item 7 is not index 7 of its
        # partition's share, and the error says 7, the position the caller gave it.
        jobs = [
            ("email", {"i": i, "bad": float("nan") if i == 7 else 1}, {"partition_key": f"k{i}"})
            for i in range(12)
        ]
        # The partitions write independently: the others' jobs are in, so the error is
        # a PartialEnqueueError whose cause is the refusal, with the caller's index.
        with pytest.raises(PartialEnqueueError) as info:
            await pq.add_jobs(jobs)
        cause = info.value.__cause__
        assert isinstance(cause, SerializationError), repr(cause)
        assert str(cause).startswith("add_jobs item 7: "), str(cause)[:200]
        assert "add_jobs item 7: " in str(info.value)
        with pytest.raises(ConfigurationError, match="add_jobs takes an iterable of jobs"):
            await pq.add_jobs(None)  # type: ignore[arg-type]
    finally:
        await pq.close()
