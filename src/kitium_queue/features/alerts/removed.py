"""Alert rules no process has any more: removed from the configuration, or renamed.

A rule's record in ``alerts:state`` outlives the configuration that had it. The leader's
evaluation sweeps a bounded part of them each time (``alerts_sweep.lua``, at most
``SWEEP_PAGE`` records, walking the index ``alerts:stored``): a record whose rule the
leader does not have and no running process announced is dropped, and one that was
firing is first cleared, once, as a change like any other (an ``alerts:log`` entry with
``reason`` ``rule-removed``, reported in order through the same reporter: the
``alert-cleared`` event and the webhook). A rule of that name configured again starts
with no record.

Several configurations at once (a rolling deploy, where an old process still has the
rule): every worker process running the alerts' services announces its rules
(``RuleAnnouncer``, ``alerts_announce.lua``: ``alerts:configured``, each rule held
``hold_ms`` = three evaluation intervals plus the leader's lease, renewed every
interval). Only the leader sweeps, and it leaves alone a record whose rule some process
announced: the rule keeps its state while a process that has it runs (evaluated when
one of them leads), and is cleared once after the last of them stopped, so it does not
fire and clear at each change of leader.

A queue configured with no alert rules (``advanced.monitoring.alerts`` empty, or no
``monitoring`` section) has no ``AlertManager``: ``LeftoverSweep`` stands in for its
sweep. At a worker's start it asks Redis once whether the queue holds alert records
(``EXISTS`` of ``alerts:state`` and ``alerts:unreported``); only then does it run the
same leader-only sweep (role ``alerts``, with no rules of its own), until no record and
no unreported change is left, and it stops. While records a running process still
announces are left, it gives up the lead after each lease's length and campaigns
again, so that a process with rules (an ``AlertManager``) can lead and evaluate them.
A queue that never had alerts pays that one check per worker start: no loop, no script,
nothing per job.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ...leader import LeaderService, cancel_and_wait, every
from ...limits import get_logger
from .reports import text

if TYPE_CHECKING:
    from ...queue import JobQueue
    from .manager import AlertManager, AlertTransition

#: The keys whose presence means records to sweep or changes to report.
_LEFT = ("alerts:state", "alerts:unreported")

__all__ = [
    "HOLD_MAX_MS",
    "REASON_REMOVED",
    "SWEEP_PAGE",
    "LeftoverSweep",
    "RemovedRules",
    "RuleAnnouncer",
]

log = get_logger("kitium_queue.features.alerts.manager")

#: Records of ``alerts:state`` the sweep looks at per evaluation, at most.
SWEEP_PAGE = 100
#: The ``reason`` of a clearing because the rule is no longer configured.
REASON_REMOVED = "rule-removed"
#: Longest an announcement holds (``alerts_announce.lua`` clamps to it).
HOLD_MAX_MS = 86_400_000


class RemovedRules:
    """The leader's sweep of the records of removed rules (see the module docstring)."""

    def __init__(self, manager: AlertManager, counter: str) -> None:
        self.manager = manager
        self.counter = counter
        #: Where the walk of ``alerts:stored`` resumes (a rank).
        self.at = 0

    async def sweep(self, term: int) -> list[AlertTransition]:
        """Sweep one page as the leader of ``term``; returns the clearings recorded
        (not yet reported)."""
        from .manager import AlertTransition

        m = self.manager
        reply = await m.queue.run(
            "alerts_sweep",
            [term, self.counter, self.at, SWEEP_PAGE, *(r.name for r in m.rules)],
        )
        kind = text(reply[0])
        if kind == "damaged":
            m._warn_damaged(text(reply[1]), text(reply[2]))
            return []
        if kind != "swept":  # stale: this leader was deposed; nothing written
            return []
        self.at = int(reply[1])
        dropped = int(reply[2])
        out = [
            AlertTransition(
                text(eid), text(rule), "ok", text(metric), "", text(threshold), REASON_REMOVED
            )
            for eid, rule, metric, threshold in reply[3]
        ]
        if dropped:
            log.info(
                "queue %s: alerts: dropped the records of %d rule(s) that no running "
                "process has any more (%d of them firing: cleared)",
                m.queue.name,
                dropped,
                len(out),
            )
        return out


