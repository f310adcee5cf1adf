"""FIFO message groups and circuit breakers under faults, with real worker processes.

Every process runs ``WORKER`` (written to the test's tmp dir): a ``JobQueue`` with a
``FIFOQueueManager`` and a ``CircuitBreakerManager``. Its processors record in Redis,
from the processes themselves:

* ``gj`` (a group's job, data ``g``, ``i``): ``s <i> <run>`` when a run starts,
  ``f <i> <run>`` when it raises, ``e <i> <run>`` when it returns, in the list
  ``<prefix>:seq:<g>`` (``<run>`` is the run's lease token);
* ``bj`` (a job bound to breaker ``dep``): the number of bound runs under way and its
  highest value (``<prefix>:now``, ``<prefix>:max``), the breaker's state as each run
  starts (``<prefix>:runs``); the dependency's health is ``<prefix>:dep`` (``up``,
  ``hang``, else down);
* every completion the engine recorded (the ``finished`` hook, after the finish script
  accepted it): ``<prefix>:done`` (job id -> count) and ``<prefix>:ok`` (run tokens).

So a run whose outcome was fenced (its worker stopped longer than its lease) shows a
start and an end in the log, but no completion.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from _redis import RedisServer
from helpers import wait_for_status, wait_until
from kitium_queue import CircuitBreakerManager, CircuitBreakerState, JobQueue
from kitium_queue.features.groups import FIFOQueueManager
from kitium_queue.features.idempotency import IdempotencyManager
from workers.procs import WorkerProcs

pytestmark = [pytest.mark.redis_only]

QUEUE = "chaos"

WORKER = r'''
import argparse, asyncio, os, sys, time
import redis, redis.asyncio as aioredis
from kitium_queue import CircuitBreakerManager, JobQueue
from kitium_queue.features.groups import FIFOQueueManager

p = argparse.ArgumentParser()
for a in ("--url", "--prefix", "--queue"):
    p.add_argument(a, required=True)
p.add_argument("--concurrency", type=int, default=8)
p.add_argument("--lease", type=int, default=2000)
args = p.parse_args()
P = args.prefix


class Done:
    def __init__(self):
        self.r = redis.Redis.from_url(args.url)

    def finished(self, queue, job, outcome):
        if outcome.kind == "completed" and job is not None:
            pipe = self.r.pipeline(transaction=False)
            pipe.hincrby(P + ":done", job.id, 1)
            d = job.data if isinstance(job.data, dict) else {}
            if "g" in d:  # a claim's token is shared by the jobs it hands out
                pipe.sadd(P + ":ok", f"{d['g']} {d['i']} {job.lease_token}")
            pipe.execute()


MAX = """local n = redis.call('INCR', KEYS[1])
if n > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], n) end
return n"""


async def main():
    q = JobQueue(
        args.queue, redis=args.url, prefix=P, events_max_len=200_000,
        worker={"concurrency": args.concurrency, "scheduler": False, "shutdown_timeout": 2000},
        settings={"lock_duration": args.lease, "max_stalled_interval": 200,
                  "max_stalled_count": 5},
    )
    FIFOQueueManager(q)
    CircuitBreakerManager(q)
    q.subscribe(Done())
    rec = aioredis.Redis.from_url(args.url)
    pid = os.getpid()

    async def gj(job):
        t0 = time.monotonic()  # system-wide: the test compares it with its SIGSTOP
        d = job.data
        seq, run = f"{P}:seq:{d['g']}", job.lease_token
        await rec.rpush(seq, f"s {d['i']} {run}")
        await rec.hset(P + ":running", job.id, pid)
        await rec.hset(P + ":pid", f"{d['g']} {d['i']} {run}", pid)
        await rec.hset(P + ":t0", f"{d['g']} {d['i']} {run}", repr(t0))
        gate = d.get("gate") or (job.stalls == 0 and d.get("hold"))
        while gate and not await rec.exists(f"{P}:gate:{gate}"):
            await asyncio.sleep(0.02)
        await asyncio.sleep(d.get("ms", 0) / 1000)
        failkey = d.get("failkey")
        if job.attempts <= d.get("fail", 0) or (
            failkey and not await rec.exists(f"{P}:pass:{failkey}")
        ):
            await rec.rpush(seq, f"f {d['i']} {run}")
            raise RuntimeError("planned failure")
        await rec.rpush(seq, f"e {d['i']} {run}")
        return d["i"]

    async def bj(job):
        st = await rec.hget(q.keys.extra("cb:b:dep"), "st")
        await rec.rpush(P + ":runs", f"{job.id} {(st or b'-').decode()} {pid}")
        await rec.eval(MAX, 2, P + ":now", P + ":max")
        try:
            while True:
                health = await rec.get(P + ":dep")
                if health == b"up":
                    return "ok"
                if health != b"hang":
                    raise ConnectionError("dependency down")
                await asyncio.sleep(0.02)
        finally:
            await rec.decr(P + ":now")

    q.process("gj", gj)
    q.process("bj", bj)
    await q.start()
    print("ready", flush=True)
    await q.run_worker()


asyncio.run(main())
'''


@pytest.fixture
def worker_script(tmp_path: Path) -> Path:
    path = tmp_path / "chaos_worker.py"
    path.write_text(WORKER)
    return path


@pytest.fixture
async def procs(
    redis_url: str, prefix: str, tmp_path: Path, worker_script: Path
) -> AsyncIterator[WorkerProcs]:
    wp = WorkerProcs(redis_url, prefix, QUEUE, tmp_path, script=worker_script)
    try:
        yield wp
    finally:
        for p in wp.procs:  # a stopped process would not hear SIGTERM
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGCONT)
        await wp.close()


def _queue(url: str, prefix: str) -> JobQueue:
    return JobQueue(
        QUEUE, redis=url, prefix=prefix, worker={"scheduler": False}, events_max_len=200_000
    )


async def _completions(q: JobQueue) -> dict[str, int]:
    """``job-completed`` events of the queue's durable stream, by job id: what the finish
    script accepted (written in the same script), whatever happened to the processes."""
    r = await q.client()
    out: dict[str, int] = {}
    last = "-"
    while True:
        batch = await r.xrange(q.keys.events, min=last, count=5000)
        if last != "-":
            batch = batch[1:]
        if not batch:
            return out
        for _, f in batch:
            if f.get(b"e") == b"job-completed":
                jid = f[b"id"].decode()
                out[jid] = out.get(jid, 0) + 1
        last = batch[-1][0].decode()


@pytest.fixture
async def queue(redis_url: str, prefix: str) -> AsyncIterator[JobQueue]:
    q = _queue(redis_url, prefix)
    FIFOQueueManager(q)
    CircuitBreakerManager(q, events=False)
    try:
        yield q
    finally:
        await q.close()


# ------------------------------------------------------------------ group checks


async def _seq(r: aioredis.Redis, prefix: str, g: str) -> list[tuple[str, int, str]]:
    out = []
    for raw in await r.lrange(f"{prefix}:seq:{g}", 0, -1):
        kind, i, run = raw.decode().split(" ")
        out.append((kind, int(i), run))
    return out


def _order_violations(
    seq: list[tuple[str, int, str]],
    ok: set[tuple[int, str]],
    n: int,
    paused: frozenset[tuple[int, str]] | set[tuple[int, str]] = frozenset(),
) -> list[str]:
    """What breaks strict FIFO in one group's log. Accepted runs (``ok``: ``(i, token)``)
    go s0 e0 s1 e1 ...; any other run of job i (a failed attempt, a killed run) starts
    after the accepted end of job i-1 and before the accepted start of job i. Runs already
    running in a process when it was stopped for longer than its lease (``paused``) are
    not judged here: let go, such a run goes on after its job ran elsewhere (its outcome
    is fenced: the completion counts show it). A job that process had claimed but not
    yet started is never started once it is let go: those runs are judged."""
    bad: list[str] = []
    accepted = [(k, i) for k, i, run in seq if (i, run) in ok and k in "se"]
    want = [(k, i) for i in range(n) for k in "se"]
    if accepted != want:
        bad.append(f"accepted runs {accepted[:12]}... != s0 e0 s1 e1 ...")
    pos: dict[tuple[str, int], int] = {}
    for at, (k, i, run) in enumerate(seq):
        if (i, run) in ok and k in "se":
            pos[(k, i)] = at
    for at, (k, i, run) in enumerate(seq):
        if (i, run) in ok or (i, run) in paused:
            continue
        if k == "s" and i > 0 and at < pos.get(("e", i - 1), 1 << 30):
            bad.append(f"a run of job {i} started before job {i - 1} completed")
        if k == "s" and at > pos.get(("s", i), -1) and ("s", i) in pos:
            bad.append(f"a run of job {i} started after its accepted run")
    return bad


async def _accepted_runs(
    r: aioredis.Redis, prefix: str, groups: list[str], killed: list[int]
) -> dict[str, set[tuple[int, str]]]:
    """The runs whose completion the finish script accepted: their tokens, recorded by the
    ``finished`` hook. A SIGKILL that lands between a finish and its hook loses the
    record: then the last run of that job that returned stands for it (checked to be a
    run of a killed process)."""
    ok: dict[str, set[tuple[int, str]]] = {g: set() for g in groups}
    for raw in await r.smembers(f"{prefix}:ok"):
        g, i, run = raw.decode().split(" ")
        ok[g].add((int(i), run))
    pids = {t.decode(): int(p) for t, p in (await r.hgetall(f"{prefix}:pid")).items()}
    for g in groups:
        seq = await _seq(r, prefix, g)
        have = {i for k, i, run in seq if (i, run) in ok[g] and k == "e"}
        for i in sorted({i for _, i, _ in seq} - have):
            ends = [run for k, j, run in seq if j == i and k == "e"]
            assert ends and pids.get(f"{g} {i} {ends[-1]}") in killed, (g, i, ends)
            ok[g].add((i, ends[-1]))
    return ok


async def _no_wedged_groups(q: JobQueue, m: FIFOQueueManager, groups: list[str]) -> None:
    for g in groups:
        st = await m.get_group_stats(g)
        assert st.size == 0 and st.waiting == 0 and st.active == 0 and not st.turns, (g, st)


# ------------------------------------------------------------------ groups under faults


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


@pytest.mark.slow
async def test_fifo_groups_hold_order_through_kills_stops_and_retries(
    procs: WorkerProcs, queue: JobQueue, prefix: str
) -> None:
    """3 processes, 50 groups x 40 jobs, a fifth of the jobs failing 1-2 attempts first
    (4 attempts, 20 ms backoff); two workers SIGKILLed mid-run, one SIGSTOPped for
    longer than its lease (2 s) then let go: its late outcome is fenced. Each group's
    accepted runs go strictly in order, no other run of a job starts before its
    predecessor completed, each job completes once, no group is left holding a turn."""
    rnd = random.Random(7)
    n_groups, per = 50, 40
    groups = [f"g{k}" for k in range(n_groups)]
    long_jobs = {("g3", 10), ("g11", 20), ("g29", 30)}  # the runs the signals cut
    jobs = []
    for i in range(per):
        for g in groups:
            data: dict[str, Any] = {"g": g, "i": i, "ms": rnd.randint(0, 4)}
            if rnd.random() < 0.2:
                data["fail"] = rnd.randint(1, 2)
            if (g, i) in long_jobs:
                data["hold"] = "hold"  # its first run waits for the gate
            jobs.append(("gj", data, {"message_group_id": g}))
    opts = {"attempts": 4, "backoff": {"type": "fixed", "delay": 20}}
    ids: list[str] = []
    for k in range(0, len(jobs), 500):
        ids += await queue.add_jobs([(n, d, {**o, **opts}) for n, d, o in jobs[k : k + 500]])
    by_key = {(d["g"], d["i"]): jid for (_, d, _), jid in zip(jobs, ids, strict=True)}
    r = await queue.client()
    await procs.start(3, "--concurrency", "8", "--lease", "2000")

    async def worker_of(g: str, i: int) -> int:
        async def running() -> Any:
            return await r.hget(f"{prefix}:running", by_key[(g, i)])

        return int(await wait_until(running, timeout=45))

    # Two SIGKILLs mid-run (the first run of those jobs waits for a gate) and a
    # replacement process each time; one SIGSTOP for 3 s (lease 2 s), then SIGCONT, and
    # its run is let go: it returns, and its outcome is fenced.
    killed = []
    for g, i in sorted(long_jobs)[:2]:
        pid = await worker_of(g, i)
        _signal(pid, signal.SIGKILL)
        killed.append(pid)
        await procs.start(1, "--concurrency", "8", "--lease", "2000")
    stopped = await worker_of("g3", 10)  # sorted: g11 and g29 were killed
    _signal(stopped, signal.SIGSTOP)
    stop_at = time.monotonic()  # a run of it that began later began after SIGCONT
    await asyncio.sleep(3.0)
    _signal(stopped, signal.SIGCONT)
    await r.set(f"{prefix}:gate:hold", 1)

    async def all_done() -> bool:
        return len(await _completions(queue)) == len(ids)

    try:
        await wait_until(all_done, timeout=50, interval=0.2)
    except AssertionError:
        done_ids = set(await _completions(queue))
        missing = [j for j in ids if j not in done_ids]
        info = []
        for j in missing[:10]:
            info.append((j, await r.hgetall(queue.keys.job(j))))
        m = FIFOQueueManager.for_queue(queue)
        gs = {}
        for j in missing[:10]:
            g = (await r.hget(queue.keys.job(j), "gk") or b"?").decode()
            gs[g] = await m.get_group_stats(g)
        raise AssertionError((len(missing), info, gs, procs.stderr()[-3000:])) from None
    await asyncio.sleep(0.5)  # a late (fenced) outcome would land by now
    done = await _completions(queue)
    assert sorted(done) == sorted(ids) and set(done.values()) == {1}, "each completes once"
    ok = await _accepted_runs(r, prefix, groups, killed)
    pids = {t.decode(): int(p) for t, p in (await r.hgetall(f"{prefix}:pid")).items()}
    t0s = {t.decode(): float(v) for t, v in (await r.hgetall(f"{prefix}:t0")).items()}
    bad = {}
    for g in groups:
        seq = await _seq(r, prefix, g)
        paused = {
            (i, run)
            for _, i, run in seq
            if pids.get(f"{g} {i} {run}") == stopped
            and t0s.get(f"{g} {i} {run}", stop_at) < stop_at  # running at the stop
        }
        if v := _order_violations(seq, ok[g], per, paused - ok[g]):
            bad[g] = v
    assert not bad, bad
    # The stopped run's log: it started, then (after SIGCONT) it ended, uncounted.
    seq = await _seq(r, prefix, "g3")
    runs10 = [(k, run) for k, j, run in seq if j == 10]
    fenced = [run for k, run in runs10 if k == "s" and (10, run) not in ok["g3"]]
    assert fenced, runs10
    m = FIFOQueueManager.for_queue(queue)
    await _no_wedged_groups(queue, m, groups)


async def _accepted_order(r: aioredis.Redis, prefix: str, g: str) -> list[int]:
    """Jobs of group ``g`` in the order of their accepted completions (recorded by the
    ``finished`` hook; no process is killed in the tests that use this)."""
    ok: set[tuple[int, str]] = set()
    for raw in await r.smembers(f"{prefix}:ok"):
        gg, i, run = raw.decode().split(" ")
        if gg == g:
            ok.add((int(i), run))
    return [i for k, i, run in await _seq(r, prefix, g) if k == "e" and (i, run) in ok]


async def _started(r: aioredis.Redis, prefix: str, g: str, i: int) -> bool:
    return any(k == "s" and j == i for k, j, _ in await _seq(r, prefix, g))


def test_the_order_checker_catches_each_violation() -> None:
    ok = {(0, "a"), (1, "b")}
    good = [
        ("s", 0, "a"),
        ("e", 0, "a"),
        ("s", 1, "x"),
        ("f", 1, "x"),
        ("s", 1, "b"),
        ("e", 1, "b"),
    ]
    assert _order_violations(good, ok, 2) == []
    early = [("s", 0, "a"), ("s", 1, "x"), ("e", 0, "a"), ("s", 1, "b"), ("e", 1, "b")]
    assert _order_violations(early, ok, 2)
    swapped = [("s", 1, "b"), ("e", 1, "b"), ("s", 0, "a"), ("e", 0, "a")]
    assert _order_violations(swapped, ok, 2)
    late = [*good, ("s", 1, "y")]
    assert _order_violations(late, ok, 2)
    assert _order_violations(late, ok, 2, {(1, "y")}) == []


@pytest.mark.slow
async def test_remove_cancel_pause_and_retry_of_a_dead_lettered_middle_job(
    procs: WorkerProcs, queue: JobQueue, prefix: str
) -> None:
    """One group of 10 gated jobs under 3 processes: cancelling the running head and
    removing a waiting middle job give the turn on at once; a pause holds the group
    between two jobs; ``retry_job`` of a dead-lettered middle job runs it next, before the
    group's later jobs that have not started (docs/groups.md, ``retry_job``)."""
    m = FIFOQueueManager.for_queue(queue)
    r = await queue.client()
    g = "m"
    ids = [
        await queue.add_job(
            "gj",
            {"g": g, "i": i, "gate": f"j{i}", **({"failkey": "three"} if i == 3 else {})},
            message_group_id=g,
            attempts=1,
        )
        for i in range(10)
    ]
    await procs.start(3, "--concurrency", "4", "--lease", "5000")
    await wait_until(lambda: _started(r, prefix, g, 0), timeout=20)
    assert await queue.remove_job(ids[2]) is True  # waiting in the line
    assert await queue.cancel_job(ids[0]) == "cancelling"  # running, holding the turn
    await wait_until(lambda: _started(r, prefix, g, 1), timeout=20)
    await m.pause_group(g)
    await r.set(f"{prefix}:gate:j1", 1)
    await wait_until(lambda: queue.get_job_status(ids[1]), timeout=5)

    async def one_done() -> bool:
        st = await queue.get_job_status(ids[1])
        return st is not None and st.status.value == "completed"

    await wait_until(one_done, timeout=20)
    await asyncio.sleep(1.0)  # paused: job 3 does not start
    assert not await _started(r, prefix, g, 3)
    assert (await m.get_group_stats(g)).waiting == 7  # 3..9
    await r.set(f"{prefix}:gate:j3", 1)
    await m.resume_group(g)

    async def three_dead() -> bool:
        st = await queue.get_job_status(ids[3])
        return st is not None and st.status.value in ("dlq", "failed")

    await wait_until(three_dead, timeout=20)
    await r.set(f"{prefix}:gate:j4", 1)
    await wait_until(lambda: _started(r, prefix, g, 5), timeout=20)
    # Job 5 runs (gated), 6..9 wait in the line: job 3 comes back before them.
    await r.set(f"{prefix}:pass:three", 1)
    await queue.retry_job(ids[3])
    for i in range(5, 10):
        await r.set(f"{prefix}:gate:j{i}", 1)

    async def all_done() -> bool:
        return len(await _accepted_order(r, prefix, g)) == 8

    await wait_until(all_done, timeout=30)
    assert await _accepted_order(r, prefix, g) == [1, 4, 5, 3, 6, 7, 8, 9]
    starts = [i for k, i, _ in await _seq(r, prefix, g) if k == "s"]
    assert 2 not in starts and starts.count(0) == 1
    st0 = await queue.get_job_status(ids[0])
    assert st0 is not None and st0.status.value in ("failed", "dlq")
    await _no_wedged_groups(queue, m, [g])


