"""Circuit breakers on damaged keys and hostile input (real Redis).

A breaker acts inside claim and finish, so a key of the feature written by hand (another
Redis type, fields that are no values) must never stop the queue's jobs, abort a script
after its first write, or hide the other breakers; it is reported (slot-errors, the
``damaged`` field of ``BreakerStats``, the CLI, the dashboard, ``explain``) with how to
repair it. Defects fixed here, one test each:

* ``cb:names`` of another type: the admission check failed for every job with a name, so
  no job of the queue ran any more (bound or not); now the first claim rebuilds it from
  the breakers (tests/test_breakers_repair.py);
* a breaker's hash of another type: its jobs were refused by admission forever (and
  1000 of them at the head of wait hid every other job); ``get_stats`` raised a raw
  ``ResponseError``; ``create_breaker(replace=True)`` could not repair it;
* fields that are no values (state ``half_open``, ``nan``, ``1e400``, huge, negative):
  read as defaults silently; now ``BreakerStats.damaged`` names them and ``reset`` /
  ``replace=True`` rewrite them;
* a window hash of another type or with counts ``inf``/``nan``: every outcome failed in
  the release slot (the breaker never opened again) and ``get_stats`` raised;
* ``cb:log`` of another type: every state change (hot path and ``reset``/``force_open``)
  failed after it had written the new state, and ``history`` raised;
* ``cb:ids`` of another type or with entries that are no breaker ids: ``list_breakers``
  (and with it the dashboard and the Prometheus gauges) raised for every breaker;
  ``create_breaker`` wrote the breaker and then failed;
* a probe set of another type: a half-open breaker whose probe was overdue refused its
  jobs forever and ``get_stats`` raised;
* log entries with non-UTF-8 field names or a time that is no time, and a ``cb:cursor``
  of another type or not an entry id: ``history`` and the ``breaker-events`` leader
  raised (the leader stepped down again and again).

The last test guards bad arguments (ids with surrogates, glob or control characters, huge;
durations and limits that are bool, NaN, inf, negative, huge): ``ConfigurationError``
naming the argument, never the whole value back.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import redis.asyncio

from helpers import QueueFactory, wait_until
from kitium_queue import (
    CircuitBreakerManager,
    CircuitBreakerState,
    ConfigurationError,
    JobQueue,
)
from kitium_queue.features.breakers import BreakerEvents
from kitium_queue.parking import slot_errors

pytestmark = pytest.mark.redis_only

CLOSED, OPEN = CircuitBreakerState.CLOSED, CircuitBreakerState.OPEN


def _queue(make_queue: QueueFactory, name: str = "q") -> JobQueue:
    return make_queue(
        name, worker={"concurrency": 4, "scheduler": False}, retry={"max_attempts": 1}
    )


def _runner(q: JobQueue, *names: str) -> list[str]:
    done: list[str] = []

    async def proc(job: Any) -> None:
        done.append(job.id)

    for n in names:
        q.process(n, proc)
    return done


async def _damage_report(q: JobQueue) -> str:
    return (await slot_errors(q)).get("circuit-breakers:damaged", "")


async def test_a_name_index_of_another_type_stops_no_job(
    make_queue: QueueFactory, redis_client: redis.asyncio.Redis
) -> None:
    q = _queue(make_queue)
    m = CircuitBreakerManager(q, events=False)
    await m.create_breaker({"id": "dep", "job_name": "j"})
    done = _runner(q, "j", "k")
    names = q.keys.extra("cb:names")
    await redis_client.delete(names)
    await redis_client.set(names, "written by hand")
    # Defining a breaker now says what is wrong instead of half-writing it.
    with pytest.raises(ConfigurationError, match=r"cb:names holds a string.*Repair"):
        await m.create_breaker({"id": "other", "job_name": "x"})
    assert [s.config.id for s in await m.list_breakers()] == ["dep"]
    ids = await q.add_jobs([("k", {}), ("j", {}), ("k", {})])
    ids.append(await q.add_job("k", {}, circuit_breaker_id="dep"))
    await q.start()
    await wait_until(lambda: sorted(done) == sorted(ids), timeout=10)
    # The first claim rebuilt the index from the breakers (tests/test_breakers_repair.py).
    report = await wait_until(lambda: _damage_report(q))
    assert "cb:names" in report and "rebuilt" in report
    assert await redis_client.hget(names, "j") == b"dep"
    await redis_client.delete(names)
    await m.create_breaker({"id": "dep", "job_name": "j"}, replace=True)
    assert await redis_client.hget(names, "j") == b"dep"


async def test_a_breaker_record_of_another_type_lets_its_jobs_run_and_is_reported(
    make_queue: QueueFactory, redis_client: redis.asyncio.Redis
) -> None:
    q = _queue(make_queue)
    m = CircuitBreakerManager(q, events=False)
    await m.create_breaker({"id": "dep", "job_name": "j"})
    await m.create_breaker({"id": "fine"})
    await m.force_open("dep", 3_600_000)
    done = _runner(q, "j")
    held = await q.add_job("j", {})
    await q.start()
    await wait_until(lambda: _held(m))
    key = q.keys.extra("cb:b:dep")
    await redis_client.delete(key)
    await redis_client.rpush(key, "written", "by", "hand")
    # explain tells what holds the job, without failing.
    (reason,) = [r for r in (await q.explain(held)).reasons if r.code == "breaker-open"]
    assert "holds another Redis type" in reason.message and "replace=True" in reason.message
    ids = await q.add_jobs([("j", {}) for _ in range(3)])
    # Acting closed, it holds nothing: the first claim of its jobs lets the held one go
    # too (tests/test_breakers_repair.py).
    await wait_until(lambda: sorted(done) == sorted([held, *ids]), timeout=10)
    assert "cb:b:dep" in await _damage_report(q)
    st = await m.get_stats("dep")
    assert st.state is CLOSED and "holds another Redis type" in st.damaged
    assert "replace=True" in st.damaged
    listed = {s.config.id: s for s in await m.list_breakers()}
    assert set(listed) == {"dep", "fine"} and listed["fine"].damaged == ""
    with pytest.raises(ConfigurationError, match=r"was not changed.*another Redis type"):
        await m.force_open("dep")
    with pytest.raises(ConfigurationError, match="was not changed"):
        await m.reset("dep")
    api = await m.get_breaker("dep")
    assert api is not None and await api.execute(lambda: 7) == 7
    with pytest.raises(ConfigurationError, match=r"not defined.*replace=True"):
        await m.create_breaker({"id": "dep", "job_name": "j"})
    assert await redis_client.lrange(key, 0, -1) == [b"written", b"by", b"hand"]
    # The repair defines it again (closed).
    await m.create_breaker({"id": "dep", "job_name": "j"}, replace=True)
    await wait_until(lambda: held in done, timeout=10)
    st = await m.get_stats("dep")
    assert (st.state, st.damaged, st.config.job_name) == (CLOSED, "", "j")


async def _held(m: CircuitBreakerManager) -> bool:
    return (await m.get_stats("dep")).held_jobs == 1


async def test_fields_that_are_no_values_are_reported_and_rewritten(
    make_queue: QueueFactory, redis_client: redis.asyncio.Redis
) -> None:
    q = _queue(make_queue)
    m = CircuitBreakerManager(q, events=False)
    await m.create_breaker({"id": "dep", "job_name": "j", "timeout": 5000})
    key = q.keys.extra("cb:b:dep")
    await redis_client.hset(
        key,
        mapping={
            "st": "half_open",
            "min": "nan",
            "to": "1e400",
            "pdl": "-5",
            "ca": "9" * 40,
            "why": b"\xff\xfe not text",
            "jn": b"\xc3(",
        },
    )
    st = await m.get_stats("dep")
    assert st.state is CLOSED and st.probe_deadline_ms == 0
    assert st.config.failure_threshold.min_requests == 10
    assert st.config.timeout == 315_360_000_000  # clamped, never an error
    for field in ("st", "min", "to", "pdl", "ca"):
        assert field in st.damaged.split(" of ")[0]
    assert "reset()" in st.damaged and st.reason.startswith("\\xff")
    assert st.to_dict()["damaged"] == st.damaged
    # Bound jobs still run.
    done = _runner(q, "j")
    jid = await q.add_job("j", {})
    await q.start()
    await wait_until(lambda: jid in done, timeout=10)
    await m.reset("dep")
    await m.create_breaker({"id": "dep", "job_name": "j", "timeout": 5000}, replace=True)
    st = await m.get_stats("dep")
    assert st.damaged == "" and st.config.timeout == 5000 and st.created_ms > 0


@pytest.mark.parametrize("window", ["string", "counts"])
async def test_a_damaged_window_starts_again_and_the_breaker_still_opens(
    make_queue: QueueFactory, redis_client: redis.asyncio.Redis, window: str
) -> None:
    q = _queue(make_queue)
    m = CircuitBreakerManager(q, events=False)
    api = await m.create_breaker({"id": "dep", "failure_threshold": {"min_requests": 3}})
    wkey = q.keys.extra("cb:w:dep")
    if window == "string":
        await redis_client.set(wkey, "written by hand")
    else:
        # A live window (its oldest bucket is now: 1 s buckets for a 60 s window).
        now_s = (await redis_client.time())[0]
        await redis_client.hset(wkey, mapping={"lo": now_s, "R": "inf", "F": "nan"})
    assert (await m.get_stats("dep")).requests == 0

    def fail() -> None:
        raise ConnectionError("down")

    for _ in range(3):
        with pytest.raises(ConnectionError):
            await api.execute(fail)
    st = await m.get_stats("dep")
    assert st.state is OPEN and st.reason == "3 of 3 requests failed in the window"


async def test_a_log_of_another_type_neither_fails_nor_half_writes_a_change(
    make_queue: QueueFactory, redis_client: redis.asyncio.Redis
) -> None:
    q = _queue(make_queue)
    m = CircuitBreakerManager(q, events=False)
    api = await m.create_breaker({"id": "dep", "failure_threshold": {"min_requests": 1}})
    log_key = q.keys.extra("cb:log")
    await redis_client.set(log_key, "written by hand")
    st = await m.force_open("dep", 60_000, reason="maintenance")
    assert (st.state, st.reason, st.transitions) == (OPEN, "maintenance", 1)
    report = await _damage_report(q)
    assert "cb:log" in report and "not a stream" in report
    assert await m.history() == []
    assert (await m.reset("dep")).state is CLOSED

    def fail() -> None:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        await api.execute(fail)  # the change made from an outcome, too
    assert (await m.get_stats("dep")).state is OPEN
    assert await m.remove_breaker("dep") is True
    assert await redis_client.get(log_key) == b"written by hand"


async def test_a_damaged_id_index_hides_no_breaker_and_is_repaired_by_replace(
    make_queue: QueueFactory, redis_client: redis.asyncio.Redis
) -> None:
    q = _queue(make_queue)
    m = CircuitBreakerManager(q, events=False)
    await m.create_breaker({"id": "a"})
    await m.create_breaker({"id": "b"})
    ids = q.keys.extra("cb:ids")
    await redis_client.zadd(ids, {"": 1, "a b": 2, "x*": 3, b"\xff": 4, "ghost": 5, "y" * 500: 6})
    assert [s.config.id for s in await m.list_breakers()] == ["a", "b"]
    assert await m.remove_breaker("ghost") is False  # drops the entry left behind
    assert await redis_client.zscore(ids, "ghost") is None
    await redis_client.delete(ids)
    await redis_client.set(ids, "written by hand")
    assert await m.list_breakers() == []
    with pytest.raises(ConfigurationError, match=r"cb:ids holds a string.*replace=True"):
        await m.create_breaker({"id": "c"})
    assert await redis_client.exists(q.keys.extra("cb:b:c")) == 0  # nothing half-written
    assert await m.remove_breaker("a") is True  # removes what it can
    await redis_client.delete(ids)
    await m.create_breaker({"id": "b"}, replace=True)
    assert [s.config.id for s in await m.list_breakers()] == ["b"]


async def test_a_probe_set_of_another_type_does_not_hold_the_breaker_half_open(
    make_queue: QueueFactory, redis_client: redis.asyncio.Redis
) -> None:
    q = _queue(make_queue)
    m = CircuitBreakerManager(q, events=False)
    await m.create_breaker({"id": "dep", "probe_timeout": 1, "timeout": 1})
    await m.force_open("dep", 1)
    await wait_until(lambda: _state_is(m, "half-open"))
    assert (await m.call("acquire", "dep", "t1"))[1] == b"probe"
    await redis_client.delete(q.keys.extra("cb:p:dep"))
    await redis_client.set(q.keys.extra("cb:p:dep"), "written by hand")
    # The probe is overdue: the breaker opens again (which deletes the damaged set).
    st = await wait_until(lambda: _stats_if(m, "open"))
    assert st.reason == "a probe did not report within probe_timeout"
    assert await redis_client.type(q.keys.extra("cb:p:dep")) in (b"none", b"set")
    st = await m.get_stats("dep")
    assert st.damaged == ""


async def _state_is(m: CircuitBreakerManager, state: str) -> bool:
    return (await m.get_stats("dep")).state.value == state


async def _stats_if(m: CircuitBreakerManager, state: str) -> Any:
    st = await m.get_stats("dep")
    return st if st.state.value == state else None


async def test_damaged_log_entries_and_cursor_are_read_not_raised(
    make_queue: QueueFactory, redis_client: redis.asyncio.Redis
) -> None:
    q = _queue(make_queue)
    m = CircuitBreakerManager(q, events=False)
    await m.create_breaker({"id": "dep"})
    await m.force_open("dep")
    log_key = q.keys.extra("cb:log")
    await redis_client.xadd(log_key, {b"\xff": b"x", "b": "dep", "to": "open", "at": "1e400"})
    await redis_client.xadd(log_key, {"b": "dep", "at": "9" * 30, "why": b"\xfe" * 2000})
    got = await m.history("dep")
    assert [t.at_ms for t in got[:2]] == [0, 0] and len(got[0].reason) <= 500
    assert got[2].to_state == "open" and got[2].at_ms > 0
    events = BreakerEvents(q)
    client = await q.client()
    for bad in ("hash", "garbage", b"\xff-1"):
        await redis_client.delete(events.cursor_key)
        if bad == "hash":
            await redis_client.hset(events.cursor_key, "x", "1")
        else:
            await redis_client.set(events.cursor_key, bad)
        cursor = await events._start(client)
        assert cursor == (await redis_client.xrevrange(log_key, count=1))[0][0].decode()
        assert await redis_client.get(events.cursor_key) == cursor.encode()
    await redis_client.set(events.cursor_key, "0-0")
    reported: list[Any] = []
    q.on("breaker-state", reported.append)
    assert await events.poll(client, "0-0") is not None


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda m: m.get_stats("a\ud800"), "breaker id"),
        (lambda m: m.force_open("a*"), "breaker id"),
        (lambda m: m.reset("x" * 10_000), "longer than 128"),
        (lambda m: m.force_open("dep", True), "duration"),
        (lambda m: m.force_open("dep", math.nan), "duration"),
        (lambda m: m.force_open("dep", math.inf), "duration"),
        (lambda m: m.force_open("dep", 10**30), "duration"),
        (lambda m: m.force_open("dep", -1), "duration"),
        (lambda m: m.history("dep", True), "limit"),
        (lambda m: m.history("dep", 10**9), "limit"),
        (lambda m: m.create_breaker({"id": "dep", "timeout": math.nan}), "timeout"),
        (
            lambda m: m.create_breaker({"id": "d", "failure_threshold": {"percentage": 1e400}}),
            "percentage",
        ),
    ],
)
async def test_bad_arguments_are_configuration_errors(
    make_queue: QueueFactory, call: Any, match: str
) -> None:
    m = CircuitBreakerManager(_queue(make_queue), events=False)
    await m.create_breaker({"id": "dep"})
    with pytest.raises(ConfigurationError, match=match) as err:
        await call(m)
    assert len(str(err.value)) < 400  # never the whole value back


async def test_prometheus_flags_a_breaker_acting_closed_on_damaged_keys(
    make_queue: QueueFactory, redis_client: redis.asyncio.Redis
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from kitium_queue.features.prometheus import PrometheusExporter

    q = _queue(make_queue, "prom")
    m = CircuitBreakerManager(q, events=False)
    await m.create_breaker({"id": "dep", "job_name": "j"})
    await m.create_breaker({"id": "fine"})
    await redis_client.hset(q.keys.extra("cb:b:dep"), "st", "half_open")
    exporter = PrometheusExporter([q], subscribe=False)
    text = (await exporter.render()).decode()
    flags = {
        s.labels["part"]
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "kitium_queue_read_error"
    }
    assert flags == {"breaker:dep"}  # shown closed (what it acts as), and flagged
