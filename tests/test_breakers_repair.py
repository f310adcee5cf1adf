"""Circuit breakers keep counting and let held jobs go when their keys are damaged (real
Redis).

Defects fixed here, each reproduced first:

* ``cb:of`` (job id -> breaker id of each bound run under way) overwritten with another
  Redis type: admission let bound jobs run but their outcomes were never counted, so a
  failing dependency never opened the breaker again; the runs under way when it was
  overwritten lost their outcomes too. The breaker id of a run now lives on the run
  itself (job-hash field ``cb``, written at admission and read by the release slot):
  ``cb:of`` is no longer read or written;
* a breaker whose hash was damaged (another Redis type, or deleted) held its parked
  jobs until its park timer was due (the whole open timeout); now the first claim of
  one of its jobs, a read of it (``get_stats``, ``list_breakers``, the CLI, the
  Prometheus collector) or the ``breaker-events`` leader's sweep lets them all go;
* a half-open breaker whose probe set was deleted while every probe place was taken,
  or whose probe deadline was lost (``pdl`` 0 with probes admitted), stayed half-open
  for good and held every bound job forever; its overdue probes now open it again;
* a park timer of a held breaker deleted from the shared timer set (``park:timers``)
  held its jobs until the breaker changed state by other means; the sweep arms it
  again;
* ``cb:names`` of another type bound no job by its name: those jobs ran unguarded and
  uncounted until an operator rebuilt it; the first claim now rebuilds it from the
  breakers listed in ``cb:ids``;
* a ``cb`` field on a waiting job (left by a worker without the manager, or written by
  hand) would count that job's next outcome in a breaker that never admitted it; claim
  drops it;
* ``until`` written by hand far beyond any timeout (a valid number) held the breaker's
  jobs for good and was reported as nothing; it is read as open for the breaker's
  timeout and named in ``BreakerStats.damaged``;
* the leader's sweep read only the first 1,000 breakers of ``cb:ids``: a damaged breaker
  further on held its jobs until its park timer; the sweep now walks ``cb:ids`` one page
  of 1,000 per round, going on where the last round stopped;
* a claim rebuilds a damaged ``cb:names`` from the first 1,000 breakers only (a claim
  stays bounded), and a ``cb:names`` deleted by hand bound no job by its name: the
  names of the other breakers stayed unbound until each was replaced; the sweep now
  binds again every job name of its page that the index lacks.

Cost: the binding moved from ``cb:of`` to the job's own hash, command for command (the
same ``HSET`` at admission, ``HGET``/``HDEL`` at release); a queue without a manager
compiles none of it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio

from helpers import QueueFactory, wait_until
from kitium_queue import CircuitBreakerManager, CircuitBreakerState, JobQueue
from kitium_queue.features.breakers import BreakerEvents
from kitium_queue.parking import parked_in

pytestmark = pytest.mark.redis_only

OPEN, HALF, CLOSED = (
    CircuitBreakerState.OPEN,
    CircuitBreakerState.HALF_OPEN,
    CircuitBreakerState.CLOSED,
)


def _queue(make_queue: QueueFactory, concurrency: int = 1) -> JobQueue:
    return make_queue(
        "q", worker={"concurrency": concurrency, "scheduler": False}, retry={"max_attempts": 1}
    )


class Dependency:
    """A downstream service that fails while ``down``; records how each job ended."""

    def __init__(self, q: JobQueue, name: str = "j") -> None:
        self.down = True
        self.started: list[str] = []
        self.completed: list[str] = []
        self.failed: list[str] = []
        self.gate: asyncio.Event | None = None
        q.process(name, self)
        q.on("job-completed", lambda ev: self.completed.append(ev.job_id))
        q.on("job-failed", lambda ev: self.failed.append(ev.job_id))

    async def __call__(self, job: Any) -> str:
        self.started.append(job.id)
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise ConnectionError("dependency down")
        return "ok"


async def _damage(client: redis.asyncio.Redis, key: str) -> None:
    await client.delete(key)
    await client.set(key, "written by hand")


# ================================================================ outcomes stay counted


async def test_outcomes_count_while_cb_of_holds_another_type(
    make_queue: QueueFactory, redis_client: redis.asyncio.Redis
) -> None:
    q = _queue(make_queue)
    m = CircuitBreakerManager(q, events=False)
    await m.create_breaker(
        {"id": "dep", "job_name": "j", "failure_threshold": {"percentage": 50, "min_requests": 3}}
    )
    dep = Dependency(q)
    await _damage(redis_client, q.keys.extra("cb:of"))
    ids = await q.add_jobs([("j", {}) for _ in range(6)])
    await q.start()
    st = await wait_until(lambda: _stats_if(m, OPEN), timeout=10)
    assert st.reason == "3 of 3 requests failed in the window"
    # The breaker opens in the finish script; the worker's job-failed event follows its reply.
    await wait_until(lambda: len(dep.failed) == 3)
    assert await _held(q) == 3
    # The key written by hand is left as it was: nothing reads or writes it any more.
    assert await redis_client.get(q.keys.extra("cb:of")) == b"written by hand"
    assert set(dep.failed) < set(ids)


async def test_a_name_index_of_another_type_is_rebuilt_and_name_bound_runs_count(
    make_queue: QueueFactory, redis_client: redis.asyncio.Redis
) -> None:
    from kitium_queue.parking import slot_errors

    q = _queue(make_queue)
    m = CircuitBreakerManager(q, events=False)
    await m.create_breaker(
        {"id": "dep", "job_name": "j", "failure_threshold": {"percentage": 50, "min_requests": 3}}
    )
    await m.create_breaker({"id": "other", "job_name": "k"})
    await m.create_breaker({"id": "bare"})
    dep = Dependency(q)
    names = q.keys.extra("cb:names")
    await _damage(redis_client, names)
    await q.add_jobs([("j", {}) for _ in range(5)])
    await q.start()
    st = await wait_until(lambda: _stats_if(m, OPEN), timeout=10)
    assert st.reason == "3 of 3 requests failed in the window" and await _held(q) == 2
    await wait_until(lambda: len(dep.failed) == 3)
    assert await redis_client.hgetall(names) == {b"j": b"dep", b"k": b"other"}
    report = (await slot_errors(q)).get("circuit-breakers:damaged", "")
    assert "cb:names" in report and "rebuilt" in report


async def test_a_run_under_way_when_cb_of_is_overwritten_is_counted(
    make_queue: QueueFactory, redis_client: redis.asyncio.Redis
) -> None:
    q = _queue(make_queue)
    m = CircuitBreakerManager(q, events=False)
    await m.create_breaker(
        {"id": "dep", "job_name": "j", "failure_threshold": {"percentage": 50, "min_requests": 1}}
    )
    dep = Dependency(q)
    dep.gate = asyncio.Event()
    job = await q.add_job("j", {})
    await q.start()
    await wait_until(lambda: dep.started == [job])
    await _damage(redis_client, q.keys.extra("cb:of"))
    dep.gate.set()
    st = await wait_until(lambda: _stats_if(m, OPEN), timeout=10)
    assert st.reason == "1 of 1 requests failed in the window"
    await wait_until(lambda: dep.failed == [job])
    # The run's binding went with its outcome.
    assert await redis_client.hget(q.keys.job(job), "cb") is None


async def test_chaos_cb_of_damaged_midway_the_breaker_still_opens_and_every_job_ends_once(
    make_queue: QueueFactory, redis_client: redis.asyncio.Redis
) -> None:
    """A worker (concurrency 4) drains jobs bound to a breaker while its dependency
    fails; ``cb:of`` is overwritten with another type (and again) midway. The breaker
    opens on the configured failures; when the dependency is back the probes close it
    and the held jobs run: every job ends exactly once."""
    q = _queue(make_queue, concurrency=4)
    m = CircuitBreakerManager(q, events=False)
    await m.create_breaker(
        {
            "id": "dep",
            "job_name": "j",
            "failure_threshold": {"percentage": 100, "min_requests": 12},
            "timeout": 300,
            "half_open_probes": 2,
        }
    )
    dep = Dependency(q)
    of = q.keys.extra("cb:of")
    damaged = 0
    original = dep.__call__

    async def flaky(job: Any) -> str:
        nonlocal damaged
        if len(dep.started) in (3, 7, 9):  # midway, more than once, runs under way
            await _damage(redis_client, of)
            damaged += 1
        return await original(job)

    q.process("j", flaky, replace=True)  # over the one Dependency registered
    ids = await q.add_jobs([("j", {"n": i}) for i in range(60)])
    await q.start()
    st = await wait_until(lambda: _stats_if(m, OPEN), timeout=15)
    assert damaged >= 3
    assert st.reason == "12 of 12 requests failed in the window"
    # Runs admitted before it opened may still end (failed) after it: at most the
    # worker's other three slots.
    await asyncio.sleep(0.2)
    assert 12 <= len(dep.failed) <= 15
    dep.down = False
    await wait_until(lambda: len(dep.completed) + len(dep.failed) == len(ids), timeout=30)
    await asyncio.sleep(0.3)  # nothing ends twice, late
    ended = dep.completed + dep.failed
    assert sorted(ended) == sorted(ids), "every job ends exactly once"
    assert (await m.get_stats("dep")).state is CLOSED
    counts = await q.get_stats()
    assert (counts.completed, counts.failed + counts.dlq) == (len(dep.completed), len(dep.failed))
    assert (counts.waiting, counts.active, counts.delayed, counts.pending) == (0, 0, 0, 0)


async def test_a_binding_left_on_a_waiting_job_counts_nothing(
    make_queue: QueueFactory, redis_client: redis.asyncio.Redis
) -> None:
    """A ``cb`` field on a job that its breaker did not admit (left by a worker without
    the manager, or written by hand) is dropped when the job is claimed."""
    q = _queue(make_queue)
    m = CircuitBreakerManager(q, events=False)
    await m.create_breaker({"id": "dep", "failure_threshold": {"min_requests": 1}})
    dep = Dependency(q, "k")
    job = await q.add_job("k", {})
    await redis_client.hset(q.keys.job(job), "cb", "dep")
    await q.start()
    await wait_until(lambda: dep.failed == [job])
    st = await m.get_stats("dep")
    assert (st.state, st.requests) == (CLOSED, 0)


# ================================================================ held jobs are let go


async def _open_with_one_held(
    make_queue: QueueFactory, *, events: bool = False
) -> tuple[JobQueue, CircuitBreakerManager, Dependency, str]:
    q = _queue(make_queue)
    m = CircuitBreakerManager(q, events=events)
    await m.create_breaker({"id": "dep", "job_name": "j"})
    await m.force_open("dep", 3_600_000)  # held for an hour unless let go
    dep = Dependency(q)
    dep.down = False
    held = await q.add_job("j", {})
    await q.start()
    await wait_until(lambda: _held(q))
    return q, m, dep, held


async def test_a_claim_of_a_bound_job_lets_go_what_a_damaged_breaker_held(
    make_queue: QueueFactory, redis_client: redis.asyncio.Redis
) -> None:
    q, _m, dep, held = await _open_with_one_held(make_queue)
    await _damage(redis_client, q.keys.extra("cb:b:dep"))
    new = await q.add_job("j", {})
    await wait_until(lambda: sorted(dep.completed) == sorted([held, new]), timeout=10)
    assert await _held(q) == 0


async def test_a_read_lets_go_what_a_damaged_breaker_held(
    make_queue: QueueFactory, redis_client: redis.asyncio.Redis
) -> None:
    q, m, dep, held = await _open_with_one_held(make_queue)
    await _damage(redis_client, q.keys.extra("cb:b:dep"))
    st = await m.get_stats("dep")
    assert st.state is CLOSED and "holds another Redis type" in st.damaged
    await wait_until(lambda: dep.completed == [held], timeout=10)


async def test_the_events_leader_lets_go_what_a_deleted_breaker_held(
    make_queue: QueueFactory, redis_client: redis.asyncio.Redis
) -> None:
    q, _m, dep, held = await _open_with_one_held(make_queue, events=True)
    await redis_client.delete(q.keys.extra("cb:b:dep"))  # deleted by hand, no read after
    await wait_until(lambda: dep.completed == [held], timeout=15)


async def test_a_damaged_state_field_no_longer_holds_jobs(
    make_queue: QueueFactory, redis_client: redis.asyncio.Redis
) -> None:
    q, _m, dep, held = await _open_with_one_held(make_queue, events=True)
    await redis_client.hset(q.keys.extra("cb:b:dep"), "st", "opened")  # read as closed
    await wait_until(lambda: dep.completed == [held], timeout=15)


async def test_the_sweep_arms_a_lost_park_timer_again(
    make_queue: QueueFactory, redis_client: redis.asyncio.Redis
) -> None:
    q = _queue(make_queue)
    m = CircuitBreakerManager(q, events=False)
    await m.create_breaker({"id": "dep", "job_name": "j", "timeout": 500})
    await m.force_open("dep")
    dep = Dependency(q)
    dep.down = False
    held = await q.add_job("j", {})
    await q.start()
    await wait_until(lambda: _held(q))
    timers, rules = q.keys.extra("park:timers"), q.keys.extra("park:rules")
    await redis_client.zrem(timers, "cb:dep")
    await redis_client.hdel(rules, "cb:dep")
    await asyncio.sleep(1.0)
    assert dep.completed == []  # nothing brings it back: the timer is gone
    await BreakerEvents(q).sweep()
    await wait_until(lambda: dep.completed == [held], timeout=10)


async def test_replace_lets_go_at_once_and_explain_says_what_happens(
    make_queue: QueueFactory, redis_client: redis.asyncio.Redis
) -> None:
    q, m, dep, held = await _open_with_one_held(make_queue)
    key = q.keys.extra("cb:b:dep")
    await redis_client.delete(key)
    (reason,) = [r for r in (await q.explain(held)).reasons if r.code == "breaker-open"]
    assert f"whose record {key} is gone" in reason.message
    assert "next claim" in reason.message and "replace=True" in reason.message
    await _damage(redis_client, key)
    (reason,) = [r for r in (await q.explain(held)).reasons if r.code == "breaker-open"]
    assert "acts closed and holds no job" in reason.message
    assert dep.completed == []
    await m.create_breaker({"id": "dep", "job_name": "j"}, replace=True)  # the repair
    await wait_until(lambda: dep.completed == [held], timeout=10)


async def test_a_lost_probe_deadline_is_shown_by_stats_and_prometheus(
    make_queue: QueueFactory, redis_client: redis.asyncio.Redis
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from kitium_queue.features.prometheus import PrometheusExporter

    q = _queue(make_queue)
    m = CircuitBreakerManager(q, events=False)
    await m.create_breaker({"id": "dep", "timeout": 1, "probe_timeout": 3_600_000})
    await m.force_open("dep", 1)
    await wait_until(lambda: _stats_if(m, HALF))
    assert (await m.call("acquire", "dep", "t1"))[1] == b"probe"
    await redis_client.hdel(q.keys.extra("cb:b:dep"), "pdl")
    st = await m.get_stats("dep")
    assert st.state is HALF and "probe deadline (pdl)" in st.damaged and "reset()" in st.damaged
    exporter = PrometheusExporter([q], subscribe=False)
    text = (await exporter.render()).decode()
    flags = {
        s.labels["part"]
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "kitium_queue_read_error"
    }
    assert flags == {"breaker:dep"}
    assert (await m.reset("dep")).damaged == ""


def test_the_cli_shows_a_lost_probe_deadline(cli_app: str, redis_url: str, prefix: str) -> None:
    from click.testing import CliRunner

    from kitium_queue.cli import main

    async def damage() -> None:
        q = JobQueue("cli", redis=redis_url, prefix=prefix)
        m = CircuitBreakerManager(q, events=False)
        await m.create_breaker({"id": "api", "timeout": 1, "probe_timeout": 3_600_000})
        await m.force_open("api", 1)
        await asyncio.sleep(0.01)
        assert (await m.call("acquire", "api", "t1"))[1] == b"probe"
        client = await q.client()
        await client.hdel(q.keys.extra("cb:b:api"), "pdl")
        await q.close()

    asyncio.run(damage())
    out = CliRunner().invoke(main, ["breakers", "show", cli_app, "api"])
    assert out.exit_code == 0, out.output
    (line,) = [x for x in out.output.splitlines() if x.startswith("damaged\tapi\t")]
    assert "probe deadline (pdl)" in line and "Repair: reset()" in line


async def test_the_sweep_reports_a_breaker_whose_record_is_gone(
    make_queue: QueueFactory, redis_client: redis.asyncio.Redis
) -> None:
    from kitium_queue.parking import slot_errors

    q, _m, dep, held = await _open_with_one_held(make_queue)
    await redis_client.delete(q.keys.extra("cb:b:dep"))
    assert await BreakerEvents(q).sweep() == 1
    await wait_until(lambda: dep.completed == [held], timeout=10)
    report = (await slot_errors(q)).get("circuit-breakers:damaged", "")
    assert "its record" in report and "is gone" in report and "replace=True" in report
    assert await BreakerEvents(q).sweep() == 0  # nothing held any more


# ================================================================ half-open never sticks


@pytest.mark.parametrize("damage", ["probe set deleted", "probe deadline lost"])
async def test_a_half_open_breaker_with_a_lost_probe_opens_again(
    make_queue: QueueFactory, redis_client: redis.asyncio.Redis, damage: str
) -> None:
    q = _queue(make_queue)
    m = CircuitBreakerManager(q, events=False)
    await m.create_breaker({"id": "dep", "job_name": "j", "timeout": 200, "probe_timeout": 300})
    await m.force_open("dep", 1)
    await wait_until(lambda: _stats_if(m, HALF))
    assert (await m.call("acquire", "dep", "t1"))[1] == b"probe"  # the one place taken
    key = q.keys.extra("cb:b:dep")
    if damage == "probe set deleted":
        await redis_client.delete(q.keys.extra("cb:p:dep"))
    else:
        await redis_client.hset(key, "pdl", 0)
        st = await m.get_stats("dep")
        assert "probe deadline" in st.damaged and "reset()" in st.damaged
    dep = Dependency(q)
    dep.down = False
    job = await q.add_job("j", {})
    await q.start()
    # The lost probe is overdue: the breaker opens again, then lets this job probe.
    await wait_until(lambda: dep.completed == [job], timeout=10)
    assert (await m.get_stats("dep")).state is CLOSED
    reasons = [t.reason for t in await m.history("dep")]
    assert "a probe did not report within probe_timeout" in reasons


async def test_an_open_time_no_change_writes_holds_jobs_for_its_timeout_only(
    make_queue: QueueFactory, redis_client: redis.asyncio.Redis
) -> None:
    """``until`` written by hand far beyond any timeout (a valid number: the year 33658)
    held the breaker's jobs for good, reported as nothing."""
    q = _queue(make_queue)
    m = CircuitBreakerManager(q, events=False)
    await m.create_breaker({"id": "dep", "job_name": "j", "timeout": 200})
    await m.force_open("dep", 3_600_000)
    dep = Dependency(q)
    dep.down = False
    held = await q.add_job("j", {})
    await q.start()
    await wait_until(lambda: _held(q))
    await redis_client.hset(q.keys.extra("cb:b:dep"), "until", 10**15)
    st = await m.get_stats("dep")
    assert "until" in st.damaged and "reset()" in st.damaged
    # Read as open for its timeout (200 ms from when it opened): then half-open.
    await wait_until(lambda: _stats_if(m, HALF))
    await BreakerEvents(q).sweep()  # the timer set for the hour is brought forward
    await wait_until(lambda: dep.completed == [held], timeout=10)
    assert (await m.get_stats("dep")).damaged == ""  # closed by the probe: rewritten


