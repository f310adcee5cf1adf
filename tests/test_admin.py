"""The admin choke point: every administrative command is seen, and can be refused."""

from __future__ import annotations

from typing import Any

import pytest

from helpers import QueueFactory
from kitium_queue import (
    ConfigurationError,
    JobNotFoundError,
    JobQueue,
    JobStateError,
    JobStatus,
    PermissionDeniedError,
    ScheduleNotFoundError,
)
from kitium_queue.hooks import AdminCall, Subscriber


class Audit(Subscriber):
    def __init__(self) -> None:
        self.calls: list[AdminCall] = []
        self.removed_ids: list[str] = []

    def admin(self, call: AdminCall) -> None:
        self.calls.append(call)

    def removed(self, queue: str, job_id: str) -> None:
        self.removed_ids.append(job_id)


async def test_subscriber_sees_every_admin_command(make_queue: QueueFactory) -> None:
    q = make_queue("audited")
    audit = Audit()
    q.subscribe(audit)
    gone = await q.add_job("n", {"secret": "payload"})
    await q.add_job("n", {}, delay=60_000)

    await q.pause()
    await q.resume()
    assert await q.remove_job(gone) is True
    assert await q.remove_job("no-such-job") is False
    with pytest.raises(JobNotFoundError):
        await q.cancel_job("no-such-job")
    with pytest.raises(JobNotFoundError):
        await q.retry_job("no-such-job")
    assert await q.bulk_retry(JobStatus.FAILED, 10) == 0
    assert await q.replay_dlq(5) == 0
    assert await q.promote_delayed(7) == 0
    assert await q.recover_stalled(3) == ([], [])
    assert await q.drain() == 1
    sched = await q.schedule_every("beat", {"secret": "payload"}, 60_000, schedule_id="b")
    await q.update_schedule("b", data={"secret": "other"}, priority=3)
    assert await q.pause_schedule("b") is True
    assert await q.resume_schedule("b") is True
    assert await q.remove_schedule("b") is True
    with pytest.raises(ScheduleNotFoundError):
        await q.update_schedule("b", priority=1)
    await q.clear()

    seen = [(c.command, c.result, type(c.error).__name__ if c.error else None) for c in audit.calls]
    assert seen == [
        ("pause", None, None),
        ("resume", None, None),
        ("remove_job", True, None),
        ("remove_job", False, None),
        ("cancel_job", None, "JobNotFoundError"),
        ("retry_job", None, "JobNotFoundError"),
        ("bulk_retry", 0, None),
        ("replay_dlq", 0, None),
        ("promote_delayed", 0, None),
        ("recover_stalled", ([], []), None),
        ("drain", 1, None),
        ("put_schedule", sched.id, None),
        ("update_schedule", "b", None),
        ("pause_schedule", True, None),
        ("resume_schedule", True, None),
        ("remove_schedule", True, None),
        ("update_schedule", None, "ScheduleNotFoundError"),
        ("clear", None, None),
    ]
    assert all(c.queue == "audited" for c in audit.calls)
    by_command = {c.command: c.args for c in audit.calls}
    assert by_command["remove_job"] == {"job_id": "no-such-job"}
    assert by_command["bulk_retry"] == {"status": JobStatus.FAILED, "limit": 10}
    assert by_command["drain"] == {"delayed": True}
    assert by_command["clear"] == {"force": False}
    assert by_command["update_schedule"] == {"schedule_id": "b", "changes": ["priority"]}
    # Payloads never reach the subscribers: not in the arguments, not in the results.
    assert "payload" not in repr(audit.calls) and "other" not in repr(audit.calls)
    # remove_job also reports the removal itself.
    assert audit.removed_ids == [gone]


