"""Read guards of the core (``queue.queries.add_guard``, ``guards.py``): every read of
job data and counts passes them first, with the principal acting; a guard refuses by
raising and then nothing is read. The library's own reads on the application's behalf
do not pass them."""

from __future__ import annotations

from typing import Any

import pytest

from helpers import QueueFactory
from kitium_queue import acting_as
from kitium_queue.errors import ConfigurationError, PermissionDeniedError
from kitium_queue.guards import GuardList, ReadCall


async def test_every_read_passes_the_guards_with_its_arguments(make_queue: QueueFactory) -> None:
    q = make_queue("q", principal="svc")
    jid = await q.add_job("j", {})
    seen: list[ReadCall] = []

    async def guard(call: ReadCall) -> None:
        seen.append(call)

    q.queries.add_guard(guard)
    q.queries.add_guard(guard)  # twice: once
    await q.get_job_status(jid)
    await q.get_job_detail(jid)
    await q.get_job_logs(jid, 0, 5)
    await q.get_jobs_by_status("waiting", limit=3, offset=1)
    await q.list_jobs("waiting", limit=2)
    await q.get_stats()
    await q.get_dlq_jobs(7)
    async for _ in q.events(last_id="0", follow=False, block_ms=10):
        pass
    await q.get_schedules()
    with acting_as("alice"):
        await q.get_schedule("s1")
    assert [c.query for c in seen] == [
        "get_job_status", "get_job_detail", "get_job_logs", "get_jobs_by_status",
        "list_jobs", "get_stats", "get_jobs_by_status", "events", "get_schedules",
        "get_schedule",
    ]  # fmt: skip
    assert seen[2].args == {"job_id": jid, "start": 0, "end": 5}
    assert seen[6].args == {"status": "dlq", "limit": 7, "offset": 0}
    assert {c.queue for c in seen} == {"q"}
    assert [c.principal for c in seen] == ["svc"] * 9 + ["alice"]


async def test_a_refusing_guard_stops_the_read_and_can_be_removed(
    make_queue: QueueFactory,
) -> None:
    q = make_queue("q")
    jid = await q.add_job("j", {})
    order: list[str] = []

    def first(call: ReadCall) -> None:  # a sync guard
        order.append("first")

    def refuse(call: ReadCall) -> None:
        order.append("refuse")
        raise PermissionDeniedError(f"no {call.query}")

    def never(call: ReadCall) -> None:  # after the refusal: not called
        order.append("never")

    for g in (first, refuse, never):
        q.queries.add_guard(g)
    assert q.queries.guards == (first, refuse, never)
    with pytest.raises(PermissionDeniedError, match="no get_job_status"):
        await q.get_job_status(jid)
    assert order == ["first", "refuse"]
    q.queries.remove_guard(refuse)
    assert (await q.get_job_status(jid)) is not None
    # The library's own read on the application's behalf is not guarded.
    q.queries.add_guard(refuse)
    assert (await q.queries.job_status(jid)) is not None


def test_guards_must_be_callable() -> None:
    guards: GuardList[Any] = GuardList("read guard")
    with pytest.raises(ConfigurationError, match="read guard must be callable"):
        guards.add(42)  # type: ignore[arg-type]
    assert not guards


async def test_the_queue_principal_is_checked(make_queue: QueueFactory) -> None:
    with pytest.raises(ConfigurationError, match="control or format character"):
        make_queue("q", principal="bad\x00name")
    assert make_queue("q2", principal="alice").ctx.principal == "alice"
    assert make_queue("q3").ctx.principal is None
