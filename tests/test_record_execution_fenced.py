"""``record_execution`` is fenced by the run that makes it.

A run still going when its job was erased (``erase_subject``), removed (``clear``) or
handed to another run writes no execution record: ``LeaseLostError``, and neither
``idem-x:<key>`` nor an index entry exists afterwards. The run holding the job, and
calls made outside any run, record as before.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from helpers import QueueFactory, wait_for_status, wait_until
from kitium_queue import JobStatus
from kitium_queue.errors import LeaseLostError
from kitium_queue.features.idempotency import IdempotencyManager
from kitium_queue.queue import JobQueue

SUBJECT = "cust-fence-1"


async def _record_of(q: JobQueue, key: str) -> tuple[int, Any]:
    """Whether ``idem-x:<key>`` exists, and the key's score in the index."""
    client = await q.client()
    exists = await client.exists(q.keys.extra("idem-x:" + key))
    return int(exists), await client.zscore(q.keys.extra("idem-x"), key)


def _late_recorder(q: JobQueue, go: asyncio.Event, outcome: list[Any]) -> Any:
    """A processor that waits for ``go``, then records under its job's key; what the
    call did (None, or the error) goes to ``outcome``."""

    async def run(job: Any) -> Any:
        await go.wait()
        try:
            await q.advanced.exactly_once.record_execution(
                job.idempotency_key, job.id, job.name, {"receipt": job.data}
            )
            outcome.append(None)
        except Exception as exc:
            outcome.append(exc)
        return None

    return run


async def test_a_run_whose_job_was_erased_records_nothing(make_queue: QueueFactory) -> None:
    q = make_queue(
        "erased",
        settings={"lock_duration": 30_000, "lock_renew_time": 10_000},
        worker={"scheduler": False},
        advanced={"exactly_once": {"enabled": True}, "compliance": {"enabled": True}},
    )
    go, outcome = asyncio.Event(), []
    q.process("*", _late_recorder(q, go, outcome))
    await q.start()
    jid = await q.add_job("pay", {"m": 1}, subject_id=SUBJECT, idempotency_key="k-erased")
    await wait_for_status(q, jid, JobStatus.ACTIVE)
    report = await q.advanced.compliance.erase_subject(SUBJECT)
    assert report.jobs == 1
    go.set()
    await wait_until(lambda: len(outcome) == 1, 10)
    assert isinstance(outcome[0], LeaseLostError), outcome
    assert "no longer exists" in str(outcome[0])
    assert await _record_of(q, "k-erased") == (0, None)
    assert await q.advanced.exactly_once.get_execution_result("k-erased") is None


async def test_a_run_whose_job_was_removed_records_nothing(make_queue: QueueFactory) -> None:
    q = make_queue(
        "removed",
        settings={"lock_duration": 30_000, "lock_renew_time": 10_000},
        worker={"scheduler": False},
    )
    idem = IdempotencyManager(q)
    go, outcome = asyncio.Event(), []

    async def run(job: Any) -> Any:
        await go.wait()
        try:
            await idem.record_execution(job.idempotency_key, job.id, job.name, 1)
            outcome.append(None)
        except LeaseLostError as exc:
            outcome.append(exc)

    q.process("pay", run)
    await q.start()
    jid = await q.add_job("pay", {}, idempotency_key="k-removed")
    await wait_for_status(q, jid, JobStatus.ACTIVE)
    await q.clear(force=True)
    assert await q.get_job_status(jid) is None
    go.set()
    await wait_until(lambda: len(outcome) == 1, 10)
    assert isinstance(outcome[0], LeaseLostError), outcome
    assert await _record_of(q, "k-removed") == (0, None)


async def test_a_run_that_lost_its_job_to_another_run_records_nothing(
    make_queue: QueueFactory,
) -> None:
    """Worker A's stop hands its running job back; worker B (another process's queue
    object) runs it now. A task A's run started records after that: refused, by the
    run it comes from (no token passed). B's run records."""
    settings = {"lock_duration": 30_000, "lock_renew_time": 10_000}
    qa = make_queue("lost", settings=settings, worker={"scheduler": False})
    qb = make_queue("lost", settings=settings, worker={"scheduler": False})
    idem_a, idem_b = IdempotencyManager(qa), IdempotencyManager(qb)
    moved, b_go = asyncio.Event(), asyncio.Event()
    a_outcome: list[Any] = []
    tokens: list[str] = []
    late: list[asyncio.Task[None]] = []

    async def in_a(job: Any) -> Any:
        tokens.append(job.lease_token)

        async def record_late() -> None:  # started by the run: it is that run's call
            await moved.wait()
            try:
                await idem_a.record_execution(job.idempotency_key, job.id, job.name, "A")
                a_outcome.append(None)
            except LeaseLostError as exc:
                a_outcome.append(exc)

        late.append(asyncio.create_task(record_late()))
        await asyncio.Event().wait()  # until the stop hands the job back

    async def in_b(job: Any) -> Any:
        tokens.append(job.lease_token)
        await b_go.wait()
        await idem_b.record_execution(job.idempotency_key, job.id, job.name, "B")
        return "B"

    qa.process("pay", in_a)
    qb.process("pay", in_b)
    await qa.start()
    jid = await qa.add_job("pay", {}, idempotency_key="k-lost")
    await wait_for_status(qa, jid, JobStatus.ACTIVE)
    await qa.worker.stop(200)
    await qb.start()
    await wait_until(lambda: len(tokens) == 2, 10)
    assert tokens[0] != tokens[1]
    moved.set()
    await asyncio.wait_for(late[0], 10)
    assert isinstance(a_outcome[0], LeaseLostError), a_outcome
    assert "no longer held by this run" in str(a_outcome[0])
    assert await _record_of(qb, "k-lost") == (0, None)
    # The first run's token, passed by hand, is refused as well.
    with pytest.raises(LeaseLostError):
        await idem_a.record_execution("k-lost", jid, "pay", "A", lease_token=tokens[0])
    b_go.set()
    await wait_for_status(qb, jid, JobStatus.COMPLETED)
    got = await idem_b.get_execution_result("k-lost")
    assert got is not None and got.source == "recorded" and got.result == "B"
    assert got.job_id == jid


