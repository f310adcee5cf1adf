"""A queue with alert rules whose ``close()`` never returned.

Before Python 3.12, ``asyncio.wait_for`` drops a cancel that lands as what it waits for
ends (gh-86296), and redis-py writes each command under ``wait_for``. The worker's stop
cancelled the alert rules' announcer (a loop, ``leader.every``) once; when that cancel
landed as an announcement's write ended, the call took it for its reply, the loop went
on announcing, and the stop (``leader.cancel_and_wait``) waited for it for ever: the
README's alerts example hung in ``await queue.close()`` after its alert fired, on a
busy machine. The stop now cancels a task that runs on again until it ends, and
``every`` ends at once when its task's cancel was dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest
from fakeredis.aioredis import FakeAsyncRedisConnection

from helpers import QueueFactory
from kitium_queue import JobQueue
from kitium_queue.features.alerts.removed import RuleAnnouncer
from kitium_queue.leader import cancel_and_wait, every

#: Long enough for any stop on a busy machine; the hang was for ever.
STOP_S = 20.0

MONITORING = {
    "monitoring": {
        "enabled": True,
        "evaluation_interval_ms": 100,
        "alerts": [{"name": "backlog", "metric": "queue_depth", "threshold": 3}],
    }
}


def _announcer(q: JobQueue) -> RuleAnnouncer:
    (svc,) = [s for s in q.services if isinstance(s, RuleAnnouncer)]
    return svc


async def _ended(task: asyncio.Future[Any], stubborn: asyncio.Task[Any] | None) -> bool:
    """Whether ``task`` ends within ``STOP_S``; if not, ``stubborn`` is cancelled until
    it ends (so that a failing test still finishes its stop) and False returned."""
    done, _ = await asyncio.wait({task}, timeout=STOP_S)
    if done:
        return True
    while stubborn is not None and not stubborn.done():
        stubborn.cancel()
        await asyncio.wait({stubborn}, timeout=0.25)
    await asyncio.wait({task}, timeout=STOP_S)
    return False


async def test_close_ends_when_the_announcements_call_drops_the_stops_cancel(
    make_queue: QueueFactory,
) -> None:
    """The cancel of the stop lands in an announcement's call, which returns its reply
    instead (what ``wait_for`` does in the race): the stop still ends."""
    q = make_queue("hang", worker={"scheduler": False}, advanced=MONITORING)
    entered = asyncio.Event()
    real_run = q.run
    armed = True

    async def run(script: str, args: Sequence[Any] = ()) -> Any:
        nonlocal armed
        if script != "alerts_announce" or not armed:
            return await real_run(script, args)
        armed = False
        reply = await real_run(script, args)
        entered.set()
        # Until the stop's cancel, taken for the reply (as wait_for does when both land
        # together).
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.get_running_loop().create_future()
        return reply

    q.run = run  # type: ignore[method-assign]
    await q.start()
    await asyncio.wait_for(entered.wait(), STOP_S)
    announcer = _announcer(q)._task
    closing = asyncio.ensure_future(q.close())
    assert await _ended(closing, announcer), "close() hung on the announcer's stop"
    closing.result()
    assert announcer is not None and announcer.done()


async def test_close_ends_when_redis_py_write_drops_the_stops_cancel(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race itself, on the memory:// backend: the stop's cancel lands while an
    announcement's write, under redis-py's ``wait_for``, ends (Python < 3.12 drops the
    cancel there; later ones raise it, and this passes as it is)."""
    q = JobQueue(
        "hang", redis=f"memory://{prefix}", prefix=prefix, worker={"scheduler": False},
        advanced=MONITORING,
    )  # fmt: skip
    sha = q.scripts.get("alerts_announce").sha.encode()
    real_send = FakeAsyncRedisConnection._send_packed_command
    state: dict[str, Any] = {"armed": False, "closing": None}

    async def send(self: Any, command: Any) -> None:
        await real_send(self, command)
        if not state["armed"] or sha not in b"".join(bytes(c) for c in command):
            return
        state["armed"] = False
        # The write has ended; the stop starts now and cancels the announcer (waiting on
        # this write) before wait_for sees the write done.
        announcer = _announcer(q)._task
        assert announcer is not None
        state["closing"] = asyncio.ensure_future(q.close())
        loop = asyncio.get_running_loop()
        give_up = loop.time() + STOP_S
        while not announcer.cancelling() and loop.time() < give_up:
            await asyncio.sleep(0)

    monkeypatch.setattr(FakeAsyncRedisConnection, "_send_packed_command", send)
    try:
        await q.start()
        announcer = _announcer(q)._task
        assert announcer is not None
        state["armed"] = True
        loop = asyncio.get_running_loop()
        give_up = loop.time() + STOP_S
        while state["closing"] is None and loop.time() < give_up:
            await asyncio.sleep(0.01)
        closing = state["closing"]
        assert closing is not None, "no announcement was written"
        assert await _ended(closing, announcer), "close() hung on the announcer's stop"
        closing.result()
        assert announcer.done()
    finally:
        await q.close()