# ------------------------------------------------------------------ debounce in a group


@pytest.fixture
async def deb_queue(redis_url: str, prefix: str) -> AsyncIterator[JobQueue]:
    q = _queue(redis_url, prefix)
    FIFOQueueManager(q)
    IdempotencyManager(q)
    try:
        yield q
    finally:
        await q.close()


async def test_a_debounced_head_moved_to_delayed_gives_its_groups_turn_back(
    deb_queue: JobQueue,
) -> None:
    """docs/groups.md: a delayed job holds no turn and never blocks its group. A job
    holding its group's turn in wait that a debounce (with a delay) moves to delayed has
    not started: the next job of the line runs meanwhile; when due it runs."""
    q = deb_queue
    m = FIFOQueueManager.for_queue(q)
    starts: list[str] = []
    q.process("w", lambda job: starts.append(job.id))
    deb = {"idempotency_key": "k", "idempotency_window": "debounce", "message_group_id": "g"}
    a = await q.add_job("w", {"v": 1}, **deb)
    b = await q.add_job("w", {"v": 2}, message_group_id="g")
    assert await q.add_job("w", {"v": 3}, delay=60_000, **deb) == a
    st = await m.get_group_stats("g")
    assert [t.job_id for t in st.turns] == [b], st.turns  # the turn went on to b
    await q.start()
    worker = asyncio.create_task(q.run_worker())
    try:
        await wait_until(lambda: b in starts, timeout=10)
        assert a not in starts
        # The next debounce without a delay makes it due now: it takes the free turn.
        assert await q.add_job("w", {"v": 4}, **deb) == a
        await wait_until(lambda: a in starts, timeout=10)
        assert starts == [b, a]
        await wait_until(lambda: _group_idle(m, "g"), timeout=10)
    finally:
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker


