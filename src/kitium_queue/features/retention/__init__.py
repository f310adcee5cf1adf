"""Retention limits and periods of finished jobs, enforced by a leader-only service.

``Retention(queue)`` (one per queue; ``Retention.of(queue)`` finds it) holds rules per
finished state (``completed``, ``failed``, ``dlq``), each a ``StateRule``:

* a **limit** (cost optimization): keep at most ``count`` jobs of the state and none
  older than ``age_ms``; jobs beyond it are deleted the ordinary way (hash and log, as
  ``remove_on_complete`` does: an exactly-once result kept under its key outlives the
  job until the key's window ends);
* a **period** (compliance): no job stays in the state longer than ``period_ms``; jobs
  past it are *erased*: their hash and log and, through the ``erase`` Lua slot, every
  copy features keep (a stored exactly-once result and its key, a workflow's copy of
  the result, the subject index entry). Entries of the durable event stream older than
  the shortest period go too (they name the jobs, their failure reasons and small
  progress values), physically: the stream is rewritten without them (``stream.py``).

A ``LeaderService`` (``retention``) applies the rules every ``interval_ms`` in one
worker process of the queue, in calls of at most ``batch`` jobs (each call atomic,
``purge.lua``). ``run_once()`` applies them now, from any process. The time a job
entered its state is its score in the state's set (finish time, dead-letter time).

Limits also become the queue's default ``remove_on_complete`` / ``remove_on_fail``
(``apply_defaults``), so the worker trims on the hot path and the service only catches
up with age limits while the queue is idle and with the DLQ, which nothing else trims.
A job's own ``remove_on_complete`` can shorten its stay; no job outlives a rule by
more than one interval of the service.
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import TYPE_CHECKING, Any

from ...damage import explain_damage
from ...errors import ConfigurationError, DamagedKeyError
from ...leader import LeaderService, every
from ...limits import get_logger
from ...options import MAX_COUNT, RetentionPolicy, to_int, to_ms
from .stream import install_swap, rewrite_events

if TYPE_CHECKING:
    from ...queue import JobQueue

__all__ = ["STATES", "Retention", "RetentionReport", "StateRule"]

log = get_logger(__name__)

#: The states rules apply to.
STATES = ("completed", "failed", "dlq")
_SCRIPT = "retention_purge"
_INSTALLED: weakref.WeakKeyDictionary[Any, Retention] = weakref.WeakKeyDictionary()


@dataclass(frozen=True, slots=True)
class StateRule:
    """The rule of one state: ``count`` / ``age_ms`` (a limit: ordinary deletion) and
    ``period_ms`` (a compliance period: erasure). None: no such bound."""

    count: int | None = None
    age_ms: int | None = None
    period_ms: int | None = None

    @property
    def empty(self) -> bool:
        return self.count is None and self.age_ms is None and self.period_ms is None

    def to_dict(self) -> dict[str, int | None]:
        return {"count": self.count, "age_ms": self.age_ms, "period_ms": self.period_ms}


@dataclass(frozen=True, slots=True)
class RetentionReport:
    """What one pass deleted: ``deleted`` (limits) and ``erased`` (periods) per state,
    and ``events_trimmed`` (stream entries older than the shortest period); ``damaged``:
    the errors naming keys damaged outside kitium-queue that the pass skipped (a state
    set, the event stream; the rest of the pass went on)."""

    deleted: dict[str, int]
    erased: dict[str, int]
    events_trimmed: int
    damaged: tuple[str, ...] = field(default=())

    @property
    def total(self) -> int:
        return sum(self.deleted.values()) + sum(self.erased.values())


class Retention:
    """Retention rules of one queue and the service that enforces them.

    Args:
        queue: the queue.
        interval_ms: how often the leader applies the rules (default 60 s).
        batch: most jobs one script call deletes (1..1000).
        run_service: run the leader-only service alongside this process's workers.
    """

    def __init__(
        self,
        queue: JobQueue,
        *,
        interval_ms: Any = 60_000,
        batch: int = 500,
        run_service: bool = True,
    ) -> None:
        if queue in _INSTALLED:
            raise ConfigurationError(
                f"queue {queue.name!r} already has retention rules; use Retention.of(queue)"
            )
        self.queue = queue
        self.interval_ms = to_ms(interval_ms, "retention interval_ms", minimum=10)
        self.batch = to_int(batch, "retention batch", minimum=1, maximum=1000)
        self.rules: dict[str, StateRule] = {s: StateRule() for s in STATES}
        self.passes = 0
        self._steps: list[Callable[[], Awaitable[Any]]] = []
        src = resources.files(__package__).joinpath("purge.lua").read_text("utf-8")
        queue.scripts.add_fragment(_SCRIPT, src)
        install_swap(queue)
        if run_service:
            queue.add_service(LeaderService("retention", self._serve))
        _INSTALLED[queue] = self

    @classmethod
    def of(cls, queue: JobQueue) -> Retention | None:
        """The retention rules installed on ``queue`` in this process, if any."""
        return _INSTALLED.get(queue)

    @classmethod
    def for_queue(cls, queue: JobQueue, **kwargs: Any) -> Retention:
        """The installed rules of ``queue``, or new ones (with ``kwargs``)."""
        got = _INSTALLED.get(queue)
        return got if got is not None else cls(queue, **kwargs)

    # ------------------------------------------------------------------ rules
    def set_limit(self, state: str, *, count: Any = None, age_ms: Any = None) -> None:
        """Keep at most ``count`` jobs of ``state`` and none older than ``age_ms``."""
        st = _state(state)
        c = None if count is None else to_int(count, f"{st} count", minimum=0, maximum=MAX_COUNT)
        a = None if age_ms is None else to_ms(age_ms, f"{st} age_ms")
        self.rules[st] = replace(self.rules[st], count=c, age_ms=a)

    def set_period(self, state: str, period_ms: Any) -> None:
        """Erase jobs that have been in ``state`` longer than ``period_ms`` (None: no
        period)."""
        st = _state(state)
        p = None if period_ms is None else to_ms(period_ms, f"{st} retention period", minimum=1)
        self.rules[st] = replace(self.rules[st], period_ms=p)

    def add_step(self, step: Callable[[], Awaitable[Any]]) -> None:
        """Run ``await step()`` at the end of every pass (a feature's own housekeeping
        that goes with retention: the compliance feature drops index entries of jobs
        deleted meanwhile). Adding the same step twice is a no-op."""
        if not any(s is step for s in self._steps):
            self._steps.append(step)

    @property
    def shortest_period_ms(self) -> int | None:
        """The shortest compliance period of any state (None: no period)."""
        periods = [r.period_ms for r in self.rules.values() if r.period_ms is not None]
        return min(periods) if periods else None

    def apply_defaults(self) -> None:
        """Make the limits the queue's default retention of completed and failed jobs,
        trimmed by the worker as jobs finish (a tighter default already set stays).
        Periods are not: only the service erases, so that every copy goes too."""
        q = self.queue
        for state, attr in (("completed", "keep_completed"), ("failed", "keep_failed")):
            r = self.rules[state]
            if r.count is None and r.age_ms is None:
                continue
            cur: RetentionPolicy = getattr(q.policy, attr)
            count, age = cur.count, cur.age
            if r.count is not None:
                count = r.count if count < 0 else min(count, r.count)
            if r.age_ms is not None:
                age = r.age_ms if age < 0 else min(age, r.age_ms)
            setattr(q.policy, attr, RetentionPolicy(count, age))

    # ------------------------------------------------------------------ enforcement
    async def _purge(self, state: str, count: int, age: int, mode: str) -> int:
        total = 0
        while True:
            n, more = await self.queue.run(_SCRIPT, [state, count, age, mode, self.batch])
            total += int(n)
            if not int(more):
                return total

    async def run_once(self) -> RetentionReport:
        """Apply every rule now (any process may; the leader does it every interval)."""
        deleted: dict[str, int] = {}
        erased: dict[str, int] = {}
        damaged: list[str] = []
        # A key damaged by hand skips its own part of the pass, named (logged and in the
        # report), never the other states, the stream trim or the steps.
        for state, rule in self.rules.items():
            try:
                if rule.period_ms is not None:
                    erased[state] = await self._purge(state, -1, rule.period_ms, "erase")
                if rule.count is not None or rule.age_ms is not None:
                    count = -1 if rule.count is None else rule.count
                    age = -1 if rule.age_ms is None else rule.age_ms
                    deleted[state] = await self._purge(state, count, age, "delete")
            except DamagedKeyError as exc:
                damaged.append(str(exc))
        trimmed = 0
        shortest = self.shortest_period_ms
        if shortest is not None:
            try:
                trimmed = await self._trim_events(shortest)
            except Exception as exc:
                err = await explain_damage(await self.queue.client(), self.queue.keys.all, exc)
                if not isinstance(err, DamagedKeyError):
                    raise
                damaged.append(str(err))
        for step in self._steps:
            await step()
        self.passes += 1
        for text in damaged:
            log.error("queue %s: retention skipped a damaged key: %s", self.queue.name, text)
        return RetentionReport(deleted, erased, trimmed, tuple(damaged))

    async def _trim_events(self, period_ms: int) -> int:
        """Remove the stream entries older than ``period_ms``, physically (a rewrite,
        ``stream.py``: XTRIM only marks entries deleted), when there are any."""
        client = await self.queue.client()
        key = self.queue.keys.events
        now_s, now_us = await client.time()
        cut = int(now_s) * 1000 + int(now_us) // 1000 - period_ms
        first = await client.xrange(key, count=1)
        if cut <= 0 or not first or int(_text(first[0][0]).split("-")[0]) >= cut:
            return 0
        before = int(await client.xlen(key))
        await rewrite_events(self.queue, min_id=f"{cut}-0")
        return max(0, before - int(await client.xlen(key)))

    async def _pass(self) -> None:
        report = await self.run_once()
        if report.total:
            log.info(
                "queue %s: retention deleted %s, erased %s",
                self.queue.name,
                report.deleted,
                report.erased,
            )

    async def _serve(self, term: int) -> None:
        await every(self.interval_ms, self._pass, f"queue {self.queue.name}: retention pass")

    def to_dict(self) -> dict[str, Any]:
        """The rules per state and the service's interval (for ``config show``)."""
        return {
            "interval_ms": self.interval_ms,
            "states": {s: r.to_dict() for s, r in self.rules.items() if not r.empty},
        }


def _text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _state(value: Any) -> str:
    if value not in STATES:
        raise ConfigurationError(
            f"retention applies to the finished states {', '.join(STATES)}, got {value!r:.40}"
        )
    return str(value)
