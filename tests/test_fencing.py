"""Fencing: only the current lease holder records an outcome (DESIGN.md §2, §6).

* Script level, with injected time: a lease expires, recovery and a new claim hand the job
  to someone else, and every outcome sent with the old token is refused ('lease-lost')
  without touching the job.
* End to end: a worker whose event loop is blocked past ``lock_duration`` loses the job to
  a second worker; its late completion is rejected and the job is recorded once.
* ``max_stalled_count``: a job that kills its worker process each time ends in the DLQ
  with a "stalled" reason after ``max_stalled_count + 1`` runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio

from helpers import wait_until
from kitium_queue import JobQueue, JobStatus
from workers.harness import Engine, WorkerPool, read_log, starts, wait_for

T0 = 1_700_000_000_000
QUEUE = "fence"


def _cleanup(client: redis.Redis, prefix: str) -> None:
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture
def engine(redis_url: str, prefix: str) -> Iterator[Engine]:
    client = redis.Redis.from_url(redis_url)
    try:
        yield Engine(client, QUEUE, prefix)
    finally:
        _cleanup(client, prefix)
        client.close()


@pytest.fixture
def pool(tmp_path: Path, redis_url: str, prefix: str) -> Iterator[WorkerPool]:
    p = WorkerPool(tmp_path, url=redis_url, prefix=prefix, queue=QUEUE)
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
async def producer(redis_url: str, prefix: str) -> AsyncIterator[JobQueue]:
    q = JobQueue(QUEUE, redis=redis_url, prefix=prefix)
    try:
        yield q
    finally:
        await q.close()
        client = redis.Redis.from_url(redis_url)
        _cleanup(client, prefix)
        client.close()


def _state(engine: Engine, job_id: str) -> dict[str, object]:
    """Everything about one job that an outcome could change."""
    return {
        "hash": engine.job(job_id),
        "sets": {
            s: engine.client.zscore(getattr(engine.keys, s), job_id)
            for s in ("wait", "active", "delayed", "completed", "failed", "dlq")
        },
    }


def _completed_events(client: redis.Redis, stream: str, job_id: str) -> int:
    entries = client.xrange(stream, "-", "+")
    return sum(
        1 for _, f in entries if f.get(b"e") == b"job-completed" and f.get(b"id") == job_id.encode()
    )


# ---------------------------------------------------------------------- script level


def _expire_and_reclaim(engine: Engine) -> tuple[str, int, int]:
    """A job claimed with token t1 and a 1 s lease, re-claimed with t2 after expiry."""
    jid = engine.enqueue(T0)
    first = engine.claim(T0, 1, lease=1000, worker="w1")
    assert first[0] == b"ok" and first[5][0].decode() == jid
    t1 = int(first[2])

    # Before the deadline nobody can take it.
    assert engine.claim(T0 + 999, 1, lease=1000, worker="w2")[0] == b"empty"
    assert engine.recover(T0 + 999) == ([], [])

    # After the deadline the next claim recovers it (stall 1) and hands it out again.
    second = engine.claim(T0 + 1001, 1, lease=1000, worker="w2")
    assert second[0] == b"ok"
    assert [b.decode() for b in second[3]] == [jid]  # recovered by this very call
    assert second[5][0].decode() == jid
    t2 = int(second[2])
    assert t2 != t1
    job = engine.job(jid)
    assert job["st"] == "active" and job["lt"] == str(t2) and job["s"] == "1"
    assert job["a"] == "1"  # the stalled run was not counted as an attempt
    return jid, t1, t2


@pytest.mark.parametrize("kind", ["C", "R", "F", "D", "H"])
def test_stale_token_cannot_record_any_outcome(engine: Engine, kind: str) -> None:
    jid, t1, t2 = _expire_and_reclaim(engine)
    before = _state(engine, jid)

    assert engine.finish(T0 + 1100, jid, t1, kind, payload=b"stale outcome") == "lease-lost"
    assert _state(engine, jid) == before
    # A stale worker cannot renew the lease either: extend reports the job as lost.
    assert engine.extend(T0 + 1100, 1000, [(jid, t1)]) == ([jid], [])
    assert _state(engine, jid) == before

    # The current holder records its outcome normally, exactly once.
    assert engine.finish(T0 + 1200, jid, t2, "C", payload=b"fresh") == "ok"
    done = engine.job(jid)
    assert done["st"] == "completed" and done["r"] == "fresh" and "lt" not in done
    assert _completed_events(engine.client, engine.keys.events, jid) == 1

    # Neither token can overwrite the recorded outcome afterwards.
    after = _state(engine, jid)
    for token in (t1, t2):
        assert engine.finish(T0 + 1300, jid, token, kind, payload=b"late") == "lease-lost"
    assert _state(engine, jid) == after
    assert _completed_events(engine.client, engine.keys.events, jid) == 1


def test_stale_token_after_recovery_leaves_waiting_job_alone(engine: Engine) -> None:
    jid = engine.enqueue(T0)
    t1 = int(engine.claim(T0, 1, lease=500)[2])
    assert engine.recover(T0 + 501) == ([jid], [])
    before = _state(engine, jid)
    assert before["hash"]["st"] == "waiting"  # type: ignore[index]

    for kind in ("C", "R", "F", "D", "H"):
        assert engine.finish(T0 + 600, jid, t1, kind) == "lease-lost"
    assert engine.extend(T0 + 600, 500, [(jid, t1)]) == ([jid], [])
    assert _state(engine, jid) == before

    # Forged or never-issued tokens are refused as well.
    t2 = int(engine.claim(T0 + 700, 1, lease=500)[2])
    for forged in ("", "0", str(t2 + 1000), "not-a-token"):
        assert engine.finish(T0 + 800, jid, forged, "C") == "lease-lost"
    assert engine.job(jid)["st"] == "active"


def test_expired_but_untaken_lease_is_still_the_holders(engine: Engine) -> None:
    """Fencing is by token, not by clock: a late holder whose job nobody took keeps it."""
    jid = engine.enqueue(T0)
    t1 = int(engine.claim(T0, 1, lease=500)[2])
    assert engine.finish(T0 + 5000, jid, t1, "C", payload=b"late but sole holder") == "ok"
    assert engine.job(jid)["st"] == "completed"


def test_cancelled_job_whose_worker_died_is_not_run_again(engine: Engine) -> None:
    """cancel_job() on a running job only flags it; if its worker then dies, recovery must
    finish the cancellation rather than hand the job to another worker."""
    jid = engine.enqueue(T0)
    t1 = int(engine.claim(T0, 1, lease=500)[2])
    (status,) = engine.run("cancel", T0 + 10, jid)
    assert status == b"flagged"
    assert engine.extend(T0 + 20, 500, [(jid, t1)]) == ([], [jid])  # the holder is told
    # ... but it dies before it acts on it; its lease expires.
    reply = engine.claim(T0 + 2000, 1, lease=500)
    assert reply[0] == b"empty"
    assert [b.decode() for b in reply[3]] == [] and [b.decode() for b in reply[4]] == [jid]
    job = engine.job(jid)
    assert job["st"] == "dlq" and "cancelled" in job["e"] and "cx" not in job
    assert engine.members("dlq") == [jid] and engine.members("wait") == []
    assert engine.finish(T0 + 2100, jid, t1, "C") == "lease-lost"


# ---------------------------------------------------------------------- end to end


@pytest.mark.redis_only
async def test_blocked_worker_loses_job_and_its_completion_is_rejected(
    pool: WorkerPool, producer: JobQueue, redis_client: redis.asyncio.Redis
) -> None:
    lease = {"lock_duration": 1000, "stalled_interval": 200, "concurrency": 1}
    frozen = pool.start("frozen", behaviour="block", **lease)
    await asyncio.to_thread(frozen.wait_ready)

    # The job blocks the frozen worker's event loop for 5 x lock_duration: no renewals.
    jid = await producer.add_job("work", {"ms": 5000}, remove_on_complete=False)
    await asyncio.to_thread(
        wait_for, lambda: starts(frozen.lines())[jid] == 1, 20, what="frozen worker to start"
    )
    t_frozen_start = next(ln.t for ln in frozen.lines() if ln.event == "start")

    rescuer = pool.start("rescuer", behaviour="fast", **lease)
    await asyncio.to_thread(rescuer.wait_ready)

    def rescued() -> bool:
        return any(ln.event == "finish" and ln.job_id == jid for ln in rescuer.lines())

    await asyncio.to_thread(wait_for, rescued, 20, what="second worker to run the job")
    t_rescue_start = next(ln.t for ln in rescuer.lines() if ln.event == "start")
    frozen_finish = [ln for ln in frozen.lines() if ln.event == "finish"]
    assert not frozen_finish, "the frozen worker woke before the job was re-leased"

    # Now let the frozen worker wake up, finish its run and try to record it.
    def frozen_reported() -> bool:
        return f"lease of job {jid}" in frozen.stderr()

    await asyncio.to_thread(wait_for, frozen_reported, 20, what="frozen worker to notice")
    assert any(ln.event == "finish" and ln.job_id == jid for ln in frozen.lines())
    assert frozen.alive(), "a lost lease must not kill the worker"

    info = await producer.get_job_status(jid)
    assert info is not None
    assert info.status is JobStatus.COMPLETED
    assert info.result == {"pid": rescuer.pid, "attempt": 1}  # the rescuer's outcome
    assert info.stalls == 1
    assert info.attempts == 1
    raw = await redis_client.xrange(producer.keys.events, "-", "+")
    completions = [f for _, f in raw if f[b"e"] == b"job-completed" and f[b"id"] == jid.encode()]
    assert len(completions) == 1, "the job was recorded more than once"
    assert await redis_client.zcard(producer.keys.active) == 0
    # The re-lease happened after lock_duration, not before.
    assert t_rescue_start - t_frozen_start >= 1.0 - 0.05
    print(f"re-leased {t_rescue_start - t_frozen_start:.2f} s after the frozen run started")


@pytest.mark.redis_only
@pytest.mark.parametrize("how", ["kill", "exit"])
async def test_job_that_keeps_killing_its_worker_is_dead_lettered(
    pool: WorkerPool, producer: JobQueue, tmp_path: Path, how: str
) -> None:
    max_stalled = 2
    shared_log = tmp_path / "runs.log"
    settings = {
        "lock_duration": 500,
        "stalled_interval": 100,
        "max_stalled": max_stalled,
        "concurrency": 1,
    }
    jid = await producer.add_job("poison", {})

    started = 0

    def supervise() -> bool:
        """Keep one worker alive (like a process manager would) until the job is dead."""
        nonlocal started
        record = producer_sync.hget(producer.keys.job(jid), "st")
        if record == b"dlq":
            return True
        if not any(p.alive() for p in pool.procs):
            if started > max_stalled + 3:
                raise AssertionError(
                    f"job still {record!r} after {started} worker deaths; last stderr:\n"
                    + pool.procs[-1].stderr()[-3000:]
                )
            pool.start(f"w{started}", behaviour=how, log=shared_log, **settings)
            started += 1
        return False

    producer_sync = redis.Redis.from_url(pool.url)
    try:
        await asyncio.to_thread(wait_for, supervise, 60, interval=0.05, what="job to reach DLQ")
    finally:
        producer_sync.close()

    runs = starts(read_log(shared_log))
    assert runs[jid] == max_stalled + 1
    codes = [p.popen.poll() for p in pool.procs[: max_stalled + 1]]
    assert codes == ([-9] if how == "kill" else [3]) * (max_stalled + 1)

    info = await producer.get_job_status(jid)
    assert info is not None
    assert info.status is JobStatus.DLQ
    assert info.stalls == max_stalled + 1
    assert info.failed_reason is not None and "stalled" in info.failed_reason
    assert f"max_stalled_count={max_stalled}" in info.failed_reason
    assert [j.id for j in await producer.get_dlq_jobs()] == [jid]
    stats = await producer.get_stats()
    assert (stats.waiting, stats.active, stats.dlq) == (0, 0, 1)
    # The stream tells followers why.
    client = await producer.client()
    events = [
        {k.decode(): v.decode() for k, v in f.items()}
        for _, f in await client.xrange(producer.keys.events, "-", "+")
    ]
    dlq = [e for e in events if e["e"] == "job-dlq" and e["id"] == jid]
    assert len(dlq) == 1 and "stalled" in dlq[0]["reason"]


async def _keys(client: Any, prefix: str) -> set[bytes]:
    return {k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)}


async def _snapshot(client: Any, prefix: str) -> list[tuple[bytes, bytes, int]]:
    """The queue's keys at one point in time, as a snapshot a replica or an RDB file holds:
    every ``DUMP`` and ``PTTL`` in one transaction. A key a running worker removes between
    the scan and the transaction (a lease, a marker) is simply not in the snapshot."""
    names = sorted(await _keys(client, prefix))
    async with client.pipeline(transaction=True) as pipe:
        for key in names:
            pipe.dump(key)
            pipe.pttl(key)
        replies = await pipe.execute()
    kept = []
    for key, dumped, ttl in zip(names, replies[0::2], replies[1::2], strict=True):
        if dumped is not None:
            kept.append((key, dumped, ttl))
    return kept


async def _old_outcome_after_a_loss(
    redis_url: str,
    prefix: str,
    before: Callable[[JobQueue, Any], Awaitable[Any]],
    lose: Callable[[Any, Any], Awaitable[None]],
) -> None:
    """The old worker runs a job; ``before(queue, client)`` ran before it was added and
    ``lose(client, what before returned)`` makes Redis lose data while it runs. A new
    job then takes the same id, and the old run's outcome must not land on it."""
    gate, later = asyncio.Event(), asyncio.Event()
    runs: list[tuple[str, str]] = []
    old_worker = JobQueue("lost", redis=redis_url, prefix=prefix, worker={"concurrency": 1})
    new_worker = JobQueue("lost", redis=redis_url, prefix=prefix, worker={"concurrency": 1})

    @old_worker.process("n")
    async def old_run(job: Any) -> dict[str, str]:
        runs.append(("old", job.id))
        if not job.data.get("first"):
            await gate.wait()
        return {"by": "old"}

    @new_worker.process("n")
    async def new_run(job: Any) -> dict[str, str]:
        runs.append(("new", job.id))
        await later.wait()
        return {"by": "new"}

    try:
        client = await old_worker.client()
        kept = await before(old_worker, client)
        old_id = await old_worker.add_job("n", {"before": True})
        await old_worker.start()
        await wait_until(lambda: ("old", old_id) in runs, 10)
        await lose(client, kept)  # the old worker still runs old_id
        new_id = await new_worker.add_job("n", {"after": True})
        assert new_id == old_id  # auto ids went back with the lost writes
        await new_worker.start()
        await wait_until(lambda: ("new", new_id) in runs, 10)
        gate.set()  # the old run ends: its outcome is sent with its old token
        await asyncio.sleep(0.5)
        info = await new_worker.get_job_status(new_id)
        assert info is not None and info.status is JobStatus.ACTIVE and info.result is None
        later.set()
        await wait_until(lambda: _done(new_worker, new_id), 10)
        info = await new_worker.get_job_status(new_id)
        assert info is not None and info.result == {"by": "new"}
        assert info.data == {"after": True}
    finally:
        gate.set()
        later.set()
        await old_worker.close()
        await new_worker.close()


