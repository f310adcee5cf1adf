"""The administrative scripts meeting a key damaged outside kitium-queue.

A key of the queue's layout (``lua/lib_base.lua``), or another key a script writes (the
parking keys, the schedule indexes, the outbox's dead stream, a leader's term counter),
overwritten with another type or a counter holding something that is not an integer.
Redis keeps the writes a script made before it failed, so such a key met after a
script's first write left a half-applied command. Each defect was reproduced on a real
Redis before it was fixed:

* retry (``retry_job``, ``bulk_retry``) and replay (``replay_dlq``) met a damaged wait
  set, event stream or marker after the job had left its finished set: the job was in
  no set, never to run again (and not in the DLQ either); a second id from another
  finished set failed after the first had moved;
* drain met a damaged delayed set, event stream or (with parked jobs) ``meta`` after
  it had deleted the waiting jobs; clear (forced) met a damaged active, delayed,
  finished set or ``meta`` after deleting the jobs of the sets before it: the call
  failed with the jobs gone and no event. With the parking keys skipped when damaged
  (``lib_parking.lua``), clear met a damaged parked index by answering "more remains"
  for ever: ``clear()`` never returned;
* remove and cancel met a damaged delayed set, event stream or (for a parked job)
  ``meta`` after the job had left wait (or, for a running job, after its cancel flag was
  set):
  the job's record was gone and no event written, or a running job flagged with no
  ``job-cancelling`` event;
* pause wrote ``paused`` and resume removed it before meeting a damaged event stream or
  marker; promote (bulk and ``promote_job``) moved jobs to wait before meeting a
  damaged marker; a progress update stored the progress before meeting a damaged
  event stream;
* the schedule scripts met a damaged schedule index, due index or event stream after
  writing the schedule (``schedule_put`` left a schedule in no index, ``schedule_remove``
  deleted it but left it in the due index); a schedule whose version field was not an
  integer made ``schedule_put`` fail after writing the definition; ``schedule_fire``
  wrote a tick's job record before meeting a damaged wait set (an orphan record that
  made the tick count as enqueued);
* ``outbox_reject`` (and the reclaim step) acknowledged an entry before meeting a damaged
  dead stream: the entry was lost to its group and in no dead stream;
* ``get_schedules`` met a damaged schedule index with a bare ``WRONGTYPE``;
* ``leader_acquire`` took the lease before meeting a damaged term counter: the call
  failed and the role was held by nobody until the lease expired; a lease key of
  another type was never taken, silently.

Each now checks, before its first write, the keys it writes (``check_keys`` /
``check_key``), and answers ``KQ_DAMAGED_KEY`` (``DamagedKeyError`` in Python, naming
the key and the repair), having written nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from helpers import QueueFactory, damage_key, key_snapshot
from kitium_queue import DamagedKeyError
from kitium_queue.scripts import ScriptRegistry
from workers.harness import Engine

pytestmark = pytest.mark.redis_only

T0 = 1_700_000_000_000
QUEUE = "adm"
DAMAGE = "damaged outside kitium-queue"
LONG = 60_000_000  # a lease that never expires in these tests


@pytest.fixture
def engine(redis_url: str, prefix: str) -> Iterator[Engine]:
    client = redis.Redis.from_url(redis_url)
    try:
        yield Engine(client, QUEUE, prefix)
    finally:
        client.close()


def _key(engine: Engine, part: str) -> str:
    key = getattr(engine.keys, part, None)
    return key if isinstance(key, str) else engine.keys.base + part


def _refused_whole(engine: Engine, prefix: str, key: str, script: str, *args: Any) -> None:
    """``script`` refuses the call naming ``key``, and writes nothing."""
    before = key_snapshot(engine.client, prefix)
    with pytest.raises(redis.ResponseError) as exc:
        engine.run(script, *args)
    text = str(exc.value)
    assert "KQ_DAMAGED_KEY" in text and key in text, text
    assert key_snapshot(engine.client, prefix) == before


def _jobs(engine: Engine) -> str:
    """Waiting w1 w2, delayed d1 (due at T0 + 10), running a1, completed c1, dead-lettered
    f1, and p1 parked behind blocker cc:x (with a timer). Returns a1's lease token."""
    e, client = engine, engine.client
    e.enqueue(T0, job_id="w1")
    e.enqueue(T0, job_id="w2")
    e.enqueue(T0, job_id="d1", delay=10)
    for jid in ("a1", "c1", "f1"):
        e.enqueue(T0, job_id=jid, priority=65535)
    token = e.claim(T0, 1, lease=LONG)[2]
    e.finish(T0 + 1, "c1", e.claim(T0, 1, lease=LONG)[2], "C")
    e.run("finish", T0 + 2, "1", "f1", e.claim(T0, 1, lease=LONG)[2], "F", b"x", "", 0, -1, -1, "")
    base = e.keys.base
    client.hset(
        e.keys.job("p1"),
        mapping={"n": "j", "d": "{}", "ts": T0, "p": 0, "q": 99, "st": "pending", "pk": "cc:x"},
    )
    client.zadd(base + "parked:cc:x", {"p1": 2**35 + 99})
    client.zadd(base + "parked", {"cc:x": 1})
    client.hset(e.keys.meta, "parked", 1)
    client.zadd(base + "park:timers", {"cc:x": T0 + 10**9})
    client.hset(base + "park:rules", "cc:x", f"0 0 {T0 + 10**9}")
    assert e.members("dlq") == ["f1"] and e.members("completed") == ["c1"]
    return str(token.decode() if isinstance(token, bytes) else token)


