"""``AlertManager``: alert rules on one queue, evaluated by a leader-only service.

Every ``interval_ms`` the process that leads the role ``alerts`` (``LeaderService``)
reads the figures the rules watch in one atomic script call (``alerts_probe.lua``:
waiting jobs, the oldest waiting job, dead-letterings and run outcomes per window; open
breakers through the breakers' own API) and moves each rule between ``ok`` and
``firing``:

* it **fires** when its value is at or above ``threshold`` (for ``for_ms`` in a row);
* it **clears** when the value falls below ``clear_below`` (default: the threshold).

Each change is recorded once, in Redis, fenced by the leader's term
(``alerts_state.lua``: state per rule in ``alerts:state``, every change in the stream
``alerts:log``, its id in ``alerts:unreported`` until it is reported), so a new leader
neither repeats a change nor misses one, and then reported in the leading process, in
the order recorded (``reports.py``: a change whose leader died before it was reported
is reported by the next leader, at the start of its term, under the same id; a webhook
that could not be handed over is sent again, before later ones, at the next
evaluation):

* as a ``FeatureEvent`` (feature ``alerts``, name ``alert-fired`` or ``alert-cleared``,
  subject the rule's name; fields ``metric``, ``value``, ``threshold``, ``state``;
  ``event_id`` the log entry's id) through the ``feature_event`` hook, so
  ``queue.on("alert-fired", ...)`` handlers get it;
* as a webhook event when the queue has a ``WebhookManager`` and ``webhook_event`` is
  set (default ``queue-alert``): endpoints subscribed to that event name receive
  ``{"rule", "state", "metric", "value", "threshold", "queue"}`` (and ``reason`` on
  a clearing of a removed rule, below), with the id
  ``alert_<log entry id>`` (receivers deduplicate on it).

A rule removed from the configuration (or renamed) while it fires is cleared once by the
leader, with ``reason`` ``rule-removed``, and its record dropped, unless a running
process still has it (a rolling deploy): ``removed.py`` (which also clears them on a
queue configured with no rules at all, where no ``AlertManager`` is made).

Run outcomes (for ``failure_rate``) are counted by a ``release`` slot fragment into
buckets of ``BUCKET_MS`` (``alerts:o:<bucket>``), installed only when a rule watches
them.
"""

from __future__ import annotations

import math
import operator
import re
import time
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from ...errors import ConfigurationError
from ...leader import LeaderService, every
from ...limits import get_logger
from ...options import shown, to_ms
from .removed import HOLD_MAX_MS, RemovedRules, RuleAnnouncer
from .reports import FEATURE, AlertReporter, transition, wrong_type
from .reports import text as _text
from .rules import (
    GAUGE_METRICS,
    MAX_WINDOW_MS,
    MAX_WINDOWS,
    WINDOW_METRICS,
    AlertRule,
    parse_rule,
)

if TYPE_CHECKING:
    from ...queue import JobQueue

__all__ = ["BUCKET_MS", "FEATURE", "AlertManager", "AlertState", "AlertTransition"]

log = get_logger(__name__)

#: The leader role evaluating the rules; its term counter (``leader.py``) is what
#: ``alerts_state.lua`` checks a recorded term against.
ROLE = "alerts"
_TERM_COUNTER = f"leader:{ROLE}:term"
#: Width of an outcome bucket (ms).
BUCKET_MS = 5000
_SCRIPTS = ("alerts_probe", "alerts_state", "alerts_sweep", "alerts_announce")
_MS = re.compile(r"[0-9]{1,15}")
_INSTALLED: weakref.WeakKeyDictionary[Any, AlertManager] = weakref.WeakKeyDictionary()

_RELEASE = f"""(function()
  -- Alerts (kitium_queue.features.alerts): count how runs end, per bucket of
  -- {BUCKET_MS} ms, for the failure_rate rules (alerts_probe.lua sums them).
  local B, TTL = {BUCKET_MS}, {MAX_WINDOW_MS + 2 * BUCKET_MS}
  local F = {{ completed = 'c', retrying = 'r', failed = 'f' }}
  return function(id, jk, outcome, payload)
    local f = F[outcome]
    if not f then return end
    local k = PREFIX .. 'alerts:o:' .. int(math.floor(NOW / B))
    if redis.call('HINCRBY', k, f, 1) == 1 then redis.call('PEXPIRE', k, TTL) end
  end
end)()"""


