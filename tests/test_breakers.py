"""Circuit breakers that hold jobs (``CircuitBreakerManager``), in one process.

The engine side (admission parks bound jobs while open, the release slot counts their
outcomes) is exercised with in-process workers on the real Redis and on memory://;
the process-level properties (two workers see one state, a probe's worker SIGKILLed)
are in tests/test_breakers_procs.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from helpers import QueueFactory, wait_until
from kitium_queue import (
    BreakerNotFoundError,
    CircuitBreakerManager,
    CircuitBreakerState,
    CircuitOpenError,
    ConfigurationError,
    FeatureEvent,
    JobQueue,
    JobStatus,
    NonRetryableError,
    PermissionDeniedError,
    RetryLater,
)
from kitium_queue.hooks import AdminCall, Subscriber
from kitium_queue.parking import parked_count, parked_in

OPEN, HALF, CLOSED = (
    CircuitBreakerState.OPEN,
    CircuitBreakerState.HALF_OPEN,
    CircuitBreakerState.CLOSED,
)


def _queue(make_queue: QueueFactory, **kw: Any) -> JobQueue:
    kw.setdefault("worker", {"concurrency": 4, "scheduler": False})
    kw.setdefault("retry", {"max_attempts": 1})
    return make_queue(**kw)


class Dependency:
    """A fake downstream service: fails while ``down``; records calls."""

    def __init__(self) -> None:
        self.down = True
        self.calls: list[str] = []

    async def __call__(self, job: Any) -> str:
        self.calls.append(job.id)
        if self.down:
            raise ConnectionError("dependency down")
        return "ok"


# ================================================================ definitions


async def test_definitions_are_checked_and_shared(make_queue: QueueFactory) -> None:
    q = _queue(make_queue)
    m = CircuitBreakerManager(q)
    with pytest.raises(ConfigurationError, match="unknown breaker setting"):
        await m.create_breaker({"id": "a", "treshold": 1})
    with pytest.raises(ConfigurationError, match="percentage must be a number in"):
        await m.create_breaker({"id": "a", "failure_threshold": {"percentage": 0}})
    with pytest.raises(ConfigurationError, match="min_requests"):
        await m.create_breaker({"id": "a", "failure_threshold": {"min_requests": 0}})
    with pytest.raises(ConfigurationError, match="breaker id"):
        await m.create_breaker({"id": "a b"})
    with pytest.raises(ConfigurationError, match="window must be >= 1000"):
        await m.create_breaker({"id": "a", "window": 10})
    b = await m.create_breaker(
        {
            "id": "api",
            "job_name": "charge",
            "timeout": 5000,
            "failure_threshold": {"percentage": 40, "min_requests": 3},
            "half_open_probes": 2,
        }
    )
    assert b.id == "api"
    with pytest.raises(ConfigurationError, match="already exists"):
        await m.create_breaker({"id": "api"})
    with pytest.raises(ConfigurationError, match="already bound to circuit breaker 'api'"):
        await m.create_breaker({"id": "other", "job_name": "charge"})
    # Another manager (another process) sees the same definition.
    m2 = CircuitBreakerManager(_queue(make_queue), events=False)
    got = await m2.get_breaker("api")
    assert got is not None and got.config == b.config
    assert await m2.get_breaker("nope") is None
    with pytest.raises(BreakerNotFoundError, match="no circuit breaker 'nope'"):
        await m2.get_state("nope")
    st = await m2.get_stats("api")
    assert st.state is CLOSED and st.requests == 0 and st.next_probe_ms is None
    assert [s.config.id for s in await m.list_breakers()] == ["api"]
    # replace keeps the state, changes the definition
    await m.create_breaker({"id": "api", "job_name": "charge2", "timeout": 7000}, replace=True)
    assert (await m.get_stats("api")).config.timeout == 7000
    with pytest.raises(ConfigurationError, match="circuit_breaker_id"):
        await q.add_job("x", {}, circuit_breaker_id="bad id")
    assert await m.remove_breaker("api") is True
    assert await m.remove_breaker("api") is False
    assert await m.list_breakers() == []


async def test_the_option_needs_the_feature(make_queue: QueueFactory) -> None:
    q = _queue(make_queue)
    with pytest.raises(ConfigurationError, match=r"needs circuit breakers.*CircuitBreakerManager"):
        await q.add_job("x", {}, circuit_breaker_id="api")
    CircuitBreakerManager(q, events=False)
    assert await q.add_job("x", {}, circuit_breaker_id="api")


# ================================================================ inline use


async def test_execute_opens_at_the_threshold_then_probes_and_closes(
    make_queue: QueueFactory,
) -> None:
    q = _queue(make_queue)
    m = CircuitBreakerManager(q, events=False)
    b = await m.create_breaker(
        {
            "id": "dep",
            "timeout": 300,
            "half_open_probes": 2,
            "failure_threshold": {"percentage": 50, "min_requests": 4},
        }
    )

    async def boom() -> None:
        raise ConnectionError("down")

    def fine(x: int) -> int:  # a plain function: run in a thread
        return x * 2

    assert await b.execute(fine, 21) == 42
    with pytest.raises(ConnectionError):
        await b.execute(boom)
    with pytest.raises(RetryLater):  # counts nowhere

        async def later() -> None:
            raise RetryLater(10)

        await b.execute(later)
    st = await b.get_stats()
    assert (st.requests, st.failures, st.failure_rate) == (2, 1, 50.0)
    assert st.state is CLOSED  # 2 requests < min_requests 4
    with pytest.raises(ConnectionError):
        await b.execute(boom)
    assert await b.get_state() is CLOSED  # 2 of 3
    with pytest.raises(ConnectionError):
        await b.execute(boom)  # 3 of 4: 75 % >= 50 % with 4 requests
    st = await b.get_stats()
    assert st.state is OPEN and st.requests == 0
    assert st.next_probe_ms == st.open_until_ms == st.since_ms + 300
    with pytest.raises(CircuitOpenError, match="circuit breaker 'dep' is open") as ei:
        await b.execute(fine, 1)
    assert ei.value.retry_at_ms == st.open_until_ms
    await wait_until(lambda: _is(b, HALF), timeout=3, interval=0.05)
    # Half-open: two probes may run at once, a third call is refused.
    gate = asyncio.Event()

    async def slow() -> str:
        await gate.wait()
        return "ok"

    t1 = asyncio.create_task(b.execute(slow))
    t2 = asyncio.create_task(b.execute(slow))
    await wait_until(lambda: _probes(b, 2), timeout=3)
    with pytest.raises(CircuitOpenError, match="half-open"):
        await b.execute(fine, 1)
    gate.set()
    assert await t1 == await t2 == "ok"
    st = await b.get_stats()
    assert st.state is CLOSED and st.transitions == 3


async def _is(b: Any, state: CircuitBreakerState) -> bool:
    return bool(await b.get_state() is state)


async def _probes(b: Any, n: int) -> bool:
    return bool((await b.get_stats()).probes_admitted == n)


async def test_a_failed_probe_opens_again(make_queue: QueueFactory) -> None:
    q = _queue(make_queue)
    m = CircuitBreakerManager(q, events=False)
    b = await m.create_breaker(
        {"id": "dep", "timeout": 200, "failure_threshold": {"percentage": 100, "min_requests": 1}}
    )

    async def boom() -> None:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        await b.execute(boom)
    assert await b.get_state() is OPEN
    await wait_until(lambda: _is(b, HALF), timeout=3, interval=0.05)
    with pytest.raises(ConnectionError):
        await b.execute(boom)
    st = await b.get_stats()
    assert st.state is OPEN and "probe failed" in st.reason


async def test_a_probe_that_never_reports_reopens_after_its_deadline(
    make_queue: QueueFactory,
) -> None:
    q = _queue(make_queue)
    m = CircuitBreakerManager(q, events=False)
    b = await m.create_breaker(
        {
            "id": "dep",
            "timeout": 100,
            "probe_timeout": 300,
            "failure_threshold": {"percentage": 100, "min_requests": 1},
        }
    )
    await m.force_open("dep", 100)
    await wait_until(lambda: _is(b, HALF), timeout=3, interval=0.05)
    # A probe is taken and its caller vanishes (a process killed mid-call): nothing
    # ever reports it.
    assert (await m.call("acquire", "dep", "lost"))[1] == b"probe"
    with pytest.raises(CircuitOpenError):
        await b.execute(lambda: 1)
    st = await wait_until(lambda: _stats_if(b, OPEN), timeout=3, interval=0.05)
    assert "probe_timeout" in st.reason


async def _stats_if(b: Any, state: CircuitBreakerState) -> Any:
    st = await b.get_stats()
    return st if st.state is state else None


# ================================================================ jobs


async def test_bound_jobs_are_held_while_open_and_drain_when_closed(
    make_queue: QueueFactory,
) -> None:
    q = _queue(make_queue)
    m = CircuitBreakerManager(q, events=False)
    await m.create_breaker(
        {
            "id": "dep",
            "job_name": "call-dep",
            # Open long enough for every check of the open state below, on a loaded
            # machine too: at 400 ms the breaker went half-open during them and let the
            # job of "x" through as its probe (no processor yet), so it was never held.
            "timeout": 3000,
            "half_open_probes": 1,
            "failure_threshold": {"percentage": 50, "min_requests": 5},
        }
    )
    dep = Dependency()
    q.process("call-dep", dep)
    others: list[str] = []

    async def other(job: Any) -> None:
        others.append(job.id)

    q.process("other", other)
    first = [await q.add_job("call-dep", {"i": i}) for i in range(5)]
    await q.start()
    try:
        await wait_until(lambda: _is_m(m, OPEN, "dep"), timeout=5)
        for jid in first:
            await wait_until(lambda jid=jid: _status(q, jid, JobStatus.DLQ), timeout=5)
        n_calls = len(dep.calls)
        assert n_calls == 5
        # While open: bound jobs (by name and by option) wait, attempts 0; others run.
        held = await q.add_jobs([("call-dep", {"i": i}) for i in range(60)])
        held += [await q.add_job("x", {}, circuit_breaker_id="dep")]
        free = await q.add_jobs([("other", {}) for _ in range(20)])
        await wait_until(lambda: len(others) == 20, timeout=30)
        await wait_until(lambda: _parked(q, "dep", len(held)), timeout=30)
        for jid in held[:5] + held[-1:]:
            info = await q.get_job_status(jid)
            assert info is not None and info.status is JobStatus.PENDING and info.attempts == 0
        assert len(dep.calls) == n_calls
        assert set(free) == set(others)
        # The dependency recovers: one probe runs when the timeout ends, then all.
        dep.down = False
        q.process("x", dep)
        await wait_until(lambda: _is_m(m, CLOSED, "dep"), timeout=10)
        for jid in held:
            await wait_until(lambda jid=jid: _status(q, jid, JobStatus.COMPLETED), timeout=10)
        assert await parked_count(q) == 0
        hist = [(t.from_state, t.to_state) for t in reversed(await m.history("dep"))]
        assert hist == [("closed", "open"), ("open", "half-open"), ("half-open", "closed")]
    finally:
        await q.close()


async def _is_m(m: CircuitBreakerManager, state: CircuitBreakerState, bid: str) -> bool:
    return bool(await m.get_state(bid) is state)


async def _status(q: JobQueue, jid: str, status: JobStatus) -> bool:
    info = await q.get_job_status(jid)
    return info is not None and info.status is status


async def _parked(q: JobQueue, bid: str, n: int) -> bool:
    return len(await parked_in(q, f"cb:{bid}", limit=n + 10)) == n


async def test_half_open_lets_only_the_probe_count_through(make_queue: QueueFactory) -> None:
    q = _queue(make_queue, worker={"concurrency": 8, "scheduler": False})
    m = CircuitBreakerManager(q, events=False)
    await m.create_breaker(
        {
            "id": "dep",
            "job_name": "call-dep",
            "timeout": 200,
            "half_open_probes": 3,
            "probe_timeout": 60_000,
            "failure_threshold": {"percentage": 50, "min_requests": 5},
        }
    )
    gate = asyncio.Event()
    running: list[str] = []

    async def slow(job: Any) -> None:
        running.append(job.id)
        await gate.wait()

    q.process("call-dep", slow)
    await m.force_open("dep", 200)
    ids = await q.add_jobs([("call-dep", {}) for _ in range(30)])
    await q.start()
    try:
        await wait_until(lambda: len(running) == 3, timeout=5)
        await asyncio.sleep(1.5)  # more claims and timer rounds: still only the probes
        assert len(running) == 3
        st = await m.get_stats("dep")
        assert st.state is HALF and st.probes_admitted == 3 and st.held_jobs == 27
        gate.set()
        for jid in ids:
            await wait_until(lambda jid=jid: _status(q, jid, JobStatus.COMPLETED), timeout=10)
        assert await m.get_state("dep") is CLOSED
    finally:
        gate.set()
        await q.close()


async def test_which_outcomes_count(make_queue: QueueFactory) -> None:
    """Exceptions (NonRetryableError too) and retries count as failures; RetryLater
    counts nowhere; successes count as requests."""
    q = _queue(make_queue, retry={"max_attempts": 2, "backoff_delay": 1})
    m = CircuitBreakerManager(q, events=False)
    await m.create_breaker(
        {
            "id": "dep",
            "job_name": "j",
            "window": 60_000,
            "failure_threshold": {"percentage": 100, "min_requests": 1000},
        }
    )

    deferred: set[str] = set()

    async def proc(job: Any) -> str:
        kind = job.data["k"]
        if kind == "raise":
            raise ValueError("no")
        if kind == "fatal":
            raise NonRetryableError("bad input")
        if kind == "later" and job.id not in deferred:
            deferred.add(job.id)
            raise RetryLater(1)
        return "ok"

    q.process("j", proc)
    ids = await q.add_jobs([("j", {"k": k}) for k in ("ok", "ok", "raise", "fatal", "later")])
    await q.start()
    try:
        for jid in ids:
            await wait_until(lambda jid=jid: _done(q, jid), timeout=10)
        st = await m.get_stats("dep")
        # ok, ok; raise: retried (failure) then failed (failure); fatal: failure;
        # later: deferred (counts nowhere), then ok.
        assert (st.requests, st.failures) == (6, 3), st
    finally:
        await q.close()


async def _done(q: JobQueue, jid: str) -> bool:
    info = await q.get_job_status(jid)
    return info is not None and info.status in (
        JobStatus.COMPLETED,
        JobStatus.DLQ,
        JobStatus.FAILED,
    )


async def test_jobs_bound_to_a_removed_or_unknown_breaker_run(make_queue: QueueFactory) -> None:
    q = _queue(make_queue)
    m = CircuitBreakerManager(q, events=False)
    await m.create_breaker({"id": "dep", "job_name": "j"})
    await m.force_open("dep", 60_000)
    done: list[str] = []

    async def proc(job: Any) -> None:
        done.append(job.id)

    q.process("j", proc)
    q.process("k", proc)
    held = await q.add_jobs([("j", {}) for _ in range(5)])
    free = await q.add_job("k", {}, circuit_breaker_id="never-created")
    await q.start()
    try:
        await wait_until(lambda: free in done, timeout=5)
        await wait_until(lambda: _parked(q, "dep", 5), timeout=5)
        # A held job can be removed like any other; nothing is counted for it.
        assert await q.remove_job(held[0])
        assert await q.get_job_status(held[0]) is None
        st = await m.get_stats("dep")
        assert (st.held_jobs, st.requests) == (4, 0)
        api = await m.get_breaker("dep")
        assert api is not None
        with pytest.raises(CircuitOpenError):
            await api.execute(lambda: 1)
        assert await m.remove_breaker("dep")
        await wait_until(lambda: len(done) == 5, timeout=5)
        assert set(done) == {*held[1:], free}
        gone = await m.create_breaker({"id": "gone"})
        assert await m.remove_breaker("gone")
        with pytest.raises(BreakerNotFoundError):
            await gone.execute(lambda: 1)
    finally:
        await q.close()


# ================================================================ operators and events


async def test_operators_go_through_the_admin_choke_point(make_queue: QueueFactory) -> None:
    q = _queue(make_queue)
    m = CircuitBreakerManager(q, events=False)
    await m.create_breaker({"id": "dep"})
    seen: list[AdminCall] = []

    class Audit(Subscriber):
        def admin(self, call: AdminCall) -> None:
            seen.append(call)

    q.subscribe(Audit())
    st = await m.force_open("dep", 60_000, reason="maintenance")
    assert st.state is OPEN and st.reason == "maintenance"
    st = await m.reset("dep")
    assert st.state is CLOSED and st.reason == "reset by an operator"
    assert [c.command for c in seen] == ["open_breaker", "reset_breaker"]

    def deny(call: AdminCall) -> None:
        if call.command == "open_breaker":
            raise PermissionDeniedError("operators only")

    q.admin.add_guard(deny)
    with pytest.raises(PermissionDeniedError):
        await m.force_open("dep")
    assert await m.get_state("dep") is CLOSED


@pytest.mark.redis_only
async def test_state_changes_reach_subscribers_metrics_and_the_stream(
    make_queue: QueueFactory,
) -> None:
    class Metrics:
        def __init__(self) -> None:
            self.counts: list[tuple[str, dict[str, str]]] = []

        def increment(self, name: str, value: float = 1, tags: Any = None) -> None:
            self.counts.append((name, dict(tags or {})))

        def observe(self, name: str, value: float, tags: Any = None) -> None:
            pass

    metrics = Metrics()
    q = _queue(make_queue, metrics=metrics)
    m = CircuitBreakerManager(q)
    assert m.events is not None
    m.events.interval_s = 0.02
    events: list[FeatureEvent] = []
    handled: list[Any] = []

    class Sub(Subscriber):
        def feature_event(self, event: FeatureEvent) -> None:
            events.append(event)

    q.subscribe(Sub())
    q.on("breaker-state", handled.append)
    await m.create_breaker({"id": "dep"})
    await q.start()
    try:
        await wait_until(lambda: m.events is not None and m.events.is_leader, timeout=5)
        await asyncio.sleep(0.1)
        await m.force_open("dep", 60_000, reason="drill")
        await m.reset("dep")
        await wait_until(lambda: len(events) == 2, timeout=5)
        assert [(e.fields["from"], e.fields["to"]) for e in events] == [
            ("closed", "open"),
            ("open", "closed"),
        ]
        assert events[0].subject == "dep" and events[0].fields["reason"] == "drill"
        assert events[0].name == "breaker-state" and events[0].event_id
        assert len(handled) == 2 and handled[0].extra["to"] == "open"
        assert (
            "breaker.transitions",
            {"queue": q.name, "breaker": "dep", "state": "open"},
        ) in metrics.counts
        stream = [
            e
            async for e in q.events(last_id="0", block_ms=50, follow=False)
            if e.event == "breaker-state"
        ]
        assert [(e.job_id, e.fields["to"]) for e in stream] == [("dep", "open"), ("dep", "closed")]
    finally:
        await q.close()