async def test_a_debounced_job_waiting_out_a_retry_keeps_its_turn(deb_queue: JobQueue) -> None:
    """A job that started and waits out its backoff keeps its turn (the group waits for
    its outcome), whatever a debounce does to its delay."""
    q = deb_queue
    m = FIFOQueueManager.for_queue(q)
    starts: list[str] = []

    async def body(job: Any) -> None:
        starts.append(job.id)
        if job.data.get("v") == 1 and job.attempts == 1:
            raise RuntimeError("first attempt fails")

    q.process("w", body)
    deb = {"idempotency_key": "k", "idempotency_window": "debounce", "message_group_id": "g"}
    a = await q.add_job("w", {"v": 1}, attempts=2, backoff=1500, **deb)
    b = await q.add_job("w", {"v": 2}, message_group_id="g")
    await q.start()
    worker = asyncio.create_task(q.run_worker())
    try:
        await wait_until(lambda: starts == [a], timeout=10)

        async def retrying() -> bool:
            st = await q.get_job_status(a)
            return st is not None and st.status.value == "delayed"

        await wait_until(retrying, timeout=10)
        # Started: the add is a new job, due before a's retry; a keeps its delay and its
        # turn, so the line runs a, then b, then the new job (docs/effectively-once.md).
        c = await q.add_job("w", {"v": 3}, delay=500, **deb)
        assert c != a
        await wait_until(lambda: len(starts) >= 4, timeout=10)
        assert starts == [a, a, b, c]
        # c holds the turn until its outcome is recorded; then the line is empty.
        await wait_for_status(q, c, "completed", timeout=10)
        assert [t.job_id for t in (await m.get_group_stats("g")).turns] == []
    finally:
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker


