"""The region record's protocol (features/regions/region.lua) op by op, with the clock
injected: votes once per epoch and never while a grant to another region runs; a lease
only from a majority's grants and never moved back; step-down and resume; adopt marks a
former primary unless it stepped down; the fence (enqueue and claim) follows the
record. The multi-region behaviour built on it: tests/test_regions.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from kitium_queue import FencedError, JobQueue
from kitium_queue.features.regions.lua import install
from kitium_queue.features.regions.record import Record

T0 = 1_000_000
SRC = "a@1"  # the source of replication calls: <region>@<epoch>


@pytest.fixture
async def copy(backend_url: str, prefix: str) -> AsyncIterator[JobQueue]:
    q = JobQueue("proto", redis=backend_url, prefix=prefix)
    install(q, replicated=True)
    yield q
    await q.close()


async def op(q: JobQueue, now: int, name: str, *args: Any, me: str = "a") -> Record:
    client = await q.client()
    head = [q.keys.base, str(now), "10000"]
    reply = await q.scripts.call(client, "region", q.keys.all, [*head, name, me, *args])
    return Record.parse(reply)


def put_entry(op: str, state: str, at: int, seq: int = 0) -> list[Any]:
    """A replication entry of job j1 as the source has it (op put or req)."""
    from kitium_queue.features.regions.lua import entry

    return entry(
        op=op,
        id="j1",
        name="job",
        data=b'"x"',
        priority="0",
        lifo="0",
        created=T0,
        state=state,
        attempts="1",
        at=at,
        seq=seq,
    )


def end_entry(at: int, seq: int = 0) -> list[Any]:
    """The entry of j1's completion, written at outbox place ``<at>-<seq>``."""
    from kitium_queue.features.regions.lua import entry

    return entry(
        op="end",
        id="j1",
        name="job",
        state="completed",
        payload=b'"r"',
        finished=at,
        keep_count="",
        keep_age="",
        at=at,
        seq=seq,
    )


async def test_votes_once_per_epoch_and_not_while_a_grant_runs(copy: JobQueue) -> None:
    assert (await op(copy, T0, "vote", 1, "a", 500)).ok
    # Another candidate in the same epoch: refused (one vote per epoch)...
    assert (await op(copy, T0 + 10, "vote", 1, "b", 500)).status == "voted"
    # ...and in a later one while the grant to "a" runs: held, with the time left.
    held = await op(copy, T0 + 100, "vote", 2, "b", 500)
    assert (held.status, held.detail) == ("held", "400")
    assert (await op(copy, T0 + 500, "vote", 2, "b", 500)).ok  # lapsed
    assert (await op(copy, T0 + 510, "vote", 1, "a", 500)).status == "voted"  # older election


async def test_a_lease_needs_the_vote_and_only_grows(copy: JobQueue) -> None:
    assert (await op(copy, T0, "promote", 1, T0 + 450)).status == "novote"
    assert (await op(copy, T0, "vote", 1, "a", 500)).ok
    rec = await op(copy, T0, "promote", 1, T0 + 450)
    assert rec.ok and rec.is_primary and rec.lease == T0 + 450
    assert (await op(copy, T0 + 1, "extend", 1, T0 + 100)).lease == T0 + 450  # never back
    assert (await op(copy, T0 + 1, "extend", 1, T0 + 900)).lease == T0 + 900
    assert (await op(copy, T0 + 1, "extend", 2, T0 + 950)).status == "stale"
    # The fence follows the lease, in the clock of each call (injected here).
    assert (await _enqueue_at(copy, T0 + 899))[1] == b"new"
    with pytest.raises(FencedError, match="lease of region a as primary"):
        await _enqueue_at(copy, T0 + 901)


async def _enqueue_at(q: JobQueue, now: int) -> Any:
    client = await q.client()
    head = [q.keys.base, str(now), "10000", 86_400_000]
    job = ["", "x", "{}", "", 0, 0, "0", ""]
    return await q.scripts.call(client, "enqueue", q.keys.all, [*head, *job])


async def test_renewals_learn_a_later_epoch_and_refuse_an_older_one(copy: JobQueue) -> None:
    rec = await op(copy, T0, "renew", 3, "b", 500)  # a copy that missed epochs 1-2
    assert (rec.ok, rec.epoch, rec.primary, rec.lease) == (True, 3, "b", 0)
    assert rec.vfor == "b" and rec.vuntil == T0 + 500
    assert (await op(copy, T0, "renew", 2, "c", 500)).status == "stale"
    assert (await op(copy, T0, "renew", 3, "c", 500)).status == "conflict"
    assert (await op(copy, T0, "vote", 4, "c", 500)).status == "held"
    assert (await op(copy, T0 + 600, "vote", 4, "c", 500)).ok
    # An election for epoch 4 is under way here: renewals of epoch 3 are refused.
    assert (await op(copy, T0 + 600, "renew", 3, "b", 500)).status == "stale"