NOW = T0 + 100


# ---------------------------------------------------------------------- retry, replay


@pytest.mark.parametrize("part", ["wait", "events", "marker", "completed"])
@pytest.mark.parametrize(
    "args",
    [("ids", "c1"), ("ids", "f1", "c1"), ("state", "completed", 1000, 0)],
    ids=["one", "two-sets", "state"],
)
def test_retry_meeting_a_damaged_key_writes_nothing(
    engine: Engine, prefix: str, part: str, args: tuple[Any, ...]
) -> None:
    _jobs(engine)
    key = _key(engine, part)
    damage_key(engine.client, key, "hash")
    _refused_whole(engine, prefix, key, "retry", NOW, *args)


@pytest.mark.parametrize("part", ["wait", "events", "marker"])
def test_replay_meeting_a_damaged_key_writes_nothing(
    engine: Engine, prefix: str, part: str
) -> None:
    _jobs(engine)
    key = _key(engine, part)
    damage_key(engine.client, key, "hash")
    _refused_whole(engine, prefix, key, "replay", NOW, 1000, 0)


# ---------------------------------------------------------------------- drain, clear


@pytest.mark.parametrize(
    ("part", "how"),
    [
        ("delayed", "hash"),
        ("events", "hash"),
        ("meta", "string"),
    ],
)
def test_drain_meeting_a_damaged_key_writes_nothing(
    engine: Engine, prefix: str, part: str, how: str
) -> None:
    _jobs(engine)
    key = _key(engine, part)
    damage_key(engine.client, key, how)
    _refused_whole(engine, prefix, key, "drain", NOW, "1", 1000)


def test_drain_checks_meta_only_when_jobs_are_parked(engine: Engine) -> None:
    engine.enqueue(T0, job_id="w1")
    damage_key(engine.client, engine.keys.meta)
    assert engine.run("drain", NOW, "0", 1000) == 1  # meta is not written


@pytest.mark.parametrize("part", ["active", "delayed", "completed", "dlq", "meta", "parked"])
def test_forced_clear_meeting_a_damaged_key_writes_nothing(
    engine: Engine, prefix: str, part: str
) -> None:
    _jobs(engine)
    key = _key(engine, part)
    damage_key(engine.client, key)
    _refused_whole(engine, prefix, key, "clear", NOW, "1", 1000)


# ---------------------------------------------------------------------- remove, cancel


@pytest.mark.parametrize(
    ("ids", "part"),
    [
        (("w1",), "delayed"),
        (("w1",), "events"),
        (("c1",), "events"),
        (("p1",), "meta"),
        (("w1", "c1", "f1"), "dlq"),
        (("w1", "w1"), "active"),  # the second time, w1 has no record
    ],
)
def test_remove_meeting_a_damaged_key_writes_nothing(
    engine: Engine, prefix: str, ids: tuple[str, ...], part: str
) -> None:
    _jobs(engine)
    key = _key(engine, part)
    damage_key(engine.client, key)
    _refused_whole(engine, prefix, key, "remove", NOW, *ids)


