"""Hardening of the engine's scripts and bulk paths (issue 19, items 2, 4 and 9).

* Item 2: auto ids and chosen ids never meet. A chosen id made of digits only is refused
  in Python; and the enqueue script never overwrites a job hash already sitting at the
  next sequence number (data written by an older version or another client), nor lets a
  chosen id replace an existing job.
* Item 4: no script unpacks an unbounded list or fails after its first write.
  ``promote_delayed(limit)`` with more due jobs than one call takes moves exactly
  ``limit`` of them, each job in exactly one set; numeric arguments that are missing, NaN,
  infinite or negative are clamped (or refused before any write), never a half-done call.
* Item 9: ``add_jobs`` goes chunk by chunk, and a failed chunk reports exactly which
  jobs are in Redis (``PartialEnqueueError``); a retry with chosen ids is idempotent.

Everything runs against the real Redis of the session, and every assertion reads the
state back from Redis. Scripts are called directly (with an explicit ``now`` where the
test needs one) the way tests/test_scripts.py does.
"""

from __future__ import annotations

import asyncio
import pickle
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.exceptions import TimeoutError as RedisTimeoutError

from helpers import QueueFactory, wait_until
from kitium_queue import ConfigurationError, JobQueue, KitiumQueueError
from kitium_queue.errors import PartialEnqueueError

T0 = 1_700_000_000_000


def _dec(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list):
        return [_dec(v) for v in value]
    return value


class Engine:
    """Direct script calls with an explicit clock, and decoded reads of a queue's keys."""

    def __init__(self, queue: JobQueue, client: Any) -> None:
        self.queue = queue
        self.client = client
        self.keys = queue.keys

    async def __call__(self, script: str, now: int | str | None, *args: Any) -> Any:
        argv = [self.keys.base, "" if now is None else str(now), "10000", *args]
        return _dec(await self.queue.scripts.call(self.client, script, self.keys.all, argv))

    async def enqueue(self, now: int | None, *jobs: dict[str, Any], ttl: Any = 86_400_000) -> Any:
        args: list[Any] = [ttl]
        for j in jobs:
            args += [
                j.get("id", ""),
                j.get("name", "a"),
                j.get("data", "{}"),
                j.get("opts", ""),
                j.get("priority", 0),
                j.get("delay", 0),
                "1" if j.get("lifo") else "0",
                j.get("ik", ""),
            ]
        return await self("enqueue", now, *args)

    async def job(self, job_id: str) -> dict[str, str]:
        return {
            k.decode(): v.decode()
            for k, v in (await self.client.hgetall(self.keys.job(job_id))).items()
        }

    async def members(self, name: str) -> list[str]:
        return [m.decode() for m in await self.client.zrange(getattr(self.keys, name), 0, -1)]

    async def count(self, name: str) -> int:
        return int(await self.client.zcard(getattr(self.keys, name)))

    async def event_names(self) -> list[str]:
        return [f[b"e"].decode() for _, f in await self.client.xrange(self.keys.events)]

    async def queue_keys(self) -> list[str]:
        # A set: SCAN may return a key twice when the server's key table grows meanwhile
        # (other tests share the server).
        found = {k.decode() async for k in self.client.scan_iter(match=self.keys.base + "*")}
        return sorted(found)


@pytest.fixture
async def make(redis_url: str, prefix: str) -> AsyncIterator[QueueFactory]:
    """Queues on the session's real Redis (these tests need redis-server, not memory://)."""
    factory = QueueFactory(redis_url, prefix)
    yield factory
    await factory.aclose()


@pytest.fixture
async def engine(make: QueueFactory) -> Engine:
    queue = make("engine")
    return Engine(queue, await queue.client())


async def _delayed_due(q: JobQueue, n: int, *, lifo: bool = False) -> list[str]:
    """Add n jobs delayed by 1 ms (due by the time they are all written); return ids."""
    opts: dict[str, Any] = {"delay": 1, "lifo": lifo}
    ids = await q.add_jobs([("due", i, opts) for i in range(n)])
    client = await q.client()
    # Due on the server's clock: the last job was written at least 1 ms ago.
    await asyncio.sleep(0.01)
    assert await client.zcard(q.keys.delayed) == n
    return ids


async def _states(q: JobQueue, ids: list[str]) -> list[str]:
    client = await q.client()
    pipe = client.pipeline(transaction=False)
    for i in ids:
        pipe.hget(q.keys.job(i), "st")
    return [s.decode() for s in await pipe.execute()]