# ================================================================ cost


async def test_a_run_leaves_no_binding_behind(
    make_queue: QueueFactory, redis_client: redis.asyncio.Redis
) -> None:
    q = make_queue(
        "q",
        worker={"concurrency": 2, "scheduler": False},
        retry={"max_attempts": 2, "backoff_delay": 60_000},
    )
    m = CircuitBreakerManager(q, events=False)
    await m.create_breaker({"id": "dep", "job_name": "j"})
    dep = Dependency(q)  # down: each run fails and is retried later (its record stays)
    q.process("k", dep)
    ids = [await q.add_job("j", {}), await q.add_job("k", {})]
    await q.start()
    await wait_until(lambda: sorted(dep.started) == sorted(ids))
    await wait_until(lambda: _requests(m, 1))
    for i in ids:
        assert await redis_client.hget(q.keys.job(i), "n") is not None
        assert await redis_client.hget(q.keys.job(i), "cb") is None
    assert await redis_client.exists(q.keys.extra("cb:of")) == 0


async def _requests(m: CircuitBreakerManager, n: int) -> bool:
    st = await m.get_stats("dep")
    return (st.requests, st.failures) == (n, n)


async def _stats_if(m: CircuitBreakerManager, state: CircuitBreakerState) -> Any:
    st = await m.get_stats("dep")
    return st if st.state is state else None


