"""FIFO message groups under real worker processes (``features/groups``).

Every test runs ``chaos/worker.py`` processes (``--fifo-groups 1``) against a private
``redis-server`` on loopback. Each process appends one line per event of a run to a
shared log outside Redis (``start`` / ``finish`` / ``raise`` with its real time, one
``O_APPEND`` write each, so a SIGKILL loses nothing already written): the ledger the
checks read.

* 200 groups x 50 jobs, seeded failures (a run raises with probability 0.2, attempts=5,
  fixed 20 ms backoff; a few jobs fail every attempt and are dead-lettered), 4 workers,
  one SIGKILLed mid-run (lease 1 s): each group's runs go in enqueue order (so do its
  recorded completions), no two runs of a group overlap, the killed run's job is the
  next to run in its group and only after the kill, nothing is lost.
* A hot group with 100,000 parked jobs and 100 single-job groups added one at a time:
  no single waits behind the hot group (turns rotate; the hot line is parked). Judged by
  order, not by the clock: between a single's add returning and its start, at most a few
  hot-group runs start (the hot group runs one job at a time, 1 ms each); a single that
  waited for the hot line, or for a poll instead of its wake-up, would see dozens.
* ``max_group_size=50`` under 8 concurrent producers on their own connections: exactly
  50 accepted, the rest refused with ``JobRefusedError``.
* Pausing one group leaves the others running; resuming it finishes it in order.
"""

from __future__ import annotations

import asyncio
import bisect
import random
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from chaos.infra import Fleet, Run, redis_server, runs_by_job, wait_for  # noqa: E402
from chaos.ledger import Ledger, check, snapshot, stream  # noqa: E402
from chaos.scenarios.s9_groups import (  # noqa: E402
    completion_violations,
    group_violations,
    leftover_turns,
    with_manager,
)

from kitium_queue import JobQueue, JobRefusedError, SyncJobQueue  # noqa: E402
from kitium_queue.features.groups import FIFOQueueManager  # noqa: E402
from kitium_queue.keys import QueueKeys  # noqa: E402

pytestmark = [pytest.mark.redis_only, pytest.mark.slow]

FINAL = ("completed", "dlq", "failed")
# Hot-group runs that may start between a single's add and its start (one or two in
# practice: the run already under way and the next one claimed with it).
MAX_HOT_RUNS_AHEAD = 10


@pytest.fixture
def server() -> Iterator[Any]:
    srv = redis_server()
    try:
        yield srv
    finally:
        srv.close()


def _all_final(client: redis.Redis, keys: QueueKeys, ids: list[str]) -> bool:
    pipe = client.pipeline(transaction=False)
    for jid in ids:
        pipe.hget(keys.job(jid), "st")
    return all(st is not None and st.decode() in FINAL for st in pipe.execute())


#: The job whose run the SIGKILL cuts: deep in its group, so the kill lands mid-flight.
_LONG_JOB = "g7-30"


def _kill_mid_run(fleet: Fleet, job: str, tries: int = 50) -> tuple[Any, float]:
    """SIGKILL the worker running ``job`` (a long one, so its run is easy to catch open)
    while that run is open: freeze the worker (SIGSTOP) first, read its log, and kill only
    if the run is still open there (else let it go on and try again).

    Returns the victim and the time it was frozen: it did nothing after that, and on a
    loaded machine its lease may run out (and its job run again elsewhere) before the
    SIGKILL itself lands."""
    for _ in range(tries):
        victim = wait_for(lambda: fleet.running(job), 60, what=f"a worker running {job}")
        frozen_at = time.time()
        victim.signal(signal.SIGSTOP)
        time.sleep(0.02)  # a log write under way when the signal landed completes
        if fleet.running(job) is victim:
            victim.kill()
            return victim, frozen_at
        victim.signal(signal.SIGCONT)
        time.sleep(0.05)
    raise AssertionError(f"no worker had a run open in {tries} tries")


# ---------------------------------------------------------------------- the checker