async def test_the_run_holding_its_job_records_and_calls_outside_a_run_still_do(
    make_queue: QueueFactory,
) -> None:
    q = make_queue("normal", worker={"scheduler": False})
    idem = IdempotencyManager(q)
    seen: list[str] = []

    async def run(job: Any) -> Any:
        seen.append(job.lease_token)
        await idem.record_execution(job.idempotency_key, job.id, job.name, {"r": 1})
        # Another key, another job id (a label): not this run's job, not fenced.
        await idem.record_execution("side-" + job.idempotency_key, "ext-9", job.name, 2)
        # This run's token given by hand: held, written.
        await idem.record_execution(
            "tok-" + job.idempotency_key, job.id, job.name, 3, lease_token=job.lease_token
        )
        return {"r": 1}

    q.process("pay", run)
    await q.start()
    jid = await q.add_job("pay", {}, idempotency_key="k-ok")
    await wait_for_status(q, jid, JobStatus.COMPLETED)
    got = await idem.get_execution_result("k-ok")
    assert got is not None and got.source == "recorded" and got.result == {"r": 1}
    assert got.job_id == jid and got.job_name == "pay"
    side = await idem.get_execution_result("side-k-ok")
    assert side is not None and side.result == 2 and side.job_id == "ext-9"
    tok = await idem.get_execution_result("tok-k-ok")
    assert tok is not None and tok.result == 3
    for key in ("k-ok", "side-k-ok", "tok-k-ok"):
        exists, score = await _record_of(q, key)
        assert exists == 1 and score is not None
    # Outside a run: an existing job, and an id of no job (a label), are written.
    await idem.record_execution("after", jid, "pay", 4)
    await idem.record_execution("label", "no-such-job", "pay", 5)
    assert (await idem.get_execution_result("after")).result == 4  # type: ignore[union-attr]
    assert (await idem.get_execution_result("label")).result == 5  # type: ignore[union-attr]
    # The finished run's token, passed after it ended: refused, nothing written.
    with pytest.raises(LeaseLostError, match="no longer held"):
        await idem.record_execution("late", jid, "pay", 6, lease_token=seen[0])
    assert await _record_of(q, "late") == (0, None)


async def test_partitioned_queue_runs_are_fenced_in_their_own_partition(
    backend_url: str, prefix: str
) -> None:
    """On a ``PartitionedQueue`` the job id may be the full one, and the record's key
    may map to another partition than the job: the run's lease is read there. After
    the job was removed (``clear``), nothing is written in either partition."""
    from kitium_queue import PartitionedQueue

    pq = PartitionedQueue("pfence", partitions=2, redis=backend_url, prefix=prefix)
    idem = IdempotencyManager(pq)
    go = asyncio.Event()
    outcome: list[Any] = []
    own = "k-part"
    home = pq.partition_of(own)  # the job's partition

    def key_in(base: str, same: bool) -> str:
        keys = (f"{base}{i}" for i in range(100))
        return next(k for k in keys if (pq.partition_of(k) == home) == same)

    other = key_in("x-", False)
    late_keys = (key_in("late-", True), key_in("late-", False))

    async def run(job: Any) -> Any:
        full = pq.public_id(job)
        await idem.record_execution(job.idempotency_key, full, job.name, 1)
        await idem.record_execution(other, full, job.name, 2)
        await go.wait()
        for key in late_keys:
            try:
                await idem.record_execution(key, full, job.name, 3)
                outcome.append(None)
            except LeaseLostError as exc:
                outcome.append(exc)

    pq.process("pay", run)
    try:
        await pq.start()
        jid = await pq.add_job("pay", {}, idempotency_key=own)
        for key, value in ((own, 1), (other, 2)):

            async def recorded(key: str = key) -> Any:
                return await idem.get_execution_result(key)

            got = await wait_until(recorded, 10)
            assert got.result == value and got.job_id == jid
        await pq.clear(force=True)
        go.set()
        await wait_until(lambda: len(outcome) == 2, 10)
        assert all(isinstance(o, LeaseLostError) for o in outcome), outcome
        for key in late_keys:
            assert await idem.get_execution_result(key) is None
    finally:
        await pq.close()
