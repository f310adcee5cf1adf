"""Admin commands and reads against records damaged by hand and hostile arguments.

A job key overwritten with another type, a record deleted while its id still sits in a
state set, a created time that is not a number: each stays that one job's problem. The
reads return the others (the damaged one with ``damaged`` set), the admin commands move
or remove the others and say clearly what they cannot do, and no script fails after its
first write (which would leave a half-done transition and, for replay, a job in no set).
"""

from __future__ import annotations

from typing import Any

import pytest

from helpers import QueueFactory
from kitium_queue import JobQueue, JobStatus
from kitium_queue.errors import ConfigurationError, JobActiveError, JobStateError

WRONG_TYPE = "its key holds another type, not a hash"


async def _dead(q: JobQueue, *ids: str, score: float = 1.0) -> None:
    """Jobs ``ids`` added and put into the DLQ by hand (as a final failure leaves them)."""
    client = await q.client()
    for jid in ids:
        await q.add_job("n", {"id": jid}, job_id=jid)
        await client.zrem(q.keys.wait, jid)
        await client.zadd(q.keys.dlq, {jid: score})
        await client.hset(q.keys.job(jid), mapping={"st": "dlq", "e": "boom", "f": "1"})


async def _overwrite(q: JobQueue, jid: str) -> None:
    """Job ``jid``'s key overwritten with a string (its set entries stay)."""
    client = await q.client()
    await client.delete(q.keys.job(jid))
    await client.set(q.keys.job(jid), "not a hash")


async def _members(q: JobQueue, key: str) -> list[str]:
    client = await q.client()
    return [m.decode() for m in await client.zrange(key, 0, -1)]


async def test_listings_return_the_others_when_one_key_holds_another_type(
    make_queue: QueueFactory,
) -> None:
    q = make_queue()
    await _dead(q, "a-bad", "b-good", "c-good")
    await _overwrite(q, "a-bad")
    listed = await q.get_dlq_jobs(10)
    assert sorted(i.id for i in listed) == ["a-bad", "b-good", "c-good"]
    by_id = {i.id: i for i in listed}
    assert by_id["b-good"].damaged is None and by_id["b-good"].data == {"id": "b-good"}
    bad = by_id["a-bad"]
    assert bad.damaged is not None and WRONG_TYPE in bad.damaged
    assert bad.status is JobStatus.DLQ  # the set it was listed from
    page = await q.list_jobs("dlq", limit=2)
    rest = await q.list_jobs("dlq", limit=2, cursor=page.next_cursor)
    assert sorted(i.id for i in page.jobs + rest.jobs) == ["a-bad", "b-good", "c-good"]
    assert [i.id for i in await q.get_jobs_by_status("dlq", 1, 2)] == ["a-bad"]


async def test_status_of_a_key_of_another_type_names_the_set_it_is_in(
    make_queue: QueueFactory,
) -> None:
    q = make_queue()
    await _dead(q, "bad")
    await _overwrite(q, "bad")
    info = await q.get_job_status("bad")
    assert info is not None and info.damaged is not None and WRONG_TYPE in info.damaged
    assert info.status is JobStatus.DLQ  # not "waiting", which it is not
    detail = await q.get_job_detail("bad")
    assert detail is not None and detail.status is JobStatus.DLQ


@pytest.mark.parametrize("damage", ["abc", "", "wrong type"])
async def test_stats_count_every_state_when_the_first_waiting_record_is_damaged(
    make_queue: QueueFactory, damage: str
) -> None:
    q = make_queue()
    first = await q.add_job("n", 1, job_id="first")
    await q.add_job("n", 2, job_id="second")
    await _dead(q, "dead")
    client = await q.client()
    if damage == "wrong type":
        await _overwrite(q, first)
    else:
        await client.hset(q.keys.job(first), "ts", damage)
    stats = await q.get_stats()
    assert (stats.waiting, stats.dlq, stats.active) == (2, 1, 0)
    assert stats.latency_ms == 0  # unknown: the record holds no usable time