def test_the_group_checker_catches_each_violation() -> None:
    order = {"g": ["a", "b", "c"]}
    ok = {
        "a": [Run("a", 1, 1, 0, 0.0, 1.0)],
        "b": [Run("b", 1, 1, 0, 1.0, 2.0)],
        "c": [Run("c", 2, 1, 0, 2.5, 3.0)],
    }
    assert group_violations(ok, order, {}) == {"order": [], "overlap": [], "killed": []}
    swapped = {**ok, "b": [Run("b", 1, 1, 0, 2.6, 2.8)]}
    assert group_violations(swapped, order, {})["order"]
    overlapping = {**ok, "b": [Run("b", 2, 1, 0, 0.5, 2.0)]}
    assert group_violations(overlapping, order, {})["overlap"]
    # a's run was cut by the kill of pid 1 at t=0.5 (no end): a must run again next,
    # after the kill.
    cut = {**ok, "a": [Run("a", 1, 1, 0, 0.0), Run("a", 2, 1, 1, 1.0, 1.0)]}
    assert group_violations(cut, order, {1: 0.5})["killed"] == []
    assert group_violations(cut, order, {1: 1.5})["killed"]  # re-ran before the kill
    skipped = {**ok, "a": [Run("a", 1, 1, 0, 0.0)]}
    assert group_violations(skipped, order, {1: 0.5})["killed"]  # b took the turn
    assert group_violations(cut, order, {})["killed"]  # no end, process not killed


# ---------------------------------------------------------------------- 200 x 50


def test_groups_keep_order_under_failures_and_sigkill(server: Any, tmp_path: Path) -> None:
    n_groups, per_group = 200, 50
    rnd = random.Random(12)
    prefix, name = "kqgc", "groups"
    keys = QueueKeys(name, prefix)
    client = redis.Redis.from_url(server.url)
    producer = SyncJobQueue(name, redis=server.url, prefix=prefix, events_max_len=1_000_000)
    fleet = Fleet(
        tmp_path,
        url=server.url,
        prefix=prefix,
        queue=name,
        fifo_groups=1,
        concurrency=16,
        lock_duration=1000,
        stalled_interval=250,
        max_stalled=1000,
        events_max_len=1_000_000,
    )
    try:
        FIFOQueueManager(producer.queue)
        order: dict[str, list[str]] = defaultdict(list)
        doomed: set[str] = set()
        jobs: list[tuple[str, Any, dict[str, Any]]] = []
        for j in range(per_group):
            for gi in range(n_groups):
                g, jid = f"g{gi}", f"g{gi}-{j}"
                fail_on = [a for a in range(1, 6) if rnd.random() < 0.2]
                if rnd.random() < 0.001:
                    fail_on = [1, 2, 3, 4, 5]
                ms = rnd.randint(0, 3)
                if jid == _LONG_JOB:
                    # The run the SIGKILL cuts: long enough to be seen open in the log
                    # (the others last 0-3 ms and may all be over before one is seen;
                    # one look at four logs of thousands of lines takes a few 100 ms).
                    fail_on, ms = [], 3000
                if fail_on == [1, 2, 3, 4, 5]:
                    doomed.add(jid)
                order[g].append(jid)
                jobs.append(
                    (
                        "work",
                        {"ms": ms, "fail_on": fail_on},
                        {
                            "job_id": jid,
                            "message_group_id": g,
                            "attempts": 5,
                            "backoff": {"type": "fixed", "delay": 20},
                            "remove_on_complete": False,
                            "remove_on_fail": False,
                        },
                    )
                )
        ledger = Ledger()
        for i in range(0, len(jobs), 1000):
            ledger.record(producer.add_jobs(jobs[i : i + 1000]))
        for jid in doomed:
            ledger.acked[jid].expect = "dlq"
        ids = ledger.ids()
        assert len(ids) == n_groups * per_group

        workers = [fleet.start() for _ in range(4)]
        for w in workers:
            w.wait_ready()
        # The kill lands mid-flight: the long job is the 31st of its group's 50.
        victim, t_kill = _kill_mid_run(fleet, _LONG_JOB)
        wait_for(
            lambda: _all_final(client, keys, ids), 90, interval=0.2, what="every job to finish"
        )

        runs = runs_by_job(fleet.lines())
        bad = group_violations(runs, order, {victim.pid: t_kill})
        interrupted = [r for rs in runs.values() for r in rs if r.end is None]
        assert interrupted, "the SIGKILL interrupted no run"
        assert not bad["order"], bad["order"][:5]
        assert not bad["overlap"], bad["overlap"][:5]
        assert not bad["killed"], bad["killed"][:5]

        # Recorded completions (the durable stream, written with the transition) of each
        # group in enqueue order; each job completed at most once.
        events = stream(client, keys.events)
        late = completion_violations(events, order)
        assert not late, late[:5]
        completed = [e.job_id for e in events if e.event == "job-completed"]
        assert len(completed) == len(set(completed)), "a job completed twice"
        snap = snapshot(client, keys)
        res = check(snap, ledger, final=True)
        assert res.ok, res.summary()
        assert {j for j in ids if snap.state(j) != "completed"} == doomed
        failures = sum(1 for rs in runs.values() for r in rs if r.how == "raise")
        n_runs = sum(len(rs) for rs in runs.values())
        print(
            f"\n{n_runs} runs, {failures} raised, {len(interrupted)} interrupted by the "
            f"kill, {len(doomed)} dead-lettered, {len(completed)} completed"
        )
        assert failures > 1000, f"only {failures} failed runs: the retries were not exercised"
        # Every group's turns were given back at the end.
        left = leftover_turns(server.url, prefix, name, order)
        assert not left, left[:5]
        codes = fleet.stop_all()
        assert all(codes[w.name] == 0 for w in workers if w is not victim), codes
    finally:
        fleet.close()
        producer.close()
        client.close()