async def test_an_outcome_from_before_a_lost_dataset_never_lands_on_a_new_job(
    redis_url: str, prefix: str
) -> None:
    """Redis loses the queue's keys (FLUSHALL, a restart without persistence, a failover
    to an empty replica) while a worker runs job 1. Auto ids start again at 1, so a new
    job takes the same id; the lease counter starts again too, and the old worker's
    token must still not match the new job's lease: its outcome is refused, and the new
    job's own outcome is the one recorded."""

    async def nothing(q: JobQueue, client: Any) -> None:
        return None

    async def everything(client: Any, _: None) -> None:
        await client.delete(*await _keys(client, prefix))

    await _old_outcome_after_a_loss(redis_url, prefix, nothing, everything)


async def test_an_outcome_from_writes_redis_lost_never_lands_on_a_new_job(
    redis_url: str, prefix: str
) -> None:
    """Redis loses only its latest writes: a failover to a replica that had not received
    them, or a restart from an older snapshot. Here the queue's keys go back to a
    snapshot taken before job 2 was added and claimed, while the old worker still runs
    it. The id counter went back, so a new job takes id 2; the lease counter went back
    too, and a token counted from it was the old run's token: the old outcome was
    recorded on the new job (its result ``{"by": "old"}``). Tokens follow the clock, so
    the new claim's token is above the lost one and the old outcome is refused."""

    async def snapshot(q: JobQueue, client: Any) -> list[tuple[bytes, bytes, int]]:
        first = await q.add_job("n", {"first": True})
        await q.start()
        await wait_until(lambda: _done(q, first), 10)
        await q.worker.stop()
        return await _snapshot(client, prefix)

    async def back_to(client: Any, kept: list[tuple[bytes, bytes, int]]) -> None:
        await client.delete(*await _keys(client, prefix))
        for key, dumped, ttl in kept:
            await client.restore(key, max(ttl, 0), dumped, replace=True)

    await _old_outcome_after_a_loss(redis_url, prefix, snapshot, back_to)