def test_remove_checks_only_the_keys_it_writes(engine: Engine) -> None:
    _jobs(engine)
    damage_key(engine.client, engine.keys.dlq)
    assert engine.run("remove", NOW, "c1") == [b"removed"]


@pytest.mark.parametrize(
    ("ids", "part"),
    [
        (("w1",), "delayed"),
        (("a1",), "events"),
        (("p1",), "meta"),
        (("d1", "a1"), "events"),
    ],
)
def test_cancel_meeting_a_damaged_key_writes_nothing(
    engine: Engine, prefix: str, ids: tuple[str, ...], part: str
) -> None:
    _jobs(engine)
    key = _key(engine, part)
    damage_key(engine.client, key)
    _refused_whole(engine, prefix, key, "cancel", NOW, *ids)


# ---------------------------------------------------------------------- pause, promote, update


@pytest.mark.parametrize(("flag", "part"), [("1", "events"), ("0", "events"), ("0", "marker")])
def test_pause_and_resume_meeting_a_damaged_key_write_nothing(
    engine: Engine, prefix: str, flag: str, part: str
) -> None:
    engine.client.hset(engine.keys.meta, "paused", "1")
    key = _key(engine, part)
    damage_key(engine.client, key, "hash")
    _refused_whole(engine, prefix, key, "pause", NOW, flag)


@pytest.mark.parametrize("args", [(1000, "1"), (1, "1", "d1")], ids=["due", "one-job"])
def test_promote_meeting_a_damaged_marker_writes_nothing(
    engine: Engine, prefix: str, args: tuple[Any, ...]
) -> None:
    _jobs(engine)
    damage_key(engine.client, engine.keys.marker, "hash")
    _refused_whole(engine, prefix, engine.keys.marker, "promote", NOW, *args)


def test_a_progress_update_meeting_a_damaged_event_stream_writes_nothing(
    engine: Engine, prefix: str
) -> None:
    token = _jobs(engine)
    damage_key(engine.client, engine.keys.events)
    before = key_snapshot(engine.client, prefix)
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        engine.run("update", NOW, "a1", token, "progress", "50", 10)
    assert key_snapshot(engine.client, prefix) == before


# ---------------------------------------------------------------------- schedules


def _put(engine: Engine, sid: str, definition: str = '{"a":1}') -> Any:
    return engine.run(
        "schedule_put", T0, sid, definition, "sig", "job", "{}", "", 0, "0", 0, T0 + 1000, 0
    )


@pytest.mark.parametrize("part", ["schedules", "schedules:due", "events"])
@pytest.mark.parametrize("call", ["put-new", "put-changed", "pause", "remove"])
def test_schedule_scripts_meeting_a_damaged_key_write_nothing(
    engine: Engine, prefix: str, part: str, call: str
) -> None:
    _put(engine, "s1")
    key = _key(engine, part)
    damage_key(engine.client, key)
    args: tuple[Any, ...] = {
        "put-new": ("schedule_put", T0, "s2", "{}", "sig", "job", "{}", "", 0, "0", 0, T0, 0),
        "put-changed": ("schedule_put", T0, "s1", "{}", "sig", "job", "{}", "", 0, "0", 0, T0, 0),
        "pause": ("schedule_pause", T0, "s1", "1", ""),
        "remove": ("schedule_remove", T0, "s1"),
    }[call]
    _refused_whole(engine, prefix, key, *args)


@pytest.mark.parametrize("script", ["schedule_put", "schedule_pause"])
def test_a_schedule_with_a_damaged_version_is_updated_whole(engine: Engine, script: str) -> None:
    _put(engine, "s1")
    sk = engine.keys.base + "schedule:s1"
    engine.client.hset(sk, "v", "abc")
    if script == "schedule_put":
        assert _put(engine, "s1", '{"a":2}')[0] == b"updated"
        assert engine.client.hget(sk, "def") == b'{"a":2}'
    else:
        assert engine.run("schedule_pause", T0, "s1", "1", "")[0] == b"ok"
        assert engine.client.hget(sk, "paused") == b"1"
    version = engine.client.hget(sk, "v")
    assert version is not None and int(version) > 0