async def _held(q: JobQueue, breaker: str = "dep") -> int:
    return len(await parked_in(q, f"cb:{breaker}"))


# ================================================================ sweep of many breakers


async def _many_breakers(m: CircuitBreakerManager, names: list[str]) -> None:
    for i in range(0, len(names), 100):
        await asyncio.gather(*(m.create_breaker({"id": n}) for n in names[i : i + 100]))


async def test_the_sweep_walks_every_breaker_in_pages_across_rounds(
    make_queue: QueueFactory, redis_client: redis.asyncio.Redis
) -> None:
    """The sweep read only the first 1,000 breakers of ``cb:ids``: with more, a damaged
    breaker further on held its jobs until its park timer was due (here an hour)."""
    q = _queue(make_queue)
    m = CircuitBreakerManager(q, events=False)
    await m.create_breaker({"id": "a", "job_name": "k"})  # the first listed
    await _many_breakers(m, [f"a{i:05d}" for i in range(2199)])
    await m.create_breaker({"id": "dep", "job_name": "j"})
    await _many_breakers(m, [f"z{i:05d}" for i in range(299)])
    ids = q.keys.extra("cb:ids")
    assert await redis_client.zcard(ids) == 2500
    assert [await redis_client.zrank(ids, b) for b in ("a", "dep")] == [0, 2200]
    for b in ("a", "dep"):
        await m.force_open(b, 3_600_000)  # held for an hour unless let go
    dep, first = Dependency(q), Dependency(q, "k")
    dep.down = first.down = False
    held, held_first = await q.add_job("j", {}), await q.add_job("k", {})
    await q.start()
    await wait_until(lambda: _held(q))
    await wait_until(lambda: _held(q, "a"))
    await redis_client.delete(q.keys.extra("cb:b:dep"))  # deleted by hand, no read after
    ev = BreakerEvents(q)
    # One page of 1,000 breakers per call: the first two pass before "dep". The walk's
    # place is kept in Redis: a new leader (another object) goes on from it.
    assert await ev.sweep() == 0
    assert await redis_client.get(q.keys.extra("cb:sweep")) == b"%d a00998" % (
        await redis_client.zscore(ids, "a00998")
    )
    assert await BreakerEvents(q).sweep() == 0
    assert await _held(q) == 1
    assert await BreakerEvents(q).sweep() == 1  # the third page holds it
    assert await redis_client.get(q.keys.extra("cb:sweep")) == b""  # the walk is over
    await wait_until(lambda: dep.completed == [held], timeout=10)
    # The walk then starts again from the first breaker.
    await redis_client.delete(q.keys.extra("cb:b:a"))
    assert await ev.sweep() == 1
    await wait_until(lambda: held_first in first.completed, timeout=10)
    assert first.started == [held_first] and dep.started == [held]