async def _group_idle(m: FIFOQueueManager, g: str) -> bool:
    st = await m.get_group_stats(g)
    return st.size == 0 and not st.turns


# ------------------------------------------------------------------ breakers across processes

HALF = CircuitBreakerState.HALF_OPEN
CLOSED = CircuitBreakerState.CLOSED
OPEN = CircuitBreakerState.OPEN


async def _runs(r: aioredis.Redis, prefix: str) -> list[tuple[str, str, int]]:
    out = []
    for raw in await r.lrange(f"{prefix}:runs", 0, -1):
        jid, st, pid = raw.decode().split(" ")
        out.append((jid, st, int(pid)))
    return out


async def _statuses(q: JobQueue, ids: list[str]) -> list[tuple[str, int]]:
    r = await q.client()
    pipe = r.pipeline(transaction=False)
    for jid in ids:
        pipe.hmget(q.keys.job(jid), "st", "a")
    return [((st or b"missing").decode(), int(a or 0)) for st, a in await pipe.execute()]


async def _breaker_scenario(
    procs: WorkerProcs, q: JobQueue, prefix: str, *, kill_probe: bool
) -> None:
    m = _breakers(q)
    r = await q.client()
    await m.create_breaker(
        {
            "id": "dep",
            "job_name": "bj",
            "timeout": 400,
            "half_open_probes": 2,
            "probe_timeout": 600_000,  # the lease, not the probe deadline, ends a dead probe
            "failure_threshold": {"percentage": 50, "min_requests": 6},
        }
    )
    await r.set(f"{prefix}:dep", "down")
    await procs.start(3, "--concurrency", "4", "--lease", "2000")
    first = await q.add_jobs([("bj", {}, {"attempts": 1}) for _ in range(30)])
    # Opened by the failures the three processes counted together; it holds the rest in
    # every process: at most min_requests + the runs under way (3 x 4) ran.
    await wait_until(lambda: _state_is(m, OPEN, HALF), timeout=20)
    opened = len(await _runs(r, prefix))
    assert 6 <= opened <= 6 + 12 + 2, opened  # (+ the first 2 probes, if half-open yet)
    # Runs claimed before it opened (a worker's claimed batch) still start; probes fail
    # at once while it is down. Once none of them runs, the probes hang.

    async def settled() -> bool:
        sts = {st for st, _ in await _statuses(q, first)}
        return sts <= {"failed", "dlq", "pending"} and await _now_zero(r, prefix)

    await wait_until(settled, timeout=20, interval=0.001)
    await r.set(f"{prefix}:max", 0)
    base = len(await _runs(r, prefix))
    await r.set(f"{prefix}:dep", "hang")
    held = await q.add_jobs([("bj", {}, {"attempts": 1}) for _ in range(60)])
    # Half-open: two probes at most, across the three processes, however long they hang
    # (the park timer brings held jobs back every ~0.4 s; each is held again).
    await wait_until(lambda: _now_at_least(r, prefix, 2), timeout=30)
    await asyncio.sleep(2.5)
    assert int(await r.get(f"{prefix}:max") or 0) == 2, (
        (await _runs(r, prefix))[base:],
        procs.stderr()[-2000:],
    )
    probes = (await _runs(r, prefix))[base:]
    assert len(probes) >= 2 and all(st == "half-open" for _, st, _ in probes), probes
    assert (await m.get_stats("dep")).state is HALF
    if kill_probe:
        victim = probes[-1][2]
        _signal(victim, signal.SIGKILL)
        # Its runs (they hang: none ended since `base`) never count themselves out.
        dead = sum(1 for _, _, pid in probes if pid == victim)
        await r.decrby(f"{prefix}:now", dead)
        await r.set(f"{prefix}:max", int(await r.get(f"{prefix}:now") or 0))
        await procs.start(1, "--concurrency", "4", "--lease", "2000")
        # Its lease expires; recovery gives its place back; another run takes it. Never
        # more than two at once, and never stuck half-open.
        await wait_until(lambda: _now_at_least(r, prefix, 2), timeout=30)
        await asyncio.sleep(0.5)
        assert int(await r.get(f"{prefix}:max") or 0) == 2
        assert (await m.get_stats("dep")).state is HALF
    pending = [st for st in await _statuses(q, held) if st[0] == "pending"]
    assert len(pending) >= len(held) - 2 - int(kill_probe)
    assert all(a == 0 for _, a in pending)
    await r.set(f"{prefix}:dep", "up")
    await wait_until(lambda: _state_is(m, CLOSED), timeout=20)

    async def all_done() -> bool:
        done = await _completions(q)
        return all(j in done for j in held)

    await wait_until(all_done, timeout=40, interval=0.2)
    done = await _completions(q)
    assert {done[j] for j in held} == {1}, "each held job completes once"
    late = (await _runs(r, prefix))[base:]
    assert not [x for x in late if x[1] == "open"], "no bound run started while open"
    assert {st for st, _ in await _statuses(q, first)} <= {"failed", "dlq", "completed"}
    assert (await m.get_stats("dep")).held_jobs == 0