def test_schedule_fire_meeting_a_damaged_wait_set_writes_nothing(
    engine: Engine, prefix: str
) -> None:
    _put(engine, "s1")
    damage_key(engine.client, engine.keys.wait)
    tick = T0 + 1000
    _refused_whole(
        engine, prefix, engine.keys.wait, "schedule_fire", tick, "s1", tick, "1", tick + 1000,
        "0", tick, tick,
    )  # fmt: skip


# ---------------------------------------------------------------------- outbox, leader


def _eval(client: redis.Redis, script: str, keys: list[str], args: list[Any]) -> Any:
    return client.eval(ScriptRegistry().get(script).source, len(keys), *keys, *args)


def test_outbox_reject_meeting_a_damaged_dead_stream_acknowledges_nothing(
    engine: Engine, prefix: str
) -> None:
    client, base = engine.client, engine.keys.base
    outbox, dead = base + "outbox", base + "outbox:dead"
    client.xgroup_create(outbox, "g", id="0", mkstream=True)
    entry = client.xadd(outbox, {"t": "x", "a": "1"})
    client.xreadgroup("g", "c1", {outbox: ">"})
    client.set(dead, "x")
    before = key_snapshot(client, prefix)
    with pytest.raises(redis.ResponseError, match="KQ_DAMAGED_KEY string stream"):
        _eval(client, "outbox_reject", [outbox, dead], [base, "g", "why", entry])
    assert client.xpending(outbox, "g")["pending"] == 1  # still the group's to handle
    assert key_snapshot(client, prefix) == before
    with pytest.raises(redis.ResponseError, match="KQ_DAMAGED_KEY string stream"):
        _eval(client, "outbox_reclaim", [outbox, dead], [base, "g", "c2", 0, "0-0", 10, 0])
    assert client.xpending(outbox, "g")["consumers"][0]["name"] == b"c1"


@pytest.mark.parametrize("how", ["abc", "hash"])
def test_leader_acquire_with_a_damaged_term_takes_no_lease(
    engine: Engine, prefix: str, how: str
) -> None:
    lease = engine.keys.base + "leader:r"
    term = lease + ":term"
    damage_key(engine.client, term, how)
    before = key_snapshot(engine.client, prefix)
    with pytest.raises(redis.ResponseError, match=f"KQ_DAMAGED_KEY .* integer {term}"):
        _eval(engine.client, "leader_acquire", [lease, term], ["tok", 10_000])
    assert key_snapshot(engine.client, prefix) == before
    engine.client.delete(term)
    assert _eval(engine.client, "leader_acquire", [lease, term], ["tok", 10_000]) == [1, 1]


def test_leader_acquire_names_a_lease_key_of_another_type(engine: Engine) -> None:
    lease = engine.keys.base + "leader:r"
    damage_key(engine.client, lease, "hash")
    with pytest.raises(redis.ResponseError, match=f"KQ_DAMAGED_KEY hash string {lease}"):
        _eval(engine.client, "leader_acquire", [lease, lease + ":term"], ["tok", 10_000])
    engine.client.set(lease, "other", px=5000)  # a live holder: no error
    reply = _eval(engine.client, "leader_acquire", [lease, lease + ":term"], ["tok", 10_000])
    assert reply[0] == 0 and 0 < reply[1] <= 5000


# ---------------------------------------------------------------------- the API


async def _dead(q: Any, redis_client: aioredis.Redis, n: int) -> list[str]:
    """``n`` jobs in the DLQ, written as the finish script leaves them."""
    ids = [f"x{i}" for i in range(n)]
    for i, jid in enumerate(ids):
        await redis_client.hset(q.keys.job(jid), mapping={"n": "n", "d": "{}", "st": "dlq"})
        await redis_client.zadd(q.keys.dlq, {jid: T0 + i})
    return ids