class RuleAnnouncer:
    """A worker service, in every process (not only the leader): announces the rules
    of ``names`` every ``period_ms``, each held ``hold_ms`` (``alerts:configured``)."""

    name = "alerts-rules"

    def __init__(
        self, manager: AlertManager, names: list[str], period_ms: int, hold_ms: int
    ) -> None:
        self.manager = manager
        self.names = names
        self.period_ms = period_ms
        self.hold_ms = min(hold_ms, HOLD_MAX_MS)
        self._task: asyncio.Task[None] | None = None

    async def start(self, queue: JobQueue) -> None:
        if self._task is not None and not self._task.done():
            return  # another worker of this process started it
        what = f"queue {queue.name}: announcing its alert rules"
        self._task = asyncio.get_running_loop().create_task(
            every(self.period_ms, lambda: self.announce(queue), what),
            name=f"kq-alerts-rules-{queue.name}",
        )

    async def stop(self) -> None:
        # The announcement is left to end by itself: another process that has the
        # rules may still run, and withdrawing them would let the leader clear them.
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def announce(self, queue: JobQueue) -> None:
        reply: Any = await queue.run("alerts_announce", [self.hold_ms, *self.names])
        if text(reply[0]) == "damaged":
            self.manager._warn_damaged(text(reply[1]), text(reply[2]))


class LeftoverSweep:
    """A worker service of a queue configured with no alert rules: clears, once, the
    alerts its earlier configurations left firing (see the module docstring).

    Args:
        interval_ms: how often the leader sweeps while records are left.
        webhook_event: the webhook event name the clearings are sent as (None: none).
        lease_ms: the leader's lease (role ``alerts``, shared with ``AlertManager``).

    ``checks`` counts the checks made at worker starts; ``leader`` is the leader service
    of the sweep under way (None when none runs).
    """

    name = "alerts-leftovers"

    def __init__(self, *, interval_ms: int, webhook_event: str | None, lease_ms: int) -> None:
        self.interval_ms = interval_ms
        self.webhook_event = webhook_event
        self.lease_ms = lease_ms
        self.checks = 0
        self.leader: LeaderService | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def sweeping(self) -> bool:
        """A sweep runs in this process (campaigning for the lead, or leading)."""
        return self._task is not None and not self._task.done()

    async def start(self, queue: JobQueue) -> None:
        from .manager import AlertManager

        if self.sweeping or AlertManager.of(queue) is not None:
            return  # under way (another worker of this process), or a manager sweeps
        self.checks += 1
        try:
            found = await self._left(queue)
        except Exception as exc:  # unreachable, refused: checked at the next start
            log.warning(
                "queue %s: alerts: could not tell whether alerts of removed rules are "
                "left (%s); checked again at the next worker start",
                queue.name,
                type(exc).__name__,
            )
            return
        if not found:
            return
        log.info(
            "queue %s: alerts: no alert rule is configured, but records of earlier ones "
            "are left: clearing them (leader only), then the sweep stops",
            queue.name,
        )
        self._task = asyncio.get_running_loop().create_task(
            self._run(queue), name=f"kq-alerts-leftovers-{queue.name}"
        )

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    @staticmethod
    async def _left(queue: JobQueue) -> bool:
        client = await queue.client()
        return bool(await client.exists(*(queue.keys.extra(k) for k in _LEFT)))

    async def _run(self, queue: JobQueue) -> None:
        from .manager import ROLE, sweeper

        m = sweeper(queue, interval_ms=self.interval_ms, webhook_event=self.webhook_event)
        done = asyncio.Event()

        async def body(term: int) -> None:
            # What a leader that died recorded and did not report goes out first.
            m._reporter.behind = True
            walked = asyncio.Event()

            async def step() -> None:
                await m.evaluate(term)
                if not await self._left(queue):
                    done.set()
                elif m._removed.at == 0:  # a whole walk made: the rest is held
                    walked.set()

            run = asyncio.ensure_future(
                every(m.interval_ms, step, f"queue {queue.name}: alerts of removed rules")
            )
            try:
                # What is left, a running process still has: after a lease's length the
                # lead is given up (campaigned for again), so that a process with rules
                # can lead and evaluate them; otherwise they would go unevaluated for as
                # long as this sweep runs.
                await asyncio.sleep(self.lease_ms / 1000)
                await walked.wait()
            finally:
                await cancel_and_wait(run)

        leader = self.leader = LeaderService(ROLE, body, lease_ms=self.lease_ms)
        await leader.start(queue)
        try:
            await done.wait()
        finally:
            await leader.stop()  # the body cancelled, then the lease released
            self.leader = None
        log.info(
            "queue %s: alerts: the alerts of removed rules are cleared; the sweep stopped",
            queue.name,
        )