async def _assert_each_in_exactly_one(q: JobQueue, ids: list[str]) -> tuple[set[str], set[str]]:
    """Every job is in exactly one of wait / delayed, and its hash says which."""
    client = await q.client()
    wait = {m.decode() for m in await client.zrange(q.keys.wait, 0, -1)}
    delayed = {m.decode() for m in await client.zrange(q.keys.delayed, 0, -1)}
    assert not wait & delayed, f"{len(wait & delayed)} jobs are both waiting and delayed"
    assert wait | delayed == set(ids)
    states = dict(zip(ids, await _states(q, ids), strict=True))
    assert {states[i] for i in wait} <= {"waiting"}
    assert {states[i] for i in delayed} <= {"delayed"}
    return wait, delayed


# ====================================================================== item 2


async def test_numeric_job_id_is_refused_and_auto_ids_skip_a_numeric_job(
    make: QueueFactory, engine: Engine
) -> None:
    """Issue repro, first order: a chosen "3", then auto ids reaching 3."""
    q = engine.queue
    # Depends on the Python check in JobQueue._normalize_options: a job_id of digits only
    # is refused, with the reason and a prefix to use instead.
    with pytest.raises(ConfigurationError, match=r"(?i)digit") as info:
        await q.add_job("charge", {"amt": 100}, job_id="3", attempts=1)
    assert "order-123" in str(info.value) or "prefix" in str(info.value)
    assert await engine.queue_keys() == [], "a refused job writes nothing"

    # The Lua defence, for data written by an older version or another client that did
    # not refuse it: the same chosen id sent to the script directly.
    reply = await engine.enqueue(
        None, {"id": "3", "name": "charge", "data": '{"amt":100}', "opts": '{"attempts":1}'}
    )
    assert reply == ["3", "new"]
    charge = await engine.job("3")

    first = await q.add_job("x")
    second = await q.add_job("email", {"to": "x"})
    third = await q.add_job("y")
    assert [first, second, third] == ["2", "4", "5"], "sequence number 3 is taken: skipped"
    assert await engine.job("3") == charge, "the charge job is intact"
    info3 = await q.get_job_status("3")
    assert info3 is not None and info3.name == "charge" and info3.data == {"amt": 100}
    assert info3.max_attempts == 1
    email = await q.get_job_status(second)
    assert email is not None and email.name == "email" and email.data == {"to": "x"}
    assert sorted(await engine.members("wait")) == ["2", "3", "4", "5"]


async def test_numeric_job_id_never_returns_an_unrelated_job_as_duplicate(
    engine: Engine,
) -> None:
    """Issue repro, second order: auto jobs 1 and 2 exist, then a chosen "2"."""
    q = engine.queue
    assert await q.add_jobs([("a", 1), ("b", 2)]) == ["1", "2"]
    job2 = await engine.job("2")
    # Depends on the Python check in JobQueue._normalize_options (digits-only job_id).
    with pytest.raises(ConfigurationError, match=r"(?i)digit"):
        await q.add_job("y", {"other": True}, job_id="2")
    assert await engine.job("2") == job2
    # A non-numeric chosen id is its own namespace: it never meets an auto id.
    assert await q.add_job("y", job_id="order-2") == "order-2"
    assert await q.add_job("z") == "4"  # 3 went to order-2's sequence number, not its id
    assert await engine.job("2") == job2


async def test_enqueue_script_skips_existing_hashes_at_the_next_sequence_numbers(
    engine: Engine,
) -> None:
    """The Lua defence alone: hashes at 11 and 12 exist (no sorted-set entry, as a
    foreign writer might leave them); the next auto ids are 13 and 14."""
    await engine.client.set(engine.keys.id, 10)
    for i in (11, 12):
        await engine.client.hset(engine.keys.job(str(i)), mapping={"n": f"old-{i}", "st": "x"})
    reply = await engine.enqueue(T0, {"name": "new-a"}, {"name": "new-b", "delay": 50})
    assert reply == ["13", "new", "14", "new"]
    assert await engine.job("11") == {"n": "old-11", "st": "x"}
    assert await engine.job("12") == {"n": "old-12", "st": "x"}
    assert (await engine.job("13"))["n"] == "new-a"
    assert (await engine.job("14"))["st"] == "delayed"
    assert await engine.members("wait") == ["13"]
    assert await engine.members("delayed") == ["14"]
    # A chosen id that exists is still a duplicate, exactly as before: nothing written.
    assert await engine.enqueue(T0, {"id": "12", "name": "again"}) == ["12", "dup"]
    assert await engine.job("12") == {"n": "old-12", "st": "x"}