async def test_stepdown_fences_at_once_and_resume_undoes_it(copy: JobQueue) -> None:
    await op(copy, T0, "vote", 1, "a", 10**9)
    await op(copy, T0, "promote", 1, T0 + 10**9)
    down = await op(copy, T0 + 1, "stepdown", 1)
    assert down.ok and down.lease == 0 and down.down == 1 and down.vuntil == 0
    with pytest.raises(FencedError, match="stepped down"):
        await _enqueue_at(copy, T0 + 2)
    assert (await op(copy, T0 + 2, "extend", 1, T0 + 10**9)).status == "stale"
    assert (await op(copy, T0 + 3, "resume", 1)).down is None
    assert (await op(copy, T0 + 4, "extend", 1, T0 + 10**9)).ok


async def test_adopt_marks_a_former_primary_unless_it_stepped_down(
    backend_url: str, prefix: str
) -> None:
    for stepped in (False, True):
        q = JobQueue(f"proto{stepped}", redis=backend_url, prefix=prefix)
        install(q, replicated=True)
        try:
            await op(q, T0, "vote", 1, "a", 500)
            await op(q, T0, "promote", 1, T0 + 450)
            if stepped:
                await op(q, T0, "stepdown", 1)
            rec = await op(q, T0 + 1000, "adopt", 2, "b")
            assert (rec.epoch, rec.primary, rec.lease) == (2, "b", 0)
            assert rec.former == (None if stepped else 1)
            assert (await op(q, T0 + 1000, "adopt", 1, "a")).status == "stale"
            assert (await op(q, T0 + 1000, "rejoin")).former is None
        finally:
            await q.close()


async def test_a_former_primary_is_not_promoted_until_it_has_rejoined(copy: JobQueue) -> None:
    """A deposed primary that came back (``former``) holds work nobody recorded yet and
    is about to be emptied and copied afresh by the replicator: promoting it then lost
    acknowledged jobs (the replicator deleted the new primary's outbox and copies). It
    may vote, but not be promoted, until ``rejoin``."""
    await op(copy, T0, "vote", 1, "a", 500)
    await op(copy, T0, "promote", 1, T0 + 450)
    assert (await op(copy, T0 + 1000, "adopt", 2, "b")).former == 1
    assert (await op(copy, T0 + 5000, "vote", 3, "a", 500)).ok
    refused = await op(copy, T0 + 5000, "promote", 3, T0 + 5450)
    assert (refused.status, refused.detail, refused.epoch, refused.primary) == (
        "former",
        "1",
        2,
        "b",
    )
    assert (await op(copy, T0 + 5000, "rejoin")).former is None
    rec = await op(copy, T0 + 5000, "promote", 3, T0 + 5450)
    assert (rec.ok, rec.epoch, rec.primary) == (True, 3, "a")


async def test_a_record_belongs_to_one_region_and_arguments_are_checked(copy: JobQueue) -> None:
    await op(copy, T0, "read")
    assert (await op(copy, T0, "read", me="b")).status == "mismatch"
    from kitium_queue.errors import ScriptArgumentError

    for bad in (("vote", "x", "a", 5), ("vote", -1, "a", 5), ("promote", 1, "nan"), ("nope",)):
        with pytest.raises(ScriptArgumentError):
            await op(copy, T0, *bad)


async def test_claims_are_fenced_too(copy: JobQueue) -> None:
    await op(copy, T0, "vote", 1, "b", 500)  # this copy ("a") voted for another region
    client = await copy.client()
    head = [copy.keys.base, str(T0), "10000"]
    reply = await copy.scripts.call(
        client, "claim", copy.keys.all, [*head, 10, 30_000, 0, 1000, 1, "1", "w", 100]
    )
    assert reply[0] == b"fenced"


async def test_an_outcome_applied_late_never_ends_a_job_requeued_since(copy: JobQueue) -> None:
    """Batches may be applied late (a replicator that waited out a backoff, entries a
    handover took over from a silent one): an ``end`` older than the latest ``req``
    copied here from the same source is skipped, a newer one applies. Times of another
    source (another server's clock) are not compared."""
    from kitium_queue.features.regions.copying import apply

    put, end = put_entry, end_entry

    async def state() -> str:
        info = await copy.get_job_status("j1")
        assert info is not None
        return info.status.value

    assert await apply(copy, src=SRC, entries=[put("put", "waiting", T0)]) == ["added"]
    assert await apply(copy, src=SRC, entries=[end(T0 + 10)]) == ["ended"]
    assert await state() == "completed"
    assert await apply(copy, src=SRC, entries=[put("req", "waiting", T0 + 30)]) == ["requeued"]
    assert await state() == "waiting"
    # The completion before the requeue, applied again late: skipped.
    assert await apply(copy, src=SRC, entries=[end(T0 + 10), end(T0 + 29)]) == ["exists", "exists"]
    assert await state() == "waiting"
    # A requeue applied late (older than the one copied) keeps the newer time.
    assert await apply(copy, src=SRC, entries=[put("req", "waiting", T0 + 5)]) == ["exists"]
    assert await apply(copy, src=SRC, entries=[end(T0 + 29)]) == ["exists"]
    # Without a source (a stranded record resubmitted), or from another source (a new
    # primary, its own clock), nothing is compared: the outcome applies.
    assert await apply(copy, src="b@2", entries=[end(T0 + 1)]) == ["ended"]
    assert await apply(copy, src=SRC, entries=[put("req", "waiting", T0 + 50)]) == ["requeued"]
    assert await apply(copy, entries=[end(T0 + 2)]) == ["ended"]
    assert await apply(copy, src=SRC, entries=[put("req", "waiting", T0 + 60)]) == ["requeued"]
    # The job's next outcome applies.
    assert await apply(copy, src=SRC, entries=[end(T0 + 70)]) == ["ended"]
    assert await state() == "completed"
    client = await copy.client()
    assert await client.hget(copy.keys.job("j1"), "rq") == b"%d-0|a@1" % (T0 + 60)