def _breakers(q: JobQueue) -> CircuitBreakerManager:
    return CircuitBreakerManager(q, events=False)


async def _state_is(m: CircuitBreakerManager, *states: CircuitBreakerState) -> bool:
    return await m.get_state("dep") in states


async def _now_is(r: aioredis.Redis, prefix: str, n: int) -> bool:
    return int(await r.get(f"{prefix}:now") or 0) == n


async def _now_at_least(r: aioredis.Redis, prefix: str, n: int) -> bool:
    return int(await r.get(f"{prefix}:now") or 0) >= n


async def _now_zero(r: aioredis.Redis, prefix: str) -> bool:
    return await _now_is(r, prefix, 0)


@pytest.fixture
async def bqueue(redis_url: str, prefix: str) -> AsyncIterator[JobQueue]:
    q = _queue(redis_url, prefix)
    FIFOQueueManager(q)
    try:
        yield q
    finally:
        await q.close()


@pytest.mark.slow
async def test_half_open_admits_its_probe_count_across_processes(
    procs: WorkerProcs, bqueue: JobQueue, prefix: str
) -> None:
    await _breaker_scenario(procs, bqueue, prefix, kill_probe=False)


@pytest.mark.slow
async def test_a_sigkilled_probe_recovers_and_the_breaker_closes(
    procs: WorkerProcs, bqueue: JobQueue, prefix: str
) -> None:
    await _breaker_scenario(procs, bqueue, prefix, kill_probe=True)