async def test_enqueue_script_gives_up_on_a_long_taken_run_before_writing(
    engine: Engine,
) -> None:
    """1000 taken numbers in a row: that job is refused ('err') before any write of it,
    the jobs after it in the call are not written, and the next call carries on."""
    pipe = engine.client.pipeline(transaction=False)
    for i in range(2, 1002):
        pipe.hset(engine.keys.job(str(i)), "n", "taken")
    await pipe.execute()
    reply = await engine.enqueue(T0, {"name": "ok"}, {"name": "refused"}, {"name": "later"})
    assert reply[:2] == ["1", "new"]
    assert reply[3] == "err" and "no free auto id" in reply[2] and len(reply) == 4
    assert await engine.members("wait") == ["1"]
    assert await engine.event_names() == ["job-added"]
    assert await engine.job("1002") == {}
    # The counter moved past the taken run: the next auto id is free at once.
    assert await engine.enqueue(T0, {"name": "next"}) == ["1002", "new"]
    assert (await engine.job("1001"))["n"] == "taken"


async def test_add_jobs_reports_a_job_the_script_refused(engine: Engine) -> None:
    q = engine.queue
    pipe = engine.client.pipeline(transaction=False)
    for i in range(2, 1002):
        pipe.hset(engine.keys.job(str(i)), "n", "taken")
    await pipe.execute()
    with pytest.raises(PartialEnqueueError, match="no free auto id") as info:
        await q.add_jobs([("a", 0), ("b", 1), ("c", 2)])
    assert (info.value.written_ids, info.value.failed_from) == (["1"], 1)
    assert "were not added" in str(info.value)
    assert await engine.members("wait") == ["1"]


async def test_schedule_fire_refuses_malformed_ticks_before_any_write(engine: Engine) -> None:
    # Header fields: schedule id, expected due, expected version, next tick, overlap;
    # then (tick, start) pairs.
    cases = [
        ["s1", "100", "1", "200", "0", "100"],  # odd: a tick without its start
        ["s1", "100", "1", "200", "0", "100", "nan"],
        ["s1", "100", "1", "200", "0", "abc", "100"],
        ["s1", "100", "1", "inf", "0", "100", "100"],
    ]
    for args in cases:
        with pytest.raises(Exception, match="nothing was written"):
            await engine("schedule_fire", T0, *args)
    assert await engine.queue_keys() == []


# ====================================================================== item 4


async def test_promote_delayed_with_more_due_jobs_than_one_call_takes(
    make: QueueFactory,
) -> None:
    """20,000 due jobs, promote_delayed(limit=10_000): exactly 10,000 move, no job ends
    up in both sets; then the rest."""
    q = make("promote-big")
    ids = await _delayed_due(q, 20_000)
    assert await q.promote_delayed(limit=10_000) == 10_000
    wait, delayed = await _assert_each_in_exactly_one(q, ids)
    assert (len(wait), len(delayed)) == (10_000, 10_000)
    # FIFO: the oldest due jobs went first.
    assert wait == set(ids[:10_000])

    assert await q.promote_delayed(limit=1_000_000) == 10_000
    wait, delayed = await _assert_each_in_exactly_one(q, ids)
    assert (len(wait), len(delayed)) == (20_000, 0)
    assert await q.promote_delayed() == 0
    stats = await q.get_stats()
    assert (stats.waiting, stats.delayed) == (20_000, 0)


async def test_promoted_lifo_jobs_each_run_exactly_once(make: QueueFactory) -> None:
    """LIFO variant: more due jobs than the old single-call unpack could take (~8,000);
    promoted in one promote_delayed call, then every job starts exactly once."""
    q = make("promote-lifo", worker={"concurrency": 200})
    n = 8_500
    ids = await _delayed_due(q, n, lifo=True)
    assert await q.promote_delayed(limit=10_000) == n
    wait, delayed = await _assert_each_in_exactly_one(q, ids)
    assert (len(wait), len(delayed)) == (n, 0)

    starts: Counter[str] = Counter()

    @q.process("due")
    async def due(job: Any) -> None:
        starts[job.id] += 1

    await q.start()

    async def all_done() -> bool:
        stats = await q.get_stats()
        return len(starts) == n and (stats.waiting, stats.delayed, stats.active) == (0, 0, 0)

    await wait_until(all_done, 15, message=lambda: f"{len(starts)} of {n} jobs started")
    await q.worker.stop(timeout_ms=2000)
    twice = [i for i, c in starts.items() if c != 1]
    assert not twice, f"{len(twice)} jobs started more than once"
    assert set(starts) == set(ids)