@pytest.mark.parametrize("damage", ["hash", "nan a", "inf a", "12", " a", "x y z", "\xff\x00"])
async def test_a_damaged_sweep_place_starts_the_walk_again(
    make_queue: QueueFactory, redis_client: redis.asyncio.Redis, damage: str
) -> None:
    """``cb:sweep`` of another type or shape: the walk starts from the first breaker,
    and the place is written again."""
    q = _queue(make_queue)
    m = CircuitBreakerManager(q, events=False)
    await m.create_breaker({"id": "dep", "job_name": "j"})
    await m.force_open("dep", 3_600_000)  # held for an hour unless let go
    dep = Dependency(q)
    dep.down = False
    held = await q.add_job("j", {})
    await q.start()
    await wait_until(lambda: _held(q))
    await redis_client.delete(q.keys.extra("cb:b:dep"))  # deleted by hand, no read after
    key = q.keys.extra("cb:sweep")
    if damage == "hash":
        await redis_client.hset(key, "a", "1")
    else:
        await redis_client.set(key, damage.encode("latin-1"))
    assert await BreakerEvents(q).sweep() == 1  # from the first breaker: "dep" swept
    await wait_until(lambda: dep.completed == [held], timeout=10)
    assert await redis_client.type(key) == b"string"
    assert await redis_client.get(key) == b""