@pytest.fixture
def aof_server() -> Iterator[RedisServer]:
    srv = RedisServer("--appendonly", "yes", "--appendfsync", "always").start()
    try:
        yield srv
    finally:
        srv.close()


@pytest.mark.slow
async def test_an_open_breaker_and_its_held_jobs_survive_a_redis_restart(
    aof_server: RedisServer, prefix: str, tmp_path: Path, worker_script: Path
) -> None:
    """docs/breakers.md, "Redis restart": with AOF ``appendfsync always`` a crash and
    restart of Redis while a breaker is open loses nothing: it is still open, its held
    jobs are still held (no attempt spent, none run while open), and when its timeout
    ends the probes go through, it closes and each held job completes once."""
    q = _queue(aof_server.url, prefix)
    FIFOQueueManager(q)
    m = _breakers(q)
    wp = WorkerProcs(aof_server.url, prefix, QUEUE, tmp_path, script=worker_script)
    try:
        await m.create_breaker(
            {"id": "dep", "job_name": "bj", "timeout": 60_000, "half_open_probes": 2}
        )
        r = await q.client()
        await r.set(f"{prefix}:dep", "up")
        await m.force_open("dep", 6_000)
        await wp.start(2, "--concurrency", "4", "--lease", "2000")
        held = await q.add_jobs([("bj", {}) for _ in range(30)])

        async def all_held() -> bool:
            return (await m.get_stats("dep")).held_jobs == len(held)

        await wait_until(all_held, timeout=20)
        aof_server.kill()
        await q.close()  # its connections died with the server
        aof_server.restart()
        q = _queue(aof_server.url, prefix)
        FIFOQueueManager(q)
        m = _breakers(q)
        r = await q.client()
        st = await m.get_stats("dep")
        assert st.state is OPEN and st.held_jobs == len(held), st
        assert set(await _statuses(q, held)) == {("pending", 0)}
        await wait_until(lambda: _state_is(m, CLOSED), timeout=30)

        async def all_done() -> bool:
            done = await _completions(q)
            return all(j in done for j in held)

        await wait_until(all_done, timeout=30, interval=0.2)
        done = await _completions(q)
        assert {done[j] for j in held} == {1}
        runs = await _runs(r, prefix)
        assert len(runs) == len(held) and not [x for x in runs if x[1] == "open"], runs
        assert wp.alive() == 2
    finally:
        await wp.close()
        await q.close()