@pytest.mark.parametrize("limit", ["10000", "inf", "1e300", "nan", "abc", ""])
async def test_promote_script_clamps_its_limit(engine: Engine, limit: str) -> None:
    jobs = [{"id": f"d{i}", "delay": 10} for i in range(1200)]
    await engine.enqueue(T0, *jobs[:600])
    await engine.enqueue(T0, *jobs[600:])
    # At most 1000 per call, whatever was asked (missing or not a number: 1000).
    assert await engine("promote", T0 + 10, limit) == 1000
    assert await engine.count("wait") == 1000 and await engine.count("delayed") == 200
    assert await engine("promote", T0 + 10, limit) == 200


@pytest.mark.parametrize("limit", ["0", "-5", "-inf"])
async def test_promote_script_with_no_budget_moves_nothing(engine: Engine, limit: str) -> None:
    await engine.enqueue(T0, {"id": "d", "delay": 10})
    assert await engine("promote", T0 + 10, limit) == 0
    assert await engine.members("delayed") == ["d"]


async def test_promote_tolerates_damaged_priority_and_sequence(engine: Engine) -> None:
    """A damaged field must not become a score Redis refuses half way through."""
    await engine.enqueue(T0, {"id": "a", "delay": 10}, {"id": "b", "delay": 10})
    await engine.client.hset(engine.keys.job("a"), mapping={"p": "nan", "q": "inf"})
    assert await engine("promote", T0 + 10, 100) == 2
    assert sorted(await engine.members("wait")) == ["a", "b"]
    assert await engine.members("delayed") == []


async def test_recover_script_clamps_limit_and_max_stalled(engine: Engine) -> None:
    await engine.enqueue(T0, *({"id": f"j{i}"} for i in range(3)))
    reply = await engine("claim", T0, 3, 1000, 0, 0, 2, "1", "w1", 1000)
    assert reply[0] == "ok"
    # max_stalled "nan" → default 2; limit "inf" → 1000: all three requeued, no error.
    back, dead = await engine("recover", T0 + 1001, "nan", "1", "inf")
    assert sorted(back) == ["j0", "j1", "j2"] and dead == []
    assert await engine.count("active") == 0 and await engine.count("wait") == 3


async def test_recover_stalled_examines_at_most_its_limit(engine: Engine) -> None:
    q = engine.queue
    await engine.enqueue(T0, *({"id": f"j{i}"} for i in range(5)))
    await engine("claim", T0, 5, 1000, 0, 0, 2, "1", "w1", 1000)
    # Leases of T0 + 1000 are long expired on the server clock.
    back, dead = await q.recover_stalled(limit=3)
    assert (len(back), dead) == (3, [])
    assert await engine.count("active") == 2
    back, dead = await q.recover_stalled()
    assert (len(back), dead) == (2, [])
    with pytest.raises(ConfigurationError):
        await q.recover_stalled(limit=-1)


async def test_retry_and_replay_with_a_zero_limit_move_nothing(engine: Engine) -> None:
    """ZRANGE 0 -1 is the whole set: a limit of 0 must not turn into it."""
    pipe = engine.client.pipeline(transaction=False)
    for i in range(3):
        pipe.hset(engine.keys.job(f"x{i}"), mapping={"n": "x", "st": "dlq", "p": 0, "q": i})
        pipe.zadd(engine.keys.dlq, {f"x{i}": T0 + i})
    await pipe.execute()
    assert await engine("replay", T0, "0") == []
    assert await engine("replay", T0, "-3") == []
    assert await engine("retry", T0, "state", "dlq", "0") == []
    assert await engine.count("dlq") == 3 and await engine.count("wait") == 0
    assert await engine("replay", T0, "nan") == ["x0", "x1", "x2"]  # default 1000
    q = engine.queue
    assert await q.replay_dlq(limit=0) == 0
    with pytest.raises(ConfigurationError):
        await q.bulk_retry("dlq", limit=-1)
    with pytest.raises(ConfigurationError):
        await q.promote_delayed(limit=True)