class _DroppingStep:
    """A loop's step whose first call drops the cancel that ends its wait."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1
        if self.calls == 1:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.get_running_loop().create_future()

    async def started(self, loop: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(loop())
        while self.calls == 0:
            await asyncio.sleep(0)
        return task


async def test_cancel_and_wait_ends_a_task_whose_call_dropped_the_cancel() -> None:
    step = _DroppingStep()

    async def forever() -> None:
        while True:  # not every(): a loop of its own, which never looks
            await step()
            await asyncio.sleep(0.01)

    task = await step.started(forever)
    stopping = asyncio.ensure_future(cancel_and_wait(task))
    assert await _ended(stopping, task), "cancel_and_wait hung on a dropped cancel"
    assert task.cancelled()


@pytest.mark.skipif(sys.version_info < (3, 11), reason="Task.cancelling() is 3.11+")
async def test_every_ends_when_its_steps_call_dropped_the_cancel() -> None:
    step = _DroppingStep()
    task = await step.started(lambda: every(10, step, "test loop"))
    task.cancel()  # once, as a stop that never cancels again would
    done, _ = await asyncio.wait({task}, timeout=STOP_S)
    while not task.done():  # the test ends its loop either way
        task.cancel()
        await asyncio.wait({task}, timeout=0.25)
    assert done, "every() ran on after its cancel was dropped"
    assert step.calls == 1


@pytest.mark.parametrize("what", ["tenancy sync", "audit refusal timer"])
async def test_feature_loops_stop_when_their_call_dropped_the_cancel(
    monkeypatch: pytest.MonkeyPatch, what: str
) -> None:
    """The tenants' quota copy loop and the audit log's refusal-count timer stopped
    with one cancel and an await: a call of theirs that took the cancel for its reply
    left the stop waiting for ever (the loop slept and went round)."""
    step = _DroppingStep()
    if what == "tenancy sync":
        from kitium_queue.features.tenancy import install as tenancy

        async def attach(queue: Any) -> Any:
            await step()
            return None, [], {}

        async def heal(queue: Any, names: Any) -> None:
            return None

        monkeypatch.setattr(tenancy, "_attach", attach)
        monkeypatch.setattr(tenancy, "heal_tenants", heal)
        service = tenancy._Sync(0.01)
        await service.start(object())
        stop: Callable[[], Awaitable[None]] = service.stop
        running = service._task
    else:
        from kitium_queue.features.audit.refusals import RefusalBound

        counts = RefusalBound.__new__(RefusalBound)
        counts._held = {}

        async def timer() -> None:
            while True:
                await step()
                await asyncio.sleep(0.01)

        running = await step.started(timer)
        counts._timer = running
        stop = counts.close
    while step.calls == 0:
        await asyncio.sleep(0)
    stopping = asyncio.ensure_future(stop())
    assert await _ended(stopping, running), f"the {what} never stopped"