async def _named_breakers(m: CircuitBreakerManager, n: int) -> None:
    for i in range(0, n, 100):
        await asyncio.gather(
            *(
                m.create_breaker({"id": f"b{k:05d}", "job_name": f"n{k:05d}"})
                for k in range(i, min(n, i + 100))
            )
        )


@pytest.mark.parametrize("damage", ["type", "deleted"])
async def test_the_sweep_binds_again_the_names_a_rebuilt_or_deleted_index_lacks(
    make_queue: QueueFactory, redis_client: redis.asyncio.Redis, damage: str
) -> None:
    """1,200 named breakers: a claim rebuilds a damaged ``cb:names`` from the first
    1,000 only, and a deleted one binds nothing; after the sweep's walk (two pages)
    every name is bound again, and a job named for a breaker past the first 1,000 is
    held by it when it is open."""
    from kitium_queue.parking import slot_errors

    q = _queue(make_queue)
    m = CircuitBreakerManager(q, events=False)
    await _named_breakers(m, 1200)
    names = q.keys.extra("cb:names")
    assert await redis_client.hlen(names) == 1200
    if damage == "type":
        await _damage(redis_client, names)
        first = Dependency(q, "n00000")
        first.down = False
        ran = await q.add_job("n00000", {})
        await q.start()
        await wait_until(lambda: first.completed == [ran], timeout=10)
        assert await redis_client.hlen(names) == 1000  # the claim's bounded rebuild
    else:
        await redis_client.delete(names)
        await q.start()
    assert await redis_client.hget(names, "n01100") is None
    ev = BreakerEvents(q)
    assert await ev.sweep() == 0
    assert await redis_client.hlen(names) == 1000
    assert await BreakerEvents(q).sweep() == 0  # the second page: a new leader goes on
    assert await redis_client.hlen(names) == 1200
    assert await redis_client.hgetall(names) == {
        f"n{k:05d}".encode(): f"b{k:05d}".encode() for k in range(1200)
    }
    report = (await slot_errors(q)).get("circuit-breakers:damaged", "")
    assert "bound to their breakers again by the sweep" in report
    # A name bound to another breaker is left as it is.
    await redis_client.hset(names, "n00001", "b00002")
    assert await ev.sweep() == 0
    assert await redis_client.hget(names, "n00001") == b"b00002"
    # The name past the first 1,000 binds its jobs: held while its breaker is open.
    await m.force_open("b01100", 3_600_000)
    late = Dependency(q, "n01100")
    late.down = False
    await q.add_job("n01100", {})
    await wait_until(lambda: _held(q, "b01100"))
    assert late.started == []