async def test_guard_refuses_and_nothing_runs(make_queue: QueueFactory) -> None:
    q = make_queue()
    audit = Audit()
    q.subscribe(audit)
    asked: list[str] = []

    async def read_only(call: AdminCall) -> None:
        asked.append(call.command)
        if call.command in ("remove_job", "clear", "put_schedule", "pause"):
            raise PermissionDeniedError(f"{call.command} is not allowed for this operator")

    q.admin.add_guard(read_only)
    q.admin.add_guard(read_only)  # once only
    jid = await q.add_job("n", {})
    with pytest.raises(PermissionDeniedError, match="remove_job is not allowed"):
        await q.remove_job(jid)
    with pytest.raises(PermissionDeniedError):
        await q.clear(force=True)
    with pytest.raises(PermissionDeniedError):
        await q.pause()
    with pytest.raises(PermissionDeniedError):
        await q.schedule_every("beat", {}, 60_000)
    # The guard runs before the arguments are even checked.
    with pytest.raises(PermissionDeniedError):
        await q.remove_job("\ud800")

    # Nothing of the refused commands ran.
    assert (await q.get_job_status(jid)) is not None
    stats = await q.get_stats()
    assert (stats.waiting, stats.is_paused) == (1, False)
    assert await q.get_schedules() == []
    assert audit.removed_ids == []
    refused = [(c.command, type(c.error).__name__) for c in audit.calls]
    assert refused == [
        ("remove_job", "PermissionDeniedError"),
        ("clear", "PermissionDeniedError"),
        ("pause", "PermissionDeniedError"),
        ("put_schedule", "PermissionDeniedError"),
        ("remove_job", "PermissionDeniedError"),
    ]

    # Allowed commands pass the same guard; a sync guard works too.
    order: list[str] = []
    q.admin.add_guard(lambda call: order.append(call.command))
    assert await q.drain() == 1
    assert asked[-1] == "drain" and order == ["drain"]
    assert audit.calls[-1].command == "drain" and audit.calls[-1].result == 1
    q.admin.remove_guard(read_only)
    await q.pause()
    assert (await q.get_stats()).is_paused


async def test_admin_subscriber_error_never_changes_the_command(
    make_queue: QueueFactory,
) -> None:
    q = make_queue()

    class Broken(Subscriber):
        def admin(self, call: AdminCall) -> None:
            raise RuntimeError("audit sink down")

    q.subscribe(Broken())
    jid = await q.add_job("n", {})
    assert await q.remove_job(jid) is True
    assert await q.get_job_status(jid) is None


def test_guard_must_be_callable() -> None:
    q = JobQueue("q")
    bad: Any = "not callable"
    with pytest.raises(ConfigurationError, match="admin guard must be callable"):
        q.admin.add_guard(bad)


async def test_admin_calls_name_who_ran_them(make_queue: QueueFactory) -> None:
    from kitium_queue import acting_as, current_principal

    q = make_queue()
    audit = Audit()
    q.subscribe(audit)
    seen: list[str | None] = []
    q.admin.add_guard(lambda call: seen.append(call.principal))

    await q.pause()  # nobody named
    with acting_as("alice@acme.com"):
        assert current_principal() == "alice@acme.com"
        await q.resume()
        with acting_as("bob"):
            await q.pause()
        await q.resume()  # the outer block is restored
    q.ctx.principal = "svc-default"
    await q.pause()
    with acting_as("carol"):
        await q.resume()  # a block wins over the queue's default
    assert current_principal() is None
    assert seen == [None, "alice@acme.com", "bob", "alice@acme.com", "svc-default", "carol"]
    assert [c.principal for c in audit.calls] == seen

    # A refused call is reported with its principal too.
    def refuse(call: AdminCall) -> None:
        raise PermissionDeniedError(f"{call.principal} may not {call.command}")

    q.admin.add_guard(refuse)
    with acting_as("mallory"), pytest.raises(PermissionDeniedError, match="mallory may not"):
        await q.drain()
    assert audit.calls[-1].principal == "mallory"
    assert isinstance(audit.calls[-1].error, PermissionDeniedError)


@pytest.mark.parametrize(
    "bad", ["", " alice", "a\x00b", "a\nb", "\ud800", "x" * 257, 7, None, b"alice"]
)
def test_acting_as_refuses_unusable_names(bad: Any) -> None:
    from kitium_queue import acting_as

    with pytest.raises(ConfigurationError, match="principal"), acting_as(bad):
        pass


async def test_promote_job_moves_one_delayed_job(make_queue: QueueFactory) -> None:
    q = make_queue("promote-one")
    audit = Audit()
    q.subscribe(audit)
    later = await q.add_job("n", {}, delay=600_000, priority=5)
    other = await q.add_job("n", {}, delay=600_000)
    waiting = await q.add_job("n", {})
    await q.promote_job(later)
    info = await q.get_job_status(later)
    assert info is not None and info.status is JobStatus.WAITING and info.delayed_until is None
    # Its place in wait is its priority's: ahead of the job that was waiting.
    assert [i.id for i in await q.get_jobs_by_status("waiting")] == [later, waiting]
    assert (await q.get_job_status(other)).status is JobStatus.DELAYED  # type: ignore[union-attr]
    with pytest.raises(JobStateError, match="only delayed jobs can be promoted"):
        await q.promote_job(waiting)
    with pytest.raises(JobNotFoundError):
        await q.promote_job("no-such-job")
    seen = [(c.command, c.args, c.error is None) for c in audit.calls]
    assert seen == [
        ("promote_job", {"job_id": later}, True),
        ("promote_job", {"job_id": waiting}, False),
        ("promote_job", {"job_id": "no-such-job"}, False),
    ]