async def test_a_job_that_took_a_lost_jobs_id_has_its_own_idempotency_key(
    redis_url: str, prefix: str
) -> None:
    """A payment provider deduplicates by ``job.idempotency_key``. Redis loses its latest
    writes after alice's job ran; bob's new job takes the same auto id. With the default
    key ``"<queue>:<id>"`` bob was never charged and his job completed with alice's
    charge; the enqueue time in the default key keeps them apart."""
    provider: dict[str, str] = {}
    q = JobQueue("pay", redis=redis_url, prefix=prefix, worker={"concurrency": 1})

    @q.process("charge")
    async def charge(job: Any) -> dict[str, str]:
        provider.setdefault(job.idempotency_key, job.data["who"])
        return {"charged": provider[job.idempotency_key]}

    try:
        client = await q.client()
        first = await q.add_job("charge", {"who": "first"})
        await q.start()
        await wait_until(lambda: _done(q, first), 10)
        kept = await _snapshot(client, prefix)
        await asyncio.sleep(0.01)  # a later enqueue time, as after any real failover
        alice = await q.add_job("charge", {"who": "alice"})
        await wait_until(lambda: _done(q, alice), 10)
        await client.delete(*await _keys(client, prefix))  # the latest writes are lost
        for key, dumped, ttl in kept:
            await client.restore(key, max(ttl, 0), dumped, replace=True)
        bob = await q.add_job("charge", {"who": "bob"})
        assert bob == alice  # the auto id went back with the lost writes
        await wait_until(lambda: _done(q, bob), 10)
        info = await q.get_job_status(bob)
        assert info is not None and info.result == {"charged": "bob"}, info
        assert sorted(provider.values()) == ["alice", "bob", "first"]
    finally:
        await q.close()


async def _done(q: JobQueue, job_id: str) -> bool:
    info = await q.get_job_status(job_id)
    return info is not None and info.status is JobStatus.COMPLETED