@pytest.mark.parametrize("part", ["wait", "events", "marker"])
async def test_retry_and_replay_refuse_a_damaged_key_whole_and_name_it(
    make_queue: QueueFactory, redis_client: aioredis.Redis, part: str
) -> None:
    q = make_queue()
    ids = await _dead(q, redis_client, 3)
    key = getattr(q.keys, part)
    await redis_client.hset(key, "x", "y")
    calls = [
        lambda: q.retry_job(ids[0]),
        lambda: q.bulk_retry("dlq"),
        q.replay_dlq,
    ]
    for call in calls:
        with pytest.raises(DamagedKeyError) as exc:
            await call()
        assert exc.value.key == key and DAMAGE in str(exc.value)
    assert [m.decode() for m in await redis_client.zrange(q.keys.dlq, 0, -1)] == ids
    await redis_client.delete(key)
    assert await q.replay_dlq() == 3
    assert await redis_client.zcard(q.keys.wait) == 3


async def test_drain_clear_remove_cancel_name_the_damaged_key(
    make_queue: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q = make_queue()
    ids = await q.add_jobs([("n", {"i": i}) for i in range(3)])
    await q.add_job("n", {}, delay=60_000)
    await redis_client.set(q.keys.events, "x")
    calls = [q.drain, lambda: q.remove_job(ids[0])]
    calls += [lambda: q.cancel_job(ids[1]), q.pause, q.resume]
    for call in calls:
        with pytest.raises(DamagedKeyError) as exc:
            await call()
        assert exc.value.key == q.keys.events and "delete it (past events are lost)" in str(
            exc.value
        )
    assert await redis_client.zcard(q.keys.wait) == 3
    assert await redis_client.hget(q.keys.meta, "paused") is None
    await redis_client.delete(q.keys.events)
    assert await q.drain() == 4


async def test_clear_refuses_a_damaged_parked_index_instead_of_looping(
    make_queue: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q = make_queue()
    await q.add_job("n", {})
    index = q.keys.extra("parked")
    await redis_client.set(index, "x")
    with pytest.raises(DamagedKeyError) as exc:  # it answered "more remains" for ever
        await asyncio.wait_for(q.clear(force=True), 30)
    assert exc.value.key == index and "listed again" in str(exc.value)
    assert await redis_client.zcard(q.keys.wait) == 1
    await redis_client.delete(index)
    await q.clear(force=True)
    assert await redis_client.exists(q.keys.wait) == 0


async def test_promote_job_names_a_damaged_marker(
    make_queue: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q = make_queue()
    jid = await q.add_job("n", {}, delay=60_000)
    await redis_client.delete(q.keys.marker)
    await redis_client.hset(q.keys.marker, "x", "y")
    for call in (lambda: q.promote_job(jid), q.promote_delayed):
        with pytest.raises(DamagedKeyError) as exc:
            await call()
        assert exc.value.key == q.keys.marker
    assert await redis_client.zcard(q.keys.delayed) == 1
    assert await redis_client.zcard(q.keys.wait) == 0


async def test_schedule_commands_name_a_damaged_schedule_index(
    make_queue: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q = make_queue()
    await q.schedule_every("n", {}, 60_000, schedule_id="s1")
    due = q.keys.extra("schedules:due")
    await redis_client.set(due, "x")
    for call in (
        lambda: q.pause_schedule("s1"),
        lambda: q.remove_schedule("s1"),
        lambda: q.schedule_every("n", {}, 60_000, schedule_id="s2"),
    ):
        with pytest.raises(DamagedKeyError) as exc:
            await call()
        assert exc.value.key == due and "stop firing" in str(exc.value)
    assert await redis_client.exists(q.keys.schedule("s1"), q.keys.schedule("s2")) == 1


async def test_get_schedules_names_a_damaged_schedule_index(
    make_queue: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q = make_queue()
    await q.schedule_every("n", {}, 60_000, schedule_id="s1")
    index = q.keys.extra("schedules")
    await redis_client.delete(index)
    await redis_client.set(index, "x")
    with pytest.raises(DamagedKeyError) as exc:  # was a bare WRONGTYPE
        await q.get_schedules()
    assert exc.value.key == index and "they still fire" in str(exc.value)