async def test_replay_and_bulk_retry_skip_a_key_of_another_type_and_move_the_rest(
    make_queue: QueueFactory,
) -> None:
    q = make_queue()
    await _dead(q, "a-bad", "b-good", "c-good")  # equal scores: a-bad comes first
    await _overwrite(q, "a-bad")
    assert await q.replay_dlq(10) == 2
    assert sorted(await _members(q, q.keys.wait)) == ["b-good", "c-good"]
    # The damaged entry stays in the DLQ, its key untouched: a record of it.
    assert await _members(q, q.keys.dlq) == ["a-bad"]
    client = await q.client()
    assert await client.get(q.keys.job("a-bad")) == b"not a hash"
    await _dead(q, "d-good")
    assert await q.bulk_retry("dlq", 10) == 1
    assert await _members(q, q.keys.dlq) == ["a-bad"]
    assert "d-good" in await _members(q, q.keys.wait)


async def test_replay_skips_entries_whose_record_is_gone_without_forging_one(
    make_queue: QueueFactory,
) -> None:
    q = make_queue()
    client = await q.client()
    # More gone records at the front of the DLQ than one script call examines.
    gone = [f"gone-{i:04d}" for i in range(1005)]
    await client.zadd(q.keys.dlq, dict.fromkeys(gone, 1))
    await _dead(q, "z-good-1", "z-good-2", score=2)
    assert await q.replay_dlq() == 2
    assert sorted(await _members(q, q.keys.wait)) == ["z-good-1", "z-good-2"]
    assert await client.zcard(q.keys.dlq) == len(gone)  # kept as the record of the loss
    assert await client.exists(q.keys.job(gone[0])) == 0  # no empty record made up
    assert await q.bulk_retry("dlq", 5000) == 0


async def test_remove_job_clears_a_damaged_or_lost_record_from_its_set(
    make_queue: QueueFactory,
) -> None:
    q = make_queue()
    client = await q.client()
    await _dead(q, "bad", "lost", "good")
    await _overwrite(q, "bad")
    await client.delete(q.keys.job("lost"))
    assert await q.remove_job("bad") is True
    assert await q.remove_job("lost") is True
    assert await q.remove_job("lost") is False  # nothing of it is left
    assert await _members(q, q.keys.dlq) == ["good"]
    assert await client.exists(q.keys.job("bad")) == 0
    # A damaged key of a running job is left for recovery, as any running job.
    await client.zadd(q.keys.active, {"running": 1})
    await client.set(q.keys.job("running"), "x")
    with pytest.raises(JobActiveError):
        await q.remove_job("running")
    assert await client.zscore(q.keys.active, "running") is not None


async def test_cancel_job_of_a_key_of_another_type(make_queue: QueueFactory) -> None:
    q = make_queue()
    client = await q.client()
    await q.add_job("n", 1, job_id="waiting-bad")
    await q.add_job("n", 2, job_id="waiting-good")
    await _dead(q, "dead-bad")
    for jid in ("waiting-bad", "dead-bad"):
        await _overwrite(q, jid)
    assert await q.cancel_job("waiting-bad") == "removed"
    assert await client.exists(q.keys.job("waiting-bad")) == 0
    assert await _members(q, q.keys.wait) == ["waiting-good"]
    assert await q.cancel_job("dead-bad") == "finished"
    assert await _members(q, q.keys.dlq) == ["dead-bad"]


async def test_retry_job_of_a_key_of_another_type_says_what_is_wrong(
    make_queue: QueueFactory,
) -> None:
    q = make_queue()
    await _dead(q, "bad")
    await _overwrite(q, "bad")
    with pytest.raises(JobStateError, match=r"job bad has a damaged record .*remove_job"):
        await q.retry_job("bad")
    assert await _members(q, q.keys.dlq) == ["bad"]