def _lua(name: str) -> str:
    return resources.files(__package__).joinpath(f"{name}.lua").read_text("utf-8")


@dataclass(frozen=True, slots=True)
class AlertState:
    """A rule's recorded state: ``ok`` or ``firing`` since ``since_ms``, with the value
    last seen by the leader (``None``: never evaluated); ``unknown`` when the key of
    the states (``alerts:state``) was overwritten with another type of key, or the
    rule's record there with something that is no state (its figures are then None
    when they do not read as a time and a finite value)."""

    rule: str
    state: str
    since_ms: int | None
    value: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "state": self.state,
            "since_ms": self.since_ms,
            "value": self.value,
        }


@dataclass(frozen=True, slots=True)
class AlertTransition:
    """One recorded change (an entry of ``alerts:log``). ``reason`` is empty for a
    change of the value, ``rule-removed`` for a clearing because no running process
    has the rule any more (``value`` then empty: it was not read)."""

    id: str
    rule: str
    state: str
    metric: str
    value: str
    threshold: str
    reason: str = ""

    def to_dict(self) -> dict[str, str]:
        return {
            "id": self.id,
            "rule": self.rule,
            "state": self.state,
            "metric": self.metric,
            "value": self.value,
            "threshold": self.threshold,
            "reason": self.reason,
        }


