"""Lifecycle hooks as the worker emits them (``hooks.py``, ``observe.py``).

* A subscriber sees, per job, exactly the hooks of its life in order — success, retry
  then success, final failure to the DLQ, ``RetryLater``, a stall recovered by another
  worker, progress — and each ``finished`` only once Redis recorded the outcome.
* Every dead-letter path the worker sees reports ``dead_lettered`` with the reason, and
  the ``job-dlq`` / final ``job-failed`` events carry it.
* A subscriber that raises changes no outcome and does not stop the others.
* With only the built-in ``Observer``, the bus holds nothing else, and a completion
  nobody listens to builds no ``Outcome`` and calls no ``finished``; with two quiet
  subscribers, a listener added later is heard from the next completion on.
  An answer changed by a ``finished`` call counts from the next outcome of the same
  batch on.
* Process middleware wrap a run outermost first.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import pytest

from helpers import QueueFactory, wait_for_status, wait_until
from kitium_queue import EventData, JobQueue, JobStatus, NonRetryableError, RetryLater
from kitium_queue.hooks import HOOK_NAMES, Outcome, Subscriber
from kitium_queue.job import Job
from kitium_queue.leases import Run
from kitium_queue.observe import Observer
from kitium_queue.outcomes import Outcomes

# Retry / defer delays long enough that a job is still delayed when the check made from
# its ``finished`` hook reads it.
_DELAY_MS = 600

# Where each outcome leaves the job once Redis recorded it.
_RECORDED_AS = {
    "completed": JobStatus.COMPLETED,
    "retrying": JobStatus.DELAYED,
    "deferred": JobStatus.DELAYED,
    "failed": JobStatus.DLQ,
}


class Recorder(Subscriber):
    """Records every worker hook, and from each ``finished`` reads the job in a task."""

    def __init__(self, queue: JobQueue) -> None:
        self.queue = queue
        self.calls: list[tuple[Any, ...]] = []
        self.outcomes: list[tuple[str, Outcome]] = []
        self.recorded: list[tuple[str, str, JobStatus | None]] = []
        self._reads: set[asyncio.Task[None]] = set()

    def started(self, queue: str, job: Any) -> None:
        self.calls.append(("started", job.id))

    def progress(self, queue: str, job: Any, value: Any) -> None:
        self.calls.append(("progress", job.id, value))

    def finished(self, queue: str, job: Any, outcome: Outcome) -> None:
        self.calls.append(("finished", job.id, outcome.kind))
        self.outcomes.append((job.id, outcome))
        task = asyncio.get_running_loop().create_task(self._read(job.id, outcome.kind))
        self._reads.add(task)
        task.add_done_callback(self._reads.discard)

    async def _read(self, job_id: str, kind: str) -> None:
        info = await self.queue.get_job_status(job_id)
        self.recorded.append((job_id, kind, info.status if info is not None else None))

    def stalled(self, queue: str, job_ids: Sequence[str]) -> None:
        self.calls.extend(("stalled", jid) for jid in job_ids)

    def dead_lettered(self, queue: str, job_id: str, job: Any, reason: str | None) -> None:
        self.calls.append(("dead_lettered", job_id, reason))

    def of(self, job_id: str) -> list[tuple[Any, ...]]:
        """The hooks ``job_id`` went through, in order (without the job id)."""
        return [(c[0], *c[2:]) for c in self.calls if c[1] == job_id and c[0] in HOOK_NAMES]


async def _claim_and_die(q: JobQueue) -> None:
    """A worker that claims the next job under a 100 ms lease and dies."""
    reply = await q.run("claim", [1, 100, 0, 0, 2, "1", "dead-worker", 100])
    assert reply[0] == b"ok"


async def test_a_subscriber_sees_each_job_life_in_order_after_redis_recorded_it(
    make_queue: QueueFactory,
) -> None:
    q = make_queue("life", worker={"concurrency": 4})
    rec = Recorder(q)
    q.subscribe(rec)
    # The built-in Observer is the first subscriber: its event of an outcome comes
    # before the hooks of subscribers added later.
    q.on("job-completed", lambda e: rec.calls.append(("job-completed", e.job_id)))
    backoff = {"type": "fixed", "delay": _DELAY_MS}

    @q.process("ok")
    async def ok(job: Any) -> str:
        return "fine"

    @q.process("flaky")
    async def flaky(job: Any) -> str:
        if job.attempts == 1:
            raise RuntimeError("first attempt fails")
        return "second"

    @q.process("bad")
    async def bad(job: Any) -> None:
        raise ValueError(f"attempt {job.attempts} fails")

    later_runs: list[int] = []

    @q.process("later")
    async def later(job: Any) -> str:
        later_runs.append(job.attempts)
        if len(later_runs) == 1:
            raise RetryLater(_DELAY_MS, "not yet")
        return "now"

    @q.process("progress")
    async def progress(job: Any) -> int:
        await job.update_progress(50)
        return 1

    stall = await q.add_job("ok", {})
    await _claim_and_die(q)
    ids = {
        "ok": await q.add_job("ok", {}),
        "flaky": await q.add_job("flaky", {}, attempts=2, backoff=backoff),
        "bad": await q.add_job("bad", {}, attempts=2, backoff=backoff),
        "later": await q.add_job("later", {}),
        "progress": await q.add_job("progress", {}),
    }
    await q.start()
    for name in ("ok", "flaky", "later", "progress"):
        await wait_for_status(q, ids[name], JobStatus.COMPLETED, timeout=10)
    await wait_for_status(q, stall, JobStatus.COMPLETED, timeout=10)
    await wait_for_status(q, ids["bad"], JobStatus.DLQ, timeout=10)
    await wait_until(lambda: len(rec.recorded) == len(rec.outcomes) == 9, 5)

    done = ("finished", "completed")
    assert rec.of(ids["ok"]) == [("started",), done]
    assert rec.of(ids["flaky"]) == [("started",), ("finished", "retrying"), ("started",), done]
    assert rec.of(ids["later"]) == [("started",), ("finished", "deferred"), ("started",), done]
    assert rec.of(ids["progress"]) == [("started",), ("progress", 50), done]
    assert rec.of(stall) == [("stalled",), ("started",), done]
    reason = "ValueError: attempt 2 fails"
    assert rec.of(ids["bad"]) == [
        ("started",),
        ("finished", "retrying"),
        ("started",),
        ("finished", "failed"),
        ("dead_lettered", reason),
    ]
    # dead_lettered comes right after the final failure it follows.
    at = rec.calls.index(("finished", ids["bad"], "failed"))
    assert rec.calls[at + 1] == ("dead_lettered", ids["bad"], reason)

    # Each finished hook ran after Redis recorded the outcome.
    for job_id, kind, status in rec.recorded:
        assert status is _RECORDED_AS[kind], (job_id, kind, status)

    # What the outcomes carry.
    by_kind: dict[str, list[Outcome]] = {}
    for _, outcome in rec.outcomes:
        by_kind.setdefault(outcome.kind, []).append(outcome)
    assert {o.result for o in by_kind["completed"]} == {"fine", "second", "now", 1}
    assert all(o.duration_ms is not None and o.duration_ms >= 0 for o in by_kind["completed"])
    assert all(o.delay_ms == _DELAY_MS for o in by_kind["retrying"] + by_kind["deferred"])
    assert [o.reason for o in by_kind["deferred"]] == ["not yet"]
    assert isinstance(by_kind["deferred"][0].error, RetryLater)
    (failed,) = by_kind["failed"]
    assert failed.reason == reason and isinstance(failed.error, ValueError) and failed.final
    assert {o.reason for o in by_kind["retrying"]} == {
        "RuntimeError: first attempt fails",
        "ValueError: attempt 1 fails",
    }
    for job_id in (stall, *ids.values()):
        if job_id != ids["bad"]:
            event = rec.calls.index(("job-completed", job_id))
            assert rec.calls[event + 1] == ("finished", job_id, "completed")


async def test_every_dead_letter_path_reports_the_reason(make_queue: QueueFactory) -> None:
    q = make_queue("dlq", settings={"max_stalled_count": 0})
    rec = Recorder(q)
    q.subscribe(rec)
    dlq_events: list[EventData] = []
    failed_events: list[EventData] = []
    q.on("job-dlq", dlq_events.append)
    q.on("job-failed", failed_events.append)

    @q.process("fatal")
    async def fatal(job: Any) -> None:
        raise NonRetryableError("no point retrying")

    @q.process("slow")
    async def slow(job: Any) -> None:
        await asyncio.sleep(5)

    @q.process("ok")
    async def ok(job: Any) -> None:
        return None

    stalled = await q.add_job("ok", {})
    await _claim_and_die(q)  # stalls once: past max_stalled_count=0 → DLQ on recovery
    fatal_id = await q.add_job("fatal", {})
    slow_id = await q.add_job("slow", {}, timeout=100, attempts=1)
    garbled = await q.add_job("ok", {})
    client = await q.client()
    await client.hset(q.keys.job(garbled), "d", b"\xff\x00 not a payload")
    await q.start()
    for jid in (stalled, fatal_id, slow_id, garbled):
        await wait_for_status(q, jid, JobStatus.DLQ, timeout=10)
    await wait_until(lambda: len(dlq_events) == 4, 5)

    reasons = {c[1]: c[2] for c in rec.calls if c[0] == "dead_lettered"}
    assert reasons[fatal_id] == "NonRetryableError: no point retrying"
    assert "exceeded its timeout of 100 ms" in (reasons[slow_id] or "")
    assert (reasons[garbled] or "").startswith("undecodable payload: ")
    # Recovery dead-lettered a job this worker never held: the reason is on the record.
    assert reasons[stalled] is None
    info = await q.get_job_status(stalled)
    assert info is not None and "stalled" in (info.failed_reason or "")

    events = {e.job_id: e for e in dlq_events}
    assert events[stalled].job is None and events[stalled].error is None
    for jid in (fatal_id, slow_id, garbled):
        event = events[jid]
        assert event.job is not None and event.error is not None
        assert event.extra["reason"] == reasons[jid]
        stored = await q.get_job_status(jid)
        assert stored is not None and stored.failed_reason == reasons[jid]
    assert isinstance(events[fatal_id].error, NonRetryableError)
    assert "no point retrying" in events[fatal_id].extra["traceback"]
    assert isinstance(events[slow_id].error, TimeoutError)
    # The final job-failed event carries the same details.
    finals = {e.job_id: e for e in failed_events if e.extra.get("final")}
    assert set(finals) == {fatal_id, slow_id, garbled}
    for jid, event in finals.items():
        assert event.extra["reason"] == reasons[jid] and event.error is events[jid].error


class Raising(Subscriber):
    """Fails in every hook it has."""

    def __init__(self) -> None:
        self.calls = 0

    def _boom(self) -> None:
        self.calls += 1
        raise RuntimeError("subscriber bug")

    def started(self, queue: str, job: Any) -> None:
        self._boom()

    def progress(self, queue: str, job: Any, value: Any) -> None:
        self._boom()

    def finished(self, queue: str, job: Any, outcome: Outcome) -> None:
        self._boom()

    def dead_lettered(self, queue: str, job_id: str, job: Any, reason: str | None) -> None:
        self._boom()


async def test_a_raising_subscriber_changes_no_outcome_and_stops_no_other(
    make_queue: QueueFactory, caplog: pytest.LogCaptureFixture
) -> None:
    q = make_queue("raising")
    raising = Raising()
    q.subscribe(raising)  # before the recorder: the recorder must still be called
    rec = Recorder(q)
    q.subscribe(rec)
    completed: list[str] = []
    q.on("job-completed", lambda e: completed.append(e.job_id or ""))
    progress_errors: list[BaseException] = []

    @q.process("ok")
    async def ok(job: Any) -> str:
        try:
            await job.update_progress(10)
        except BaseException as exc:  # the hook's error must not reach the processor
            progress_errors.append(exc)
        return "fine"

    @q.process("bad")
    async def bad(job: Any) -> None:
        raise ValueError("always")

    with caplog.at_level(logging.ERROR):
        good = [await q.add_job("ok", {}) for _ in range(3)]
        poison = await q.add_job("bad", {}, attempts=1)
        await q.start()
        for jid in good:
            info = await wait_for_status(q, jid, JobStatus.COMPLETED)
            assert info.result == "fine" and info.attempts == 1
        info = await wait_for_status(q, poison, JobStatus.DLQ)
        assert info.attempts == 1
        await wait_until(lambda: len(rec.recorded) == 4, 5)

    assert progress_errors == []
    assert sorted(completed) == sorted(good)  # the Observer's events still fire
    for jid in good:
        assert rec.of(jid) == [("started",), ("progress", 10), ("finished", "completed")]
    assert rec.of(poison) == [
        ("started",),
        ("finished", "failed"),
        ("dead_lettered", "ValueError: always"),
    ]
    assert raising.calls == 3 * 3 + 3
    assert "lifecycle subscriber" in caplog.text and "subscriber bug" in caplog.text


async def test_only_the_observer_is_on_the_bus_and_idle_hooks_cost_nothing(
    make_queue: QueueFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real = Observer.finished

    def spy(self: Observer, queue: str, job: Any, outcome: Outcome) -> None:
        calls.append(outcome.kind)
        real(self, queue, job, outcome)

    monkeypatch.setattr(Observer, "finished", spy)
    q = make_queue("idle")
    bus = q.hooks
    (observer,) = bus.subscribers
    assert isinstance(observer, Observer)
    for hook in HOOK_NAMES:
        assert all(fn.__self__ is observer for fn in getattr(bus, hook)), hook
    # Hooks the Observer does not use are empty tuples: emitting them is skipped.
    assert bus.removed == () and bus.admin == ()
    q.process("n", lambda job: None)

    ids = await q.add_jobs([("n", i) for i in range(20)])
    await q.start()
    for jid in ids:
        await wait_for_status(q, jid, JobStatus.COMPLETED)
    # No listener, no metrics adapter: no completion reached finished.
    assert calls == []
    assert observer.quiet_outcomes() == "CDH"

    seen: list[str] = []
    q.on("job-completed", lambda e: seen.append(e.job_id or ""))
    assert observer.quiet_outcomes() == "DH"
    more = await q.add_jobs([("n", i) for i in range(5)])
    for jid in more:
        await wait_for_status(q, jid, JobStatus.COMPLETED)
    await wait_until(lambda: len(seen) == 5, 5)
    assert calls == ["completed"] * 5 and sorted(seen) == sorted(more)


class Quiet(Recorder):
    """A subscriber that says it ignores every outcome, failures included."""

    def quiet_outcomes(self) -> str:
        return "CRFDH"


async def test_quiet_subscribers_skip_outcomes_but_never_a_dead_letter(
    make_queue: QueueFactory,
) -> None:
    q = make_queue("quiet")
    quiet = Quiet(q)
    q.subscribe(quiet)

    @q.process("ok")
    async def ok(job: Any) -> None:
        return None

    @q.process("bad")
    async def bad(job: Any) -> None:
        raise ValueError("always")

    good = await q.add_job("ok", {})
    poison = await q.add_job("bad", {}, attempts=1)
    await q.start()
    await wait_for_status(q, good, JobStatus.COMPLETED)
    await wait_for_status(q, poison, JobStatus.DLQ)
    await wait_until(lambda: ("dead_lettered", poison, "ValueError: always") in quiet.calls, 5)
    # Both subscribers (Observer and this one) are quiet about completions: skipped.
    assert quiet.of(good) == [("started",)]
    # A final failure is never skipped: it goes on to dead_lettered.
    assert quiet.of(poison) == [
        ("started",),
        ("finished", "failed"),
        ("dead_lettered", "ValueError: always"),
    ]


class Adds(Subscriber):
    def __init__(self) -> None:
        self.added: list[tuple[str, str]] = []
        self.dups: list[tuple[str, str]] = []

    def enqueued(self, queue: str, job_ids: Sequence[str], names: Sequence[str]) -> None:
        self.added += list(zip(job_ids, names, strict=True))

    def duplicate(self, queue: str, job_ids: Sequence[str], names: Sequence[str]) -> None:
        self.dups += list(zip(job_ids, names, strict=True))


async def test_an_add_that_finds_its_job_is_a_duplicate_not_an_enqueue(
    make_queue: QueueFactory,
) -> None:
    q = make_queue("dups")
    subs = Adds()
    q.subscribe(subs)
    added_events: list[str] = []
    q.on("job-added", lambda e: added_events.append(e.job_id or ""))
    first = await q.add_job("n", {}, job_id="order-1")
    assert await q.add_job("again", {}, job_id="order-1") == first
    keyed = await q.add_job("k", {}, idempotency_key="pay-7")
    ids = await q.add_jobs(
        [("k", {}, {"idempotency_key": "pay-7"}), ("n", {}), ("n", {}, {"job_id": "order-1"})]
    )
    assert ids[0] == keyed and ids[2] == first
    assert subs.added == [(first, "n"), (keyed, "k"), (ids[1], "n")]
    assert subs.dups == [(first, "again"), (keyed, "k"), (first, "n")]
    await wait_until(lambda: len(added_events) == 3, 5)
    assert sorted(added_events) == sorted([first, keyed, ids[1]])


async def test_two_quiet_subscribers_then_a_listener(make_queue: QueueFactory) -> None:
    # With the Observer and a subscriber that ignores every outcome, completions are
    # skipped; a listener added later changes the Observer's answer, and the next
    # completions reach finished (the worker remembers the codes common to both per
    # combination of answers, and asks again after each call).
    q = make_queue("quiet2")
    quiet = Quiet(q)
    q.subscribe(quiet)
    seen: list[str] = []

    @q.process("ok")
    async def ok(job: Any) -> None:
        return None

    first = await q.add_jobs([("ok", i) for i in range(5)])
    await q.start()
    for jid in first:
        await wait_for_status(q, jid, JobStatus.COMPLETED)
    assert all(quiet.of(jid) == [("started",)] for jid in first)
    q.on("job-completed", lambda e: seen.append(e.job_id or ""))
    more = await q.add_jobs([("ok", i) for i in range(5)])
    for jid in more:
        await wait_for_status(q, jid, JobStatus.COMPLETED)
    await wait_until(lambda: len(seen) == 5, 5)
    assert sorted(seen) == sorted(more)
    assert all(quiet.of(jid) == [("started",), ("finished", "completed")] for jid in more)


async def test_process_middleware_wrap_outermost_first(make_queue: QueueFactory) -> None:
    q = make_queue("chain")
    trail: list[str] = []

    def layer(name: str) -> Any:
        async def middleware(job: Any, call_next: Any) -> Any:
            trail.append(f"{name}>")
            try:
                return f"{name}({await call_next()})"
            finally:
                trail.append(f"<{name}")

        return middleware

    for name in ("a", "b", "c"):
        q.use_process(layer(name))

    @q.process("n")
    async def n(job: Any) -> str:
        trail.append("run")
        return "x"

    jid = await q.add_job("n", {})
    await q.start()
    info = await wait_for_status(q, jid, JobStatus.COMPLETED)
    assert info.result == "a(b(c(x)))"
    assert trail == ["a>", "b>", "c>", "run", "<c", "<b", "<a"]


class Flips(Subscriber):
    """Quiet about completions until it sees a retry; from then on it wants them."""

    def __init__(self) -> None:
        self.quiet = "CDH"
        self.seen: list[tuple[str, str]] = []

    def quiet_outcomes(self) -> str:
        return self.quiet

    def finished(self, queue: str, job: Any, outcome: Outcome) -> None:
        self.seen.append((job.id, outcome.kind))
        if outcome.kind == "retrying":
            self.quiet = "DH"


async def test_an_answer_changed_by_a_finished_call_counts_from_the_next_outcome(
    make_queue: QueueFactory,
) -> None:
    # One batch of recorded outcomes, reported as the worker reports them: a
    # completion (skipped: nobody wants it), a retry (reported; the subscriber changes
    # its answer), then two completions, which must be reported.
    q = make_queue("flip")
    flips = Flips()
    q.subscribe(flips)
    outcomes = Outcomes(q, "w", q.hooks, forget=lambda run: None, wake=lambda: None)
    runs = [
        Run(
            Job(
                id=f"j{i}",
                name="n",
                data=None,
                attempts=1,
                max_attempts=2,
                created_at=0,
                options={},
                queue_name="flip",
            ),
            "token",
            q.policy,
        )
        for i in range(4)
    ]
    done = [
        (runs[0], "C", None, None, 0),
        (runs[1], "R", "RuntimeError: boom", RuntimeError("boom"), 10),
        (runs[2], "C", None, None, 0),
        (runs[3], "C", None, None, 0),
    ]
    outcomes._recorded(done, [b"ok"] * len(done))
    assert flips.seen == [("j1", "retrying"), ("j2", "completed"), ("j3", "completed")]
    assert outcomes.recorded == 4
