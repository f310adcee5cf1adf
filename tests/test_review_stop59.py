"""Defects found in the process-wide cache of composed scripts, the failure-text
filters and the webhooks' secrets store, each against a real Redis where one is
involved."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import redis.asyncio as aioredis

import test_encryption
from helpers import QueueFactory, wait_for_status
from kitium_queue import JobStatus
from kitium_queue.scripts import ScriptRegistry

ACCEPT = "function(id, name, opts, state) return nil end"


rq = test_encryption.rq  # queues on the real Redis


def test_a_composition_changed_during_an_expansion_is_not_cached_under_the_old_one() -> None:
    # Thread A composes ``enqueue`` for a registry whose composition is C0 (a distinct
    # fragment, so that no earlier test cached it); while it expands, thread B adds a
    # slot fragment. A's text must not be kept under C0's key: a later registry with
    # C0 would get a script with the slot it never had.
    c0 = "-- review-stop59 composition marker\n"
    fresh = ScriptRegistry()
    fresh.add_fragment("lib_review59", c0)
    expected = fresh._expand(
        fresh._fragments.get("enqueue") or _read("enqueue"), {"enqueue"}, fresh._slots.flags()
    )

    reg = ScriptRegistry()
    reg.add_fragment("lib_review59", c0)
    slots = reg._slots
    entered, go_on = threading.Event(), threading.Event()
    real = slots.apply_directives

    def slow(source: str, flags: frozenset[str]) -> str:
        entered.set()
        assert go_on.wait(10)
        return real(source, flags)

    slots.apply_directives = slow  # type: ignore[method-assign]
    got: list[Any] = []
    a = threading.Thread(target=lambda: got.append(reg.get("enqueue")))
    a.start()
    assert entered.wait(10)
    reg.add_slot("accept", "review59", ACCEPT)  # thread B (here) changes the composition
    go_on.set()
    a.join(10)
    slots.apply_directives = real  # type: ignore[method-assign]

    # A registry with composition C0 gets C0's text, never the one with the slot.
    again = ScriptRegistry()
    again.add_fragment("lib_review59", c0)
    assert again.get("enqueue").source == expected
    assert "review59" not in again.get("enqueue").source
    # And the registry that changed composes with its slot from now on.
    assert "review59" in reg.get("enqueue").source


def _read(name: str) -> str:
    from kitium_queue.scripts import _read as read

    return read(name)


async def test_a_failure_text_filter_answering_huge_texts_is_bounded(
    rq: QueueFactory, redis_client: aioredis.Redis
) -> None:
    # A filter that answers megabytes (a bug: doubling, appending the payload) must not
    # put megabytes on the job: the texts are bounded before they reach Redis, and the
    # filter fails closed.
    q = rq("huge", worker={"concurrency": 1})

    def bloat(job: Any, exc: BaseException | None, reason: bytes, tb: bytes) -> tuple[bytes, bytes]:
        return reason * 2000, tb * 200

    q.failure_text_filters.append(bloat)

    @q.process("boom")
    async def boom(job: Any) -> Any:
        raise ValueError("x" * 100)

    job_id = await q.add_job("boom", {}, attempts=1)
    await q.start()
    await wait_for_status(q, job_id, JobStatus.FAILED, JobStatus.DLQ)
    e, tb = await redis_client.hmget(q.keys.job(job_id), "e", "tb")
    assert e is not None and len(e) < 64 * 1024
    assert tb is None or len(tb) < 256 * 1024
    assert b"withheld" in e and b"bloat" in e


async def test_a_source_hanging_for_one_webhook_does_not_starve_the_others() -> None:
    # A plain source that hangs for one webhook id: each delivery's look-up times out,
    # and the retries ask again. Those calls must not take every thread of the source,
    # or the look-ups of every other webhook wait behind them and time out too.
    from kitium_queue.features.webhooks import SecretSourceError, SecretStore, generate_secret

    secret = generate_secret()
    release = threading.Event()
    calls: list[str] = []

    def vault(webhook_id: str) -> str:
        calls.append(webhook_id)
        if webhook_id == "stuck":
            release.wait(30)
        return secret

    store = SecretStore(vault, cache_s=0, timeout_s=0.1)
    try:
        for _ in range(12):  # a dozen retries of the stuck webhook's delivery
            with pytest.raises(SecretSourceError, match="took longer"):
                await store.fetch("stuck")
        assert len(await store.fetch("ok")) == 1
        assert calls.count("stuck") == 1  # one call under way for it, shared by retries
    finally:
        release.set()