class AlertManager:
    """Alert rules of one queue (see the module docstring).

    Args:
        queue: the queue.
        rules: ``AlertRule`` s (or dicts of their fields).
        interval_ms: how often the leader evaluates them (default 5 s).
        webhook_event: the webhook event name alerts are sent as (None: none).
        run_service: evaluate in this process's workers (leader only), and announce
            the rules from every worker process (``removed.py``); with no rules the
            leader still clears and drops the records of removed ones.
        lease_ms: the leader's lease: another process takes over evaluation at most
            this long after the leader died (default 10 s).
    """

    def __init__(
        self,
        queue: JobQueue,
        rules: Iterable[AlertRule | Mapping[str, Any]] = (),
        *,
        interval_ms: Any = 5000,
        webhook_event: str | None = "queue-alert",
        run_service: bool = True,
        lease_ms: Any = 10_000,
    ) -> None:
        if queue in _INSTALLED:
            raise ConfigurationError(
                f"queue {queue.name!r} already has an AlertManager; use AlertManager.of(queue)"
            )
        self.queue = queue
        self.rules: tuple[AlertRule, ...] = tuple(
            parse_rule(r, f"alert rule {i}") for i, r in enumerate(rules)
        )
        names = [r.name for r in self.rules]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigurationError(f"alert rule names must be unique; repeated: {dup}")
        # The windows read (one atomic probe call reads at most MAX_WINDOWS of them).
        self._windows = sorted({r.window for r in self.rules if r.metric in WINDOW_METRICS})
        if len(self._windows) > MAX_WINDOWS:
            raise ConfigurationError(
                f"the alert rules of queue {queue.name!r} use {len(self._windows)} different "
                f"window_ms among their dlq_growth and failure_rate rules; at most "
                f"{MAX_WINDOWS} are read together: give rules the same windows"
            )
        self.interval_ms = to_ms(interval_ms, "alerts interval_ms", minimum=10)
        if webhook_event is not None:
            from ..webhooks.models import check_event_type

            webhook_event = check_event_type(webhook_event)
        self.webhook_event = webhook_event
        self._reporter = AlertReporter(queue, webhook_event, self._warn_damaged)
        # rule -> when (monotonic ms) its value was first seen at or above the threshold.
        self._above_since: dict[str, int] = {}
        self._gauge_missing: set[str] = set()
        self._no_reading: set[str] = set()
        self._damaged: set[str] = set()
        self._forged: set[tuple[str, str]] = set()
        self.evaluations = 0
        self._removed = RemovedRules(self, _TERM_COUNTER)
        for name in _SCRIPTS:
            queue.scripts.add_fragment(name, _lua(name))
        if any(r.metric == "failure_rate" for r in self.rules):
            queue.scripts.add_slot("release", FEATURE, _RELEASE)
        if run_service:
            lease = to_ms(lease_ms, "alerts lease_ms", minimum=100)
            queue.add_service(LeaderService(ROLE, self._serve, lease_ms=lease))
            if self.rules:
                # Held three evaluations and a lease: a process that stopped announcing
                # is taken for gone about when a leader that stopped renewing would be.
                period = min(self.interval_ms, HOLD_MAX_MS // 3)
                hold = 3 * period + lease
                queue.add_service(RuleAnnouncer(self, names, period, hold))
        _INSTALLED[queue] = self

    @classmethod
    def of(cls, queue: JobQueue) -> AlertManager | None:
        """The manager installed on ``queue`` in this process, if any."""
        return _INSTALLED.get(queue)

    # ------------------------------------------------------------------ reading
    async def values(self) -> dict[str, float]:
        """The current value of every rule's metric (what the leader compares); a rule
        on a gauge no feature provides now (``region_lag_ms`` without a global queue) or
        read as NaN or infinite is absent. A read: it passes the queue's read guards."""
        await self.queue.queries.check("alert_values", {})
        return await self._values()

    async def _values(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, value in (await self._readings()).items():
            if math.isfinite(value):
                self._no_reading.discard(name)
                out[name] = value
            else:
                self._not_finite(name)
        return out

    def _not_finite(self, rule: str) -> None:
        """A NaN or infinite reading is none: the rule keeps its state (as with a gauge
        with no value); the first in a row is logged, without the value."""
        if rule in self._no_reading:
            return
        self._no_reading.add(rule)
        log.warning(
            "queue %s: alert rule %s not evaluated: its metric read as no finite number; "
            "the rule keeps its state until it reads as one",
            self.queue.name,
            rule,
        )

    async def _readings(self) -> dict[str, float]:
        """Every rule's metric as read, not yet checked to be finite."""
        if not self.rules:
            return {}
        windows = self._windows
        reply = await self.queue.run("alerts_probe", [BUCKET_MS, *windows])
        now, waiting, oldest = int(reply[0]), int(reply[1]), int(reply[2])
        per = {w: [int(x) for x in reply[3 + i]] for i, w in enumerate(windows)}
        open_breakers: dict[str, bool] | None = None
        out: dict[str, float] = {}
        for r in self.rules:
            if r.metric == "queue_depth":
                out[r.name] = float(waiting)
            elif r.metric == "oldest_waiting_age_ms":
                out[r.name] = float(max(0, now - oldest)) if oldest >= 0 else 0.0
            elif r.metric == "dlq_growth":
                out[r.name] = float(per[r.window][0])
            elif r.metric == "failure_rate":
                _, c, rt, f = per[r.window]
                total = c + rt + f
                out[r.name] = 100.0 * (rt + f) / total if total >= r.min_samples else 0.0
            elif r.metric == "breaker_open":
                if open_breakers is None:
                    open_breakers = await self._breakers()
                if r.breaker_id is not None:
                    out[r.name] = 1.0 if open_breakers.get(r.breaker_id) else 0.0
                else:
                    out[r.name] = float(sum(open_breakers.values()))
            elif r.metric in GAUGE_METRICS:
                value = await self.queue.read_gauge(r.metric)
                if value is None:
                    self._no_gauge(r)
                else:
                    self._gauge_missing.discard(r.name)
                    out[r.name] = value
        return out

    def _no_gauge(self, r: AlertRule) -> None:
        """A gauge rule with no value this time: no feature provides the gauge on this
        queue (yet), or it cannot be told now. The rule keeps its state; the first miss
        in a row is logged."""
        if r.name in self._gauge_missing:
            return
        self._gauge_missing.add(r.name)
        if r.metric in self.queue.gauges:
            why = "its provider cannot tell it now (no other region reachable, or no primary)"
        else:
            why = (
                f"no feature provides it on queue {self.queue.name!r} (a global queue does: "
                "GlobalQueueManager, or AdvancedQueueConfig's global_queue section)"
            )
        log.warning(
            "queue %s: alert rule %s not evaluated: %s has no value: %s",
            self.queue.name,
            r.name,
            r.metric,
            why,
        )

    async def _breakers(self) -> dict[str, bool]:
        from ..breakers import CircuitBreakerManager

        found = await CircuitBreakerManager.for_queue(self.queue).all_stats()
        return {st.config.id: getattr(st.state, "value", st.state) == "open" for st in found}

    async def states(self) -> list[AlertState]:
        """Every rule's recorded state (``ok`` with no time when never changed). A read
        of the queue: it passes the queue's read guards first."""
        await self.queue.queries.check("alert_states", {})
        return await self._states()

    async def _states(self) -> list[AlertState]:
        if not self.rules:
            return []
        client = await self.queue.client()
        names = [r.name for r in self.rules]
        try:
            # The rules' own records only: the hash may hold any number of others.
            raw = await client.hmget(self.queue.keys.extra("alerts:state"), names)
        except ResponseError as exc:
            if not wrong_type(exc):
                raise
            # Overwritten with another type of key: no state can be read.
            self._warn_damaged("alerts:state")
            return [AlertState(r.name, "unknown", None, None) for r in self.rules]
        stored = {n: _text(v).split(" ") for n, v in zip(names, raw, strict=True) if v is not None}
        out = []
        for r in self.rules:
            parts = stored.get(r.name)
            if parts is None or len(parts) < 4:
                out.append(AlertState(r.name, "ok", None, None))
                continue
            # Damaged by hand: a state that is neither is unknown; figures that are not
            # what the script writes (a time of 1 to 15 digits, a finite value) are
            # shown as None (never NaN / inf, which JSON cannot carry).
            state = parts[0] if parts[0] in ("ok", "firing") else "unknown"
            since = int(parts[1]) if _MS.fullmatch(parts[1]) else None
            try:
                value: float | None = float(parts[3])
            except ValueError:
                value = None
            if value is not None and not math.isfinite(value):
                value = None
            out.append(AlertState(r.name, state, since, value))
        return out

    async def history(self, limit: int = 50) -> list[AlertTransition]:
        """The latest recorded changes, newest first (``limit``: an int, at most 1000
        are read; none when ``alerts:log`` was overwritten with another type of key). A
        read of the queue: it passes the queue's read guards first."""
        try:
            whole = None if isinstance(limit, bool) else operator.index(limit)
        except TypeError:
            whole = None
        if whole is None:
            raise ConfigurationError(
                f"alert history limit must be an int (at most 1000 are read), got {shown(limit)}"
            )
        n = max(1, min(whole, 1000))
        await self.queue.queries.check("alert_history", {"limit": n})
        client = await self.queue.client()
        try:
            raw = await client.xrevrange(self.queue.keys.extra("alerts:log"), count=n)
        except ResponseError as exc:
            if not wrong_type(exc):
                raise
            self._warn_damaged("alerts:log")
            return []
        return [transition(eid, f) for eid, f in raw]

    async def report_unreported(self) -> list[AlertTransition]:
        """Report the changes recorded but not reported whole: their leader died (or was
        deposed) between recording a change and reporting it, or its webhook could not
        be handed over. The leader calls it at the start of each term, and before each
        evaluation while changes wait; each is reported with its recorded id
        (``event_id``, the webhook's ``alert_<id>``, on which receivers deduplicate), so
        a report that went out just before its leader died may go out twice, never not
        at all. At most 100 per call, oldest first, up to a webhook that cannot be
        handed over; the ones reported are returned."""
        return await self._reporter.catch_up()

    # ------------------------------------------------------------------ evaluation
    async def evaluate(self, term: int) -> list[AlertTransition]:
        """Evaluate every rule once as the leader of ``term``, after clearing (and
        dropping) the records of rules no running process has any more (a bounded part
        of them per call, ``removed.py``); returns the changes recorded (and reported)
        by this evaluation."""
        if self._reporter.behind:  # older changes wait to be reported: theirs first
            await self._reporter.catch_up()
        changes = await self._removed.sweep(term)
        for t in changes:
            self._damaged.clear()
            await self._reporter.recorded(t)
        # The leader's own reads, unguarded (a service acts for no caller).
        values = await self._values()
        current = {s.rule: s.state for s in await self._states()}
        # for_ms is timed on this host's monotonic clock: a step of its wall clock (NTP,
        # a suspended VM) neither holds an alert back nor fires it early.
        now = int(time.monotonic() * 1000)
        for r in self.rules:
            value = values.get(r.name)
            if value is None:  # no reading now (no gauge value, not finite): state kept
                self._above_since.pop(r.name, None)
                continue
            firing = current.get(r.name) == "firing"
            want: str | None = None
            if value >= r.threshold:
                since = self._above_since.setdefault(r.name, now)
                if not firing and now - since >= r.hold:
                    want = "firing"
            else:
                self._above_since.pop(r.name, None)
                if firing and value < r.clears_below:
                    want = "ok"
            shown = f"{value:g}"
            if want is None:
                continue
            reply = await self.queue.run(
                "alerts_state",
                [r.name, want, term, shown, r.metric, f"{r.threshold:g}", _TERM_COUNTER],
            )
            if _text(reply[0]) in ("changed", "same") and len(reply) > 2 and reply[2]:
                self._warn_forged(r.name, _text(reply[2]), term)
            if _text(reply[0]) == "damaged":
                # Nothing was written: the change is recorded (and reported) at the
                # first evaluation after the key is repaired.
                self._warn_damaged(_text(reply[1]), _text(reply[2]))
                continue
            if _text(reply[0]) != "changed":
                continue
            self._damaged.clear()
            t = AlertTransition(_text(reply[1]), r.name, want, r.metric, shown, f"{r.threshold:g}")
            changes.append(t)
            await self._reporter.recorded(t)
        self.evaluations += 1
        return changes

    def _warn_damaged(self, key: str, kind: str = "") -> None:
        """Log, once until a change is recorded again, that ``key`` of the alerts holds
        another type of key (written by hand)."""
        if key in self._damaged:
            return
        self._damaged.add(key)
        log.warning(
            "queue %s: alerts: key %s holds %s, not what the alerts keep there: alert "
            "changes are not recorded until it is deleted or repaired",
            self.queue.name,
            key,
            f"a {kind}" if kind else "another type of key",
        )

    def _warn_forged(self, rule: str, found: str, term: int) -> None:
        """Log, once per rule and value, a recorded term no leader was ever given (above
        the term counter): written by hand or left by another deployment. It was
        replaced; it would have kept the rule from changing state."""
        if (rule, found) in self._forged:
            return
        if len(self._forged) >= 1000:
            self._forged.clear()
        self._forged.add((rule, found))
        log.warning(
            "queue %s: alert rule %s: its record in alerts:state carried term %s, above "
            "every term the leader counter (%s) issued: written outside kitium-queue or "
            "left by another deployment; replaced by this leader's term %d (the rule "
            "evaluates again). Check who can write to this Redis",
            self.queue.name,
            rule,
            found[:20],
            _TERM_COUNTER,
            term,
        )

    async def _serve(self, term: int) -> None:
        # A new term starts afresh: a rule pending its for_ms in a deposed leader's
        # memory starts its wait again here (the recorded states carry over).
        self._above_since.clear()
        # What a leader that died recorded and did not report: reported (oldest first)
        # by the evaluations, before their own changes.
        self._reporter.behind = True

        async def step() -> None:
            await self.evaluate(term)

        await every(self.interval_ms, step, f"queue {self.queue.name}: alert evaluation")

    def to_dict(self) -> dict[str, Any]:
        """The rules and settings (for ``config show``)."""
        return {
            "interval_ms": self.interval_ms,
            "webhook_event": self.webhook_event,
            "rules": [r.to_dict() for r in self.rules],
        }


def sweeper(queue: JobQueue, *, interval_ms: int, webhook_event: str | None) -> AlertManager:
    """A manager with no rules for ``removed.LeftoverSweep``: its evaluation only clears
    (and drops) the records of removed rules and reports what waits. It runs no service
    and is not installed (``AlertManager.of(queue)`` stays None: the queue has no rules)."""
    m = AlertManager(
        queue, (), interval_ms=interval_ms, webhook_event=webhook_event, run_service=False
    )
    _INSTALLED.pop(queue, None)
    return m