async def test_drain_and_clear_scripts_progress_with_any_batch_argument(
    engine: Engine,
) -> None:
    await engine.enqueue(T0, *({"id": f"w{i}"} for i in range(5)))
    await engine.enqueue(T0, *({"id": f"d{i}", "delay": 100} for i in range(3)))
    # "0" and "nan" would have meant "no budget" (a client looping until 0 stops at
    # once, one looping while 1 never ends): at least one job per call.
    assert await engine("drain", T0, "1", "0") == 1
    assert await engine("drain", T0, "1", "nan") == 7
    assert await engine.count("wait") == 0 and await engine.count("delayed") == 0
    await engine.enqueue(T0, *({"id": f"c{i}"} for i in range(3)))
    rounds = 0
    while await engine("clear", T0, "1", "-1") == 1:
        rounds += 1
        assert rounds < 10
    # Only the id counter is left (ids never repeat after clear()).
    assert [k.rsplit(":", 1)[-1] for k in await engine.queue_keys()] == ["id"]


async def test_drain_of_many_jobs_in_bounded_calls(make: QueueFactory) -> None:
    q = make("drain-big")
    await q.add_jobs([("w", i) for i in range(9_000)])
    await q.add_jobs([("d", i, {"delay": 60_000}) for i in range(500)])
    assert await q.drain() == 9_500
    stats = await q.get_stats()
    assert (stats.waiting, stats.delayed) == (0, 0)


async def test_enqueue_script_clamps_numbers_and_refuses_malformed_calls(
    engine: Engine,
) -> None:
    # Priority NaN → 0; delay inf → the longest delay; an idempotency window of -1 → 1 ms
    # (SET PX refuses 0 and negatives, after the job's hash was written).
    reply = await engine.enqueue(
        T0,
        {"id": "p", "priority": "nan"},
        {"id": "d", "delay": "inf"},
        {"id": "k", "ik": "key-1", "priority": "99999"},
        ttl="-1",
    )
    assert reply == ["p", "new", "d", "new", "k", "new"]
    assert (await engine.job("p"))["p"] == "0"
    assert (await engine.job("k"))["p"] == "65535"
    due = int((await engine.job("d"))["due"])
    assert due == T0 + 2**50
    assert await engine.members("delayed") == ["d"]

    # The idempotency window was clamped to 1 ms: let its key lapse first, so the
    # snapshot below does not depend on when it is taken (it went between the two).
    for _ in range(200):
        if not any(":idem:" in k for k in await engine.queue_keys()):
            break
        await asyncio.sleep(0.005)
    before = await engine.queue_keys()
    assert not any(":idem:" in k for k in before), before
    with pytest.raises(Exception, match="nothing was written"):
        await engine("enqueue", T0, 1000, "x", "name")  # 2 of 8 fields
    with pytest.raises(Exception, match="nothing was written"):
        await engine.enqueue(T0, *({"id": f"m{i}"} for i in range(1001)))
    for bad_now in ("abc", "nan", "-1", "inf"):
        with pytest.raises(Exception, match="nothing was written"):
            await engine.enqueue(bad_now, {"id": "late"})  # type: ignore[arg-type]
    assert await engine.queue_keys() == before


async def test_remove_and_cancel_refuse_more_than_1000_ids(engine: Engine) -> None:
    await engine.enqueue(T0, {"id": "keep"})
    ids = ["keep", *(f"m{i}" for i in range(1000))]
    for script in ("remove", "cancel"):
        with pytest.raises(Exception, match="nothing was written"):
            await engine(script, T0, *ids)
    assert await engine.members("wait") == ["keep"]


# ====================================================================== item 9


def _chunked_jobs(n: int) -> list[tuple[str, int, dict[str, Any]]]:
    return [("bulk", i, {"job_id": f"bulk-{i}"}) for i in range(n)]


