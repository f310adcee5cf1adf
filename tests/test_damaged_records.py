"""Damaged job records and keys (found by the chaos suite, ``chaos/scenarios/s8_poison.py``).

Driven at the script level with an explicit clock. A record damaged by hand or by a
buggy client must never abort a transition half way (Lua writes made before an error
stay), wedge the queue, or make a job vanish without a trace:

* damaged counters (stalls, attempts, created-at) are read as 0 by recover, claim and
  finish instead of aborting the script;
* a job whose hash was deleted while it was delayed or running is dead-lettered with a
  reason (claim already did so for a waiting one);
* a lease renewal puts back a lease missing from the active set (the key was deleted),
  and still refuses a stale token.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis

from helpers import QueueFactory
from workers.harness import Engine

T0 = 1_700_000_000_000
QUEUE = "damaged"
GARBAGE = ["abc", "nan", "inf", "", "1e400", "\xff"]


@pytest.fixture
def engine(redis_url: str, prefix: str) -> Iterator[Engine]:
    client = redis.Redis.from_url(redis_url)
    try:
        yield Engine(client, QUEUE, prefix)
    finally:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


def _claim(engine: Engine, now: int = T0) -> tuple[str, int, list[object]]:
    reply = engine.claim(now, 1, lease=1000)
    assert reply[0] == b"ok", reply
    entry = reply[5]
    return entry[0].decode(), int(reply[2]), entry


@pytest.mark.parametrize("garbage", GARBAGE)
def test_recover_reads_damaged_counters_as_zero(engine: Engine, garbage: str) -> None:
    jid = engine.enqueue(T0)
    _claim(engine)
    engine.client.hset(engine.keys.job(jid), mapping={"s": garbage, "a": garbage})
    assert engine.recover(T0 + 1001) == ([jid], [])
    job = engine.job(jid)
    assert (job["st"], job["s"], job["a"]) == ("waiting", "1", "0")
    assert engine.members("active") == [] and engine.members("wait") == [jid]


@pytest.mark.parametrize("garbage", GARBAGE)
def test_claim_returns_numbers_for_damaged_fields(engine: Engine, garbage: str) -> None:
    jid = engine.enqueue(T0)
    engine.client.hset(engine.keys.job(jid), mapping={"ts": garbage, "s": garbage, "a": garbage})
    got, _, entry = _claim(engine)
    assert got == jid
    assert int(entry[4]) == 1  # type: ignore[call-overload]  # attempt
    assert entry[5] == b"0" and entry[6] == b"0"  # created-at, stalls
    assert engine.job(jid)["a"] == "1"


@pytest.mark.parametrize("kind", ["D", "H"])
def test_finish_reads_damaged_attempts_as_zero(engine: Engine, kind: str) -> None:
    jid = engine.enqueue(T0)
    _, token, _ = _claim(engine)
    engine.client.hset(engine.keys.job(jid), "a", "abc")
    assert engine.finish(T0 + 10, jid, token, kind) == "ok"
    assert engine.job(jid)["a"] == "0"


def test_recover_dead_letters_running_job_whose_hash_was_deleted(engine: Engine) -> None:
    jid = engine.enqueue(T0)
    _claim(engine)
    engine.client.delete(engine.keys.job(jid))
    assert engine.recover(T0 + 1001) == ([], [jid])
    job = engine.job(jid)
    assert job["st"] == "dlq" and "job record missing" in job["e"] and "running" in job["e"]
    assert engine.members("dlq") == [jid] and engine.members("active") == []


@pytest.mark.parametrize("path", ["promote", "claim"])
def test_delayed_job_whose_hash_was_deleted_is_dead_lettered(engine: Engine, path: str) -> None:
    jid = engine.enqueue(T0, delay=100)
    engine.client.delete(engine.keys.job(jid))
    if path == "promote":
        engine.run("promote", T0 + 200, 1000)
    else:
        assert engine.claim(T0 + 200)[0] == b"empty"
    job = engine.job(jid)
    assert job["st"] == "dlq" and "job record missing" in job["e"] and "delayed" in job["e"]
    assert engine.members("dlq") == [jid] and engine.members("delayed") == []


def test_promote_with_dlq_disabled_records_the_missing_job_as_failed(engine: Engine) -> None:
    jid = engine.enqueue(T0, delay=100)
    engine.client.delete(engine.keys.job(jid))
    engine.run("promote", T0 + 200, 1000, "0")
    assert engine.job(jid)["st"] == "failed" and engine.members("failed") == [jid]


def test_renewal_puts_back_a_lease_missing_from_the_active_set(engine: Engine) -> None:
    jid = engine.enqueue(T0)
    _, token, _ = _claim(engine)
    engine.client.delete(engine.keys.active)
    assert engine.extend(T0 + 500, 1000, [(jid, token)]) == ([], [])
    assert engine.client.zscore(engine.keys.active, jid) == T0 + 1500
    # ... so that the job is recovered if its worker dies afterwards.
    assert engine.recover(T0 + 1501) == ([jid], [])


def test_renewal_with_a_stale_token_adds_no_lease(engine: Engine) -> None:
    jid = engine.enqueue(T0)
    _, token, _ = _claim(engine)
    assert engine.recover(T0 + 1001) == ([jid], [])
    assert engine.extend(T0 + 1100, 1000, [(jid, token)]) == ([jid], [])
    assert engine.members("active") == [] and engine.job(jid)["st"] == "waiting"


async def test_a_job_key_of_another_type_is_dead_lettered_not_a_wedge(
    make_queue: QueueFactory,
) -> None:
    q = make_queue()
    runs: list[str] = []
    q.process("n", lambda job: runs.append(job.id))
    bad_wait = await q.add_job("n", job_id="bad-wait")
    bad_delayed = await q.add_job("n", job_id="bad-delayed", delay=1)
    good = [await q.add_job("n", i) for i in range(5)]
    client = await q.client()
    await client.delete(q.keys.job(bad_wait), q.keys.job(bad_delayed))
    await client.set(q.keys.job(bad_wait), "x")
    await client.rpush(q.keys.job(bad_delayed), "x")
    await asyncio.sleep(0.01)
    await q.start(concurrency=4)
    for _ in range(300):
        if len(runs) == 5 and await client.zcard(q.keys.dlq) == 2:
            break
        await asyncio.sleep(0.02)
    await q.close()
    assert sorted(runs) == sorted(good)
    dlq = {m.decode() for m in await client.zrange(q.keys.dlq, 0, -1)}
    assert dlq == {bad_wait, bad_delayed}
