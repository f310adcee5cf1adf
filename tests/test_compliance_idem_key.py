"""Erasure takes a job's idempotency key (``idem:<key>``, the engine's own: its text is
the application's and may name the subject) with the job, also on a queue without
effectively-once; a key a later job took is left to that job."""

from __future__ import annotations

import pytest

from helpers import QueueFactory


@pytest.mark.parametrize("exactly_once", [False, True])
async def test_erasure_takes_the_jobs_idempotency_key(
    make_queue: QueueFactory, exactly_once: bool
) -> None:
    advanced = {"compliance": {"enabled": True}}
    if exactly_once:
        advanced["exactly_once"] = {"enabled": True}
    q = make_queue("idemkey", advanced=advanced)
    client = await q.client()
    mine = await q.add_job("x", {}, subject_id="alice", idempotency_key="order-alice-1")
    other = await q.add_job("x", {}, subject_id="bob", idempotency_key="order-bob-1")
    key_a, key_b = q.keys.base + "idem:order-alice-1", q.keys.base + "idem:order-bob-1"
    assert await client.get(key_a) == mine.encode()
    report = await q.advanced.compliance.erase_subject("alice")
    assert report.jobs == 1
    assert await client.exists(key_a) == 0
    assert await client.get(key_b) == other.encode()  # another subject's key stays
    # The key is free again: a new job under it is a new job, not the erased one.
    again = await q.add_job("x", {}, subject_id="alice", idempotency_key="order-alice-1")
    assert again != mine


async def test_a_key_another_job_holds_is_left_to_it(make_queue: QueueFactory) -> None:
    q = make_queue("idemheld", advanced={"compliance": {"enabled": True}})
    client = await q.client()
    first = await q.add_job("x", {}, subject_id="alice", idempotency_key="shared-1")
    key = q.keys.base + "idem:shared-1"
    # The key moved on to a later job (set by hand here, as a window that ended and a
    # new job under the same key would leave it).
    await client.set(key, "someone-else")
    await q.advanced.compliance.erase_subject("alice")
    assert await q.get_job_status(first) is None
    assert await client.get(key) == b"someone-else"