async def test_add_jobs_failure_in_the_middle_chunk_reports_the_written_jobs(
    make: QueueFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = make("bulk")
    real_call = q.scripts.call
    calls: list[int] = []

    async def flaky(client: Any, name: str, keys: Any, args: Any) -> Any:
        if name == "enqueue":
            calls.append(len(args))
            if len(calls) == 2:  # the middle chunk: never sent
                raise RedisTimeoutError("injected: no reply within the deadline")
        return await real_call(client, name, keys, args)

    monkeypatch.setattr(q.scripts, "call", flaky)
    jobs = _chunked_jobs(2_500)  # chunks of 1000, 1000, 500
    with pytest.raises(PartialEnqueueError) as info:
        await q.add_jobs(jobs)
    err = info.value
    assert isinstance(err, KitiumQueueError)
    assert isinstance(err.__cause__, RedisTimeoutError)
    assert err.failed_from == 1000
    assert err.written_ids == [f"bulk-{i}" for i in range(1000)]
    assert len(calls) == 2, "the chunk after the failed one is not sent"
    assert "may or may not" in str(err) and "idempotent" in str(err)

    client = await q.client()
    wait = {m.decode() for m in await client.zrange(q.keys.wait, 0, -1)}
    assert wait == set(err.written_ids)
    pipe = client.pipeline(transaction=False)
    for i in range(2_500):
        pipe.exists(q.keys.job(f"bulk-{i}"))
    exists = await pipe.execute()
    assert exists == [1] * 1000 + [0] * 1500

    # Retrying from failed_from completes the set; retrying everything writes nothing.
    monkeypatch.setattr(q.scripts, "call", real_call)
    rest = await q.add_jobs(jobs[err.failed_from :])
    assert rest == [f"bulk-{i}" for i in range(1000, 2_500)]
    again = await q.add_jobs(jobs)
    assert again == [f"bulk-{i}" for i in range(2_500)]
    assert await client.zcard(q.keys.wait) == 2_500


async def test_add_jobs_retry_is_idempotent_when_the_failed_chunk_was_written(
    make: QueueFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reply of the middle chunk is lost after Redis ran it: the error cannot know,
    and says so; a retry with the same job ids adds nothing twice."""
    q = make("bulk-lost-reply")
    real_call = q.scripts.call
    seen = 0

    async def lose_second_reply(client: Any, name: str, keys: Any, args: Any) -> Any:
        nonlocal seen
        reply = await real_call(client, name, keys, args)
        if name == "enqueue":
            seen += 1
            if seen == 2:
                raise RedisTimeoutError("injected: reply lost")
        return reply

    monkeypatch.setattr(q.scripts, "call", lose_second_reply)
    jobs = _chunked_jobs(2_500)
    with pytest.raises(PartialEnqueueError) as info:
        await q.add_jobs(jobs)
    assert info.value.failed_from == 1000
    client = await q.client()
    assert await client.zcard(q.keys.wait) == 2_000  # the lost reply's chunk is there

    monkeypatch.setattr(q.scripts, "call", real_call)
    retried = await q.add_jobs(jobs[info.value.failed_from :])
    assert retried == [f"bulk-{i}" for i in range(1000, 2_500)]
    assert await client.zcard(q.keys.wait) == 2_500
    # 2,000 jobs written by the failed call, 500 by the retry; its 1,000 duplicates
    # took no sequence number, so nothing of them was written again.
    assert await client.get(q.keys.id) == b"2500"


async def test_add_jobs_failure_in_the_first_chunk_keeps_its_error(
    make: QueueFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing is known written: the underlying error comes as it is."""
    q = make("bulk-first")

    async def down(client: Any, name: str, keys: Any, args: Any) -> Any:
        raise RedisTimeoutError("injected")

    await q.client()
    monkeypatch.setattr(q.scripts, "call", down)
    with pytest.raises(RedisTimeoutError):
        await q.add_jobs(_chunked_jobs(1_500))


async def test_add_jobs_sends_one_call_per_chunk(
    make: QueueFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = make("bulk-chunks")
    real_call = q.scripts.call
    sizes: list[int] = []

    async def count(client: Any, name: str, keys: Any, args: Any) -> Any:
        if name == "enqueue":
            sizes.append((len(args) - 4) // 8)
        return await real_call(client, name, keys, args)

    monkeypatch.setattr(q.scripts, "call", count)
    ids = await q.add_jobs([("n", i) for i in range(2_345)])
    assert sizes == [1000, 1000, 345]
    assert len(set(ids)) == 2_345


def test_partial_enqueue_error_survives_pickling() -> None:
    err = PartialEnqueueError("stopped", written_ids=["a", "b"], failed_from=2)
    copy = pickle.loads(pickle.dumps(err))
    assert (str(copy), copy.written_ids, copy.failed_from) == ("stopped", ["a", "b"], 2)