@pytest.mark.parametrize("status", ["waiting", "active", "delayed", "paused", "pending"])
async def test_bulk_retry_of_an_unfinished_state_names_the_argument(
    make_queue: QueueFactory, status: Any
) -> None:
    q = make_queue()
    await q.add_job("n", 1)
    with pytest.raises(ConfigurationError, match="bulk_retry status must be one of"):
        await q.bulk_retry(status, 10)
    assert await q.get_jobs_by_status("waiting") != []


async def test_get_job_logs_of_a_log_key_of_another_type(make_queue: QueueFactory) -> None:
    q = make_queue()
    jid = await q.add_job("n", 1, job_id="j-1")
    client = await q.client()
    await client.set(q.keys.logs(jid), "x")
    assert await q.get_job_logs(jid) == []
    detail = await q.get_job_detail(jid)
    assert detail is not None and detail.log_lines == 0


@pytest.mark.parametrize("flag", ["false", "no", 0, None])
async def test_clear_and_drain_read_their_flag_as_a_bool_only(
    make_queue: QueueFactory, flag: Any
) -> None:
    q = make_queue()
    client = await q.client()
    await q.add_job("n", 1, job_id="later", delay=60_000)
    await q.add_job("n", 2, job_id="running")
    await client.zrem(q.keys.wait, "running")
    await client.zadd(q.keys.active, {"running": 9e12})
    await client.hset(q.keys.job("running"), "st", "active")
    with pytest.raises(ConfigurationError, match="clear force must be True or False"):
        await q.clear(force=flag)
    with pytest.raises(ConfigurationError, match="drain delayed must be True or False"):
        await q.drain(delayed=flag)
    assert await _members(q, q.keys.active) == ["running"]
    assert await _members(q, q.keys.delayed) == ["later"]


async def test_job_detail_of_a_lease_with_an_infinite_score(make_queue: QueueFactory) -> None:
    q = make_queue()
    client = await q.client()
    await q.add_job("n", 1, job_id="a-1")
    await client.zrem(q.keys.wait, "a-1")
    await client.zadd(q.keys.active, {"a-1": float("inf")})
    await client.hset(q.keys.job("a-1"), "st", "active")
    detail = await q.get_job_detail("a-1")
    assert detail is not None and detail.status is JobStatus.ACTIVE
    assert detail.lease_deadline is None  # no time it could be shown as


async def test_list_jobs_pages_past_members_with_infinite_scores(
    make_queue: QueueFactory,
) -> None:
    q = make_queue()
    await _dead(q, "a-1", "a-2", score=float("inf"))
    await _dead(q, "b-1", score=5)
    await _dead(q, "c-1", score=float("-inf"))
    seen: list[str] = []
    page = await q.list_jobs("dlq", limit=1)
    while True:
        seen += [i.id for i in page.jobs]
        if page.next_cursor is None:
            break
        page = await q.list_jobs("dlq", limit=1, cursor=page.next_cursor)
    assert seen == ["a-2", "a-1", "b-1", "c-1"]  # newest first, each once


async def test_replay_leaves_a_stale_dlq_entry_of_a_running_job_alone(
    make_queue: QueueFactory,
) -> None:
    q = make_queue()
    client = await q.client()
    await q.add_job("n", 1, job_id="running")
    await client.zrem(q.keys.wait, "running")
    await client.zadd(q.keys.active, {"running": 9e12})
    await client.hset(q.keys.job("running"), mapping={"st": "active", "lt": "7"})
    await client.zadd(q.keys.dlq, {"running": 1})  # a stale entry, left by hand
    await _dead(q, "dead", score=2)
    assert await q.replay_dlq() == 1
    assert await _members(q, q.keys.wait) == ["dead"]
    # Not run a second time: still active under its lease, its entry left as it was.
    job = await client.hgetall(q.keys.job("running"))
    assert (job[b"st"], job[b"lt"]) == (b"active", b"7")
    assert await _members(q, q.keys.dlq) == ["running"]