async def test_a_requeue_and_an_outcome_of_one_millisecond_are_ordered_by_their_place(
    copy: JobQueue,
) -> None:
    """Outbox entries written in the same millisecond differ by their sequence number:
    an ``end`` written before a ``req`` of that ms, applied late, is skipped; one written
    after it applies. A mark without a sequence number (written before it was kept)
    orders nothing within its ms."""
    from kitium_queue.features.regions.copying import apply

    def put(op: str, at: int, seq: int) -> list[Any]:
        return put_entry(op, "waiting", at, seq)

    end = end_entry

    client = await copy.client()
    jk = copy.keys.job("j1")
    t = T0 + 100
    assert await apply(copy, src=SRC, entries=[put("put", T0, 0)]) == ["added"]
    assert await apply(copy, src=SRC, entries=[end(t, 3)]) == ["ended"]
    assert await apply(copy, src=SRC, entries=[put("req", t, 4)]) == ["requeued"]
    assert await client.hget(jk, "rq") == b"%d-4|a@1" % t
    # The completion of that ms written before the requeue, applied late: skipped.
    assert await apply(copy, src=SRC, entries=[end(t, 3), end(t, 0)]) == ["exists", "exists"]
    # An older requeue of the same ms applied late keeps the newer mark.
    assert await apply(copy, src=SRC, entries=[put("req", t, 2)]) == ["exists"]
    assert await client.hget(jk, "rq") == b"%d-4|a@1" % t
    # The outcome written after the requeue, in the same ms, applies.
    assert await apply(copy, src=SRC, entries=[end(t, 5)]) == ["ended"]
    info = await copy.get_job_status("j1")
    assert info is not None and info.status.value == "completed"
    # A later requeue of the same ms moves the mark on.
    assert await apply(copy, src=SRC, entries=[put("req", t, 6)]) == ["requeued"]
    assert await client.hget(jk, "rq") == b"%d-6|a@1" % t
    # A mark without a sequence number: an outcome of its ms applies (unordered), an
    # older one is still skipped.
    await client.hset(jk, "rq", b"%d|a@1" % t)
    assert await apply(copy, src=SRC, entries=[end(t - 1, 9)]) == ["exists"]
    assert await apply(copy, src=SRC, entries=[end(t, 0)]) == ["ended"]


@pytest.mark.parametrize(
    "rq",
    [
        b"x",
        b"|a@1",
        b"12",
        b"12|",
        b"-5|a@1",
        b"1e9|a@1",
        b"9" * 17 + b"|a@1",
        b"99999999999999999|a@1",
        b"\xff|a@1",
        b"1125899906842625|a@1",
        b"T-|a@1",
        b"-T-3|a@1",
        b"T-x|a@1",
        b"T-" + b"9" * 17 + b"|a@1",
        b"T-1125899906842625|a@1",
        b"T-3-4|a@1",
        b"T-3|",
        b"T-3|b@1",
    ],
)
async def test_a_damaged_requeue_mark_never_holds_an_outcome_back(
    copy: JobQueue, rq: bytes
) -> None:
    """A ``rq`` field written by hand (not a time, a time past MAX_MS, no source) counts
    as none: the outcome applies, and the call never fails."""
    from kitium_queue.features.regions.copying import apply

    put, end = put_entry("put", "waiting", T0), end_entry(T0 + 9)
    assert await apply(copy, src=SRC, entries=[put]) == ["added"]
    client = await copy.client()
    # T: the outcome's own ms, so that a mark read as a place of that ms would hold it.
    await client.hset(copy.keys.job("j1"), "rq", rq.replace(b"T", b"%d" % (T0 + 9)))
    assert await apply(copy, src=SRC, entries=[end]) == ["ended"]
    info = await copy.get_job_status("j1")
    assert info is not None and info.status.value == "completed"