# ---------------------------------------------------------------------- hot group


def test_hot_group_does_not_delay_single_job_groups(server: Any, tmp_path: Path) -> None:
    prefix, name = "kqgh", "hot"
    keys = QueueKeys(name, prefix)
    client = redis.Redis.from_url(server.url)
    producer = SyncJobQueue(name, redis=server.url, prefix=prefix)
    fleet = Fleet(tmp_path, url=server.url, prefix=prefix, queue=name, fifo_groups=1, concurrency=4)
    try:
        FIFOQueueManager(producer.queue)
        hot = [("work", {"ms": 1}, {"message_group_id": "hot"}) for _ in range(100_000)]
        for i in range(0, len(hot), 5000):
            producer.add_jobs(hot[i : i + 5000])
        worker = fleet.start().wait_ready()
        # The hot group is busy: its jobs run one after the other.
        wait_for(lambda: client.zcard(keys.completed) >= 200, 30, what="the hot group to run")
        added: dict[str, float] = {}
        for i in range(100):
            job_id = producer.add_job("work", {"ms": 1}, message_group_id=f"single-{i}")
            # Taken once the add returned (the job is in Redis): a test process that the
            # other tests' load delays before it sends does not count against the queue.
            added[job_id] = time.time()
            time.sleep(0.02)
        first_start: dict[str, float] = {}

        def all_started() -> bool:
            for ln in fleet.lines():
                if ln.event == "start" and ln.job_id in added:
                    first_start.setdefault(ln.job_id, ln.t)
            return len(first_start) == len(added)

        wait_for(all_started, 30, what="every single-job group to start")
        assert worker.alive()
        lag = sorted(first_start[j] - added[j] for j in added)
        hot_left = with_manager(server.url, prefix, name, lambda m: m.get_group_stats("hot"))
        print(
            f"\nadd->start of 100 singles: median {lag[50] * 1000:.1f} ms, max "
            f"{lag[-1] * 1000:.1f} ms; hot group still has {hot_left.size} jobs"
        )
        assert hot_left.size is not None and hot_left.size > 90_000, "the hot group drained"
        assert hot_left.waiting == hot_left.size - len(hot_left.turns)
        # Machine speed does not enter this check: a stall of the worker process stalls
        # the hot group's runs as well, so only waiting behind the hot line can fail it.
        hot_starts = sorted(
            ln.t for ln in fleet.lines() if ln.event == "start" and ln.job_id not in added
        )
        behind = {
            j: bisect.bisect_left(hot_starts, first_start[j])
            - bisect.bisect_right(hot_starts, added[j])
            for j in added
        }
        late = [
            f"{j}: {n} hot-group runs started first ({(first_start[j] - added[j]) * 1000:.1f} ms)"
            for j, n in behind.items()
            if n > MAX_HOT_RUNS_AHEAD
        ]
        print(f"hot-group runs started between an add and its start: max {max(behind.values())}")
        assert not late, late
    finally:
        fleet.close()
        producer.close()
        client.close()


# ---------------------------------------------------------------------- max_group_size


async def test_max_group_size_holds_under_concurrent_producers(server: Any) -> None:
    prefix, name = "kqgm", "capped"
    queues = [JobQueue(name, redis=server.url, prefix=prefix) for _ in range(8)]
    try:
        for q in queues:
            FIFOQueueManager(q, max_group_size=50)
        start = asyncio.Event()

        async def one_by_one(q: JobQueue) -> tuple[int, int]:
            await start.wait()
            ok = refused = 0
            for _ in range(25):
                try:
                    await q.add_job("work", {}, message_group_id="capped")
                    ok += 1
                except JobRefusedError as exc:
                    assert "max_group_size" in str(exc)
                    refused += 1
            return ok, refused

        async def batches(q: JobQueue) -> tuple[int, int]:
            await start.wait()
            ok = refused = 0
            for _ in range(5):
                try:
                    ok += len(await q.add_jobs([("work", {}, {"message_group_id": "capped"})] * 5))
                except JobRefusedError as exc:
                    ok += sum(1 for i in exc.ids if i is not None)
                    refused += len(exc.refused)
            return ok, refused

        for q in queues:  # every connection open before the race
            await (await q.client()).ping()
        tasks = [
            asyncio.create_task(one_by_one(q) if i % 2 else batches(q))
            for i, q in enumerate(queues)
        ]
        await asyncio.sleep(0.05)
        start.set()
        results = await asyncio.gather(*tasks)
        accepted = sum(ok for ok, _ in results)
        refused = sum(r for _, r in results)
        assert (accepted, refused) == (50, 150), results
        stats = await FIFOQueueManager(queues[0], max_group_size=50).get_group_stats("capped")
        assert (stats.size, stats.max_group_size) == (50, 50), stats
        counts = await queues[0].get_stats()
        assert (counts.waiting, counts.pending) == (1, 49), counts
    finally:
        for q in queues:
            await q.close()


# ---------------------------------------------------------------------- pause / resume


def test_pausing_one_group_leaves_the_others_running(server: Any, tmp_path: Path) -> None:
    prefix, name = "kqgp", "paused"
    keys = QueueKeys(name, prefix)
    client = redis.Redis.from_url(server.url)
    producer = SyncJobQueue(name, redis=server.url, prefix=prefix)
    fleet = Fleet(tmp_path, url=server.url, prefix=prefix, queue=name, fifo_groups=1, concurrency=8)
    try:
        FIFOQueueManager(producer.queue)
        order: dict[str, list[str]] = {g: [] for g in ("a", "b", "c")}
        for j in range(40):
            for g in order:
                order[g].append(
                    producer.add_job(
                        "work",
                        {"ms": 10},
                        message_group_id=g,
                        job_id=f"{g}-{j}",
                        remove_on_complete=False,
                    )
                )
        fleet.start().wait_ready()
        wait_for(lambda: client.zcard(keys.completed) >= 9, 20, what="the groups to start")
        with_manager(server.url, prefix, name, lambda m: m.pause_group("a"))
        t_pause = time.time()
        stats = with_manager(server.url, prefix, name, lambda m: m.get_group_stats("a"))
        assert stats.paused
        # b and c run to the end while a is paused.
        others = order["b"] + order["c"]
        wait_for(lambda: _all_final(client, keys, others), 30, what="b and c to finish")
        time.sleep(0.3)  # a job of a claimed before the pause finishes (stats.active below)
        # "Starts" is the claim: a job of a claimed before the pause may reach its
        # processor after it on a loaded machine (its run finishes, as documented); no
        # job of a may be claimed once pause_group returned. `ps` is the claim's time
        # on the Redis server's clock (this host's).
        claimed_after = [
            j
            for j in order["a"]
            if (ps := client.hget(keys.job(j), "ps")) is not None and int(ps) > t_pause * 1000
        ]
        assert not claimed_after, f"jobs of paused group a claimed after the pause: {claimed_after}"
        a_done = sum(1 for j in order["a"] if client.hget(keys.job(j), "st") == b"completed")
        assert 0 < a_done < 40, a_done
        stats = with_manager(server.url, prefix, name, lambda m: m.get_group_stats("a"))
        assert stats.paused and stats.size == 40 - a_done and stats.active == 0, stats
        with_manager(server.url, prefix, name, lambda m: m.resume_group("a"))
        wait_for(lambda: _all_final(client, keys, order["a"]), 30, what="a to finish")
        runs = runs_by_job(fleet.lines())
        bad = group_violations(runs, order, {})
        assert not any(bad.values()), bad
        assert all(client.hget(keys.job(j), "st") == b"completed" for g in order for j in order[g])
    finally:
        fleet.close()
        producer.close()
        client.close()
