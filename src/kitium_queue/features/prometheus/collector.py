"""The Prometheus collector: gauges read from Redis at scrape time, by any process.

``KitiumCollector`` reads, per queue: the jobs per state (``queue.get_stats()``: one
script call and the parked count), the DLQ size, the age of the oldest waiting job and
whether the queue is paused; and, only for the features enabled on that queue in this
process (known from the option registry: the feature that declared
``circuit_breaker_id`` or ``message_group_id``), the state of every circuit breaker and
the number of FIFO groups, and the webhook DLQ and retry backlog. How late the queue's
schedules are (the earliest due tick of an active schedule) is read for every queue.
A feature that is not enabled is not imported.

Reading Redis needs the event loop that owns the queue's connection, while
``prometheus_client`` calls ``collect()`` synchronously. So:

* ``await collector.refresh()`` reads everything now and keeps it as the snapshot that
  ``collect()`` returns (the exporter's ``/metrics`` does this per request);
* when ``collect()`` runs in another thread (``prometheus_client.start_http_server``,
  a WSGI app) while the loop that last refreshed is running, it refreshes on that loop
  and waits for it (a second more than ``timeout``, then serves the last snapshot).

Each queue's read is bounded by ``timeout``: a Redis that holds its answers (frozen,
clients paused, a network that drops packets) makes that queue ``up 0`` then, so a
scrape answers within the scraper's own timeout, not after the reply deadline (15 s).

A queue whose read fails reports ``kitium_queue_up 0`` and none of its other gauges;
the error is logged (at most once a minute per queue), never raised into the scrape.
A part read after the job counts (FIFO groups, schedules, webhooks) that fails, a key of
it damaged by hand for instance, is left out alone and flagged by
``kitium_queue_read_error{queue, part}`` = 1; the queue's other gauges are reported.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ...connection import outage
from ...connerrors import refused
from ...errors import ConfigurationError
from ...limits import get_logger, printable
from ..scheduler import overdue_ms
from .subscriber import check_namespace

__all__ = ["KitiumCollector", "QueueReading"]

log = get_logger(__name__)

STATES = ("waiting", "active", "delayed", "pending", "paused", "completed", "failed", "dlq")
BREAKER_STATES = ("closed", "open", "half-open")
#: Which feature declares which option (the option registry says who enabled what).
_BREAKER_OPTION, _BREAKER_FEATURE = "circuit_breaker_id", "circuit-breakers"
_GROUP_OPTION, _GROUP_FEATURE = "message_group_id", "fifo-groups"
_WEBHOOK_OPTION, _WEBHOOK_FEATURE = "webhook_url", "webhooks"


@dataclass
class QueueReading:
    """What one refresh read of one queue (None: not read, or the read failed)."""

    queue: str
    up: bool = False
    states: dict[str, int] = field(default_factory=dict)
    latency_ms: int = 0
    is_paused: bool = False
    breakers: list[tuple[str, str, int]] = field(default_factory=list)  # id, state, held
    groups: int | None = None
    schedule_overdue_ms: int = 0
    webhooks: dict[str, int] | None = None  # dlq, retry_scheduled
    unread: list[str] = field(default_factory=list)  # parts whose read failed


def _finite_ms(value: Any) -> int:
    """A duration in ms read back from Redis (a score may be inf): refused when it is
    not a finite number, so the part is flagged instead of reporting nonsense."""
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"not a finite number of ms: {value!r:.40}")
    return int(value)


def _enabled(queue: Any, option: str, feature: str) -> bool:
    spec = queue.jobspec.get(option)
    return spec is not None and spec.feature == feature


class KitiumCollector(Collector):
    """Gauges of ``queues`` read from Redis (see the module docstring); register it in
    any ``CollectorRegistry``: ``registry.register(KitiumCollector([queue]))``.

    Args:
        queues: the ``JobQueue`` objects to read.
        namespace: prefix of every metric name.
        timeout: seconds a threaded ``collect()`` waits for a refresh.
    """

    def __init__(
        self, queues: Iterable[Any], *, namespace: str = "kitium_queue", timeout: float = 5.0
    ) -> None:
        if isinstance(queues, (str, bytes)) or not isinstance(queues, Iterable):
            raise ConfigurationError(
                f"queues must be a list of JobQueue objects, got {type(queues).__name__}"
            )
        self.queues = list(queues)
        if not self.queues:
            raise ConfigurationError("KitiumCollector needs at least one queue")
        if not all(isinstance(getattr(q, "name", None), str) for q in self.queues):
            raise ConfigurationError("KitiumCollector takes JobQueue objects (with a name)")
        names = [q.name for q in self.queues]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            # Their gauges would carry the same labels with different values: an
            # exposition Prometheus and OpenMetrics parsers refuse or misread.
            raise ConfigurationError(
                f"KitiumCollector: queue name(s) {twice} given twice; the queue label "
                "tells queues apart by name only: export queues of one name (other "
                "prefixes or servers) from separate registries, or with another namespace"
            )
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, (int, float))
            or not (math.isfinite(timeout) and 0 < timeout <= 3600)
        ):
            raise ConfigurationError(
                f"timeout must be a number of seconds above 0 and at most 3600, got {timeout!r:.40}"
            )
        self.namespace = check_namespace(namespace)
        self.timeout = float(timeout)
        self.readings: list[QueueReading] = [QueueReading(q.name) for q in self.queues]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._breakers: dict[int, Any] = {}
        self._groups: dict[int, Any] = {}
        self._warned: dict[str, float] = {}

    # ------------------------------------------------------------------ reading
    async def refresh(self) -> list[QueueReading]:
        """Read every queue now; the result becomes what ``collect()`` reports."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self.readings = list(await asyncio.gather(*(self._bounded(q) for q in self.queues)))
        return self.readings

    async def _bounded(self, queue: Any) -> QueueReading:
        """``_read`` within ``timeout`` seconds: a Redis that holds its answer (frozen,
        paused, a network that drops packets) makes the queue ``up 0`` then, rather
        than a scrape that outlasts the scraper's own timeout (Prometheus: 10 s)."""
        try:
            return await asyncio.wait_for(self._read(queue), self.timeout)
        except (TimeoutError, asyncio.TimeoutError):  # one class from Python 3.11 on
            exc = TimeoutError(f"no answer from Redis within {self.timeout:g} s")
            self._warn(queue.name, "", exc)
            return QueueReading(queue.name, unread=["stats"])

    async def _read(self, queue: Any) -> QueueReading:
        out = QueueReading(queue.name)
        try:
            st = await queue.get_stats()
            out.states = {s: int(getattr(st, s)) for s in STATES}
            out.latency_ms, out.is_paused = int(st.latency_ms), bool(st.is_paused)
            if _enabled(queue, _BREAKER_OPTION, _BREAKER_FEATURE):
                listed = await self._breaker_manager(queue).list_breakers()
                out.breakers = [
                    (b.config.id, str(getattr(b.state, "value", b.state)), int(b.held_jobs))
                    for b in listed
                ]
                # A breaker whose keys are damaged acts closed: flagged, so it is seen.
                out.unread += [f"breaker:{b.config.id}" for b in listed if b.damaged]
            await self._read_parts(queue, out)
            out.up = True
        except Exception as exc:
            self._warn(queue.name, "", exc)
            out = QueueReading(queue.name, unread=["stats"])
        return out

    async def _read_parts(self, queue: Any, out: QueueReading) -> None:
        """The parts read after the job counts, each on its own: one that fails (a key
        of it damaged by hand) is flagged in ``out.unread``, the others are reported."""
        if _enabled(queue, _GROUP_OPTION, _GROUP_FEATURE):
            try:
                out.groups = int(await self._group_manager(queue).count_groups())
            except Exception as exc:
                self._unread(queue.name, out, "groups", exc)
        try:
            out.schedule_overdue_ms = _finite_ms(await overdue_ms(queue) or 0)
        except Exception as exc:
            self._unread(queue.name, out, "schedules", exc)
        if _enabled(queue, _WEBHOOK_OPTION, _WEBHOOK_FEATURE):
            from ..webhooks import WebhookManager  # enabled: safe to import

            try:
                mgr = WebhookManager.of(queue)
                if mgr is not None:
                    st = await mgr.stats()
                    out.webhooks = {
                        "dlq": int(st["dlq"]),
                        "retry_scheduled": int(st["retry_scheduled"]),
                    }
            except Exception as exc:
                self._unread(queue.name, out, "webhooks", exc)

    def _unread(self, queue: str, out: QueueReading, part: str, exc: Exception) -> None:
        if outage(exc):
            raise exc  # Redis itself: the whole queue is not read (a refusal: this part)
        out.unread.append(part)
        self._warn(queue, part, exc)

    def _warn(self, queue: str, part: str, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._warned.get(f"{queue}\0{part}", -1e9) > 60:
            self._warned[f"{queue}\0{part}"] = now
            log.warning(
                "metrics: reading %squeue %s failed: %s: %s%s",
                f"the {part} of " if part else "",
                queue,
                type(exc).__name__,
                printable(str(exc))[:300],
                f" (reported as {self.namespace}_read_error; the queue's other gauges are "
                "served). "
                + (
                    "The Redis user may not read it: `kitium-queue acl redis-rules` prints "
                    "the rules a user needs"
                    if refused(exc)
                    else "A key damaged by hand? Delete or repair it"
                )
                if part
                else "",
            )

    def _breaker_manager(self, queue: Any) -> Any:
        got = self._breakers.get(id(queue))
        if got is None:
            from ..breakers import CircuitBreakerManager  # enabled: safe to import

            # The manager the queue's breakers were enabled with (no second one).
            got = self._breakers[id(queue)] = CircuitBreakerManager.for_queue(queue)
        return got

    def _group_manager(self, queue: Any) -> Any:
        got = self._groups.get(id(queue))
        if got is None:
            from ..groups import FIFOQueueManager  # enabled: safe to import

            got = self._groups[id(queue)] = FIFOQueueManager.for_queue(queue)
        return got

    # ------------------------------------------------------------------ prometheus
    def collect(self) -> Iterator[Metric]:
        """The gauges of the latest readings (refreshed first when called from another
        thread while the owning loop runs)."""
        loop = self._loop
        if (
            loop is not None
            and loop.is_running()
            and not loop.is_closed()
            and threading.get_ident() != self._loop_thread
        ):
            fut = asyncio.run_coroutine_threadsafe(self.refresh(), loop)
            try:
                fut.result(self.timeout + 1.0)  # its reads give up after timeout
            except Exception as exc:
                fut.cancel()
                log.warning(
                    "metrics: refresh at scrape time failed (%s); serving the last readings",
                    type(exc).__name__,
                )
        return iter(self._families(self.readings))

    def describe(self) -> Iterator[Metric]:
        """The metric families, without samples (so registering does not read Redis)."""
        return iter(self._families([]))

    def _families(self, readings: Sequence[QueueReading]) -> list[Metric]:
        ns = self.namespace
        up = GaugeMetricFamily(
            f"{ns}_up", "1 when the queue's gauges were read from Redis.", labels=["queue"]
        )
        jobs = GaugeMetricFamily(
            f"{ns}_jobs", "Jobs per state, read from Redis.", labels=["queue", "state"]
        )
        dlq = GaugeMetricFamily(
            f"{ns}_dlq_size", "Jobs in the dead-letter queue.", labels=["queue"]
        )
        lat = GaugeMetricFamily(
            f"{ns}_latency_seconds", "Age of the oldest waiting job.", labels=["queue"]
        )
        paused = GaugeMetricFamily(f"{ns}_paused", "1 while the queue is paused.", labels=["queue"])
        bstate = GaugeMetricFamily(
            f"{ns}_breaker_state",
            "1 for the circuit breaker's current state, else 0.",
            labels=["queue", "breaker", "state"],
        )
        held = GaugeMetricFamily(
            f"{ns}_breaker_held_jobs",
            "Jobs held (pending) behind a circuit breaker.",
            labels=["queue", "breaker"],
        )
        groups = GaugeMetricFamily(
            f"{ns}_fifo_groups", "FIFO message groups known.", labels=["queue"]
        )
        overdue = GaugeMetricFamily(
            f"{ns}_schedule_overdue_seconds",
            "How long ago the earliest tick of an active schedule was due (0: none late; "
            "growing: no scheduler is firing).",
            labels=["queue"],
        )
        wh_dlq = GaugeMetricFamily(
            f"{ns}_webhook_dlq_size", "Webhook deliveries dead-lettered.", labels=["queue"]
        )
        wh_retry = GaugeMetricFamily(
            f"{ns}_webhook_retries_scheduled",
            "Webhook deliveries waiting for their next attempt.",
            labels=["queue"],
        )
        unread = GaugeMetricFamily(
            f"{ns}_read_error",
            "1 for each part of a queue whose read failed at this scrape (stats: the "
            "whole queue; groups, schedules, webhooks: that part only), or that is "
            "damaged (breaker:<id>: a circuit breaker acting closed on damaged keys).",
            labels=["queue", "part"],
        )
        for r in readings:
            up.add_metric([r.queue], 1.0 if r.up else 0.0)
            for part in r.unread:
                unread.add_metric([r.queue, part], 1.0)
            if not r.up:
                continue
            for state, n in r.states.items():
                jobs.add_metric([r.queue, state], float(n))
            dlq.add_metric([r.queue], float(r.states.get("dlq", 0)))
            lat.add_metric([r.queue], r.latency_ms / 1000)
            paused.add_metric([r.queue], 1.0 if r.is_paused else 0.0)
            for bid, state, n in r.breakers:
                for s in BREAKER_STATES:
                    bstate.add_metric([r.queue, bid, s], 1.0 if s == state else 0.0)
                held.add_metric([r.queue, bid], float(n))
            if r.groups is not None:
                groups.add_metric([r.queue], float(r.groups))
            overdue.add_metric([r.queue], r.schedule_overdue_ms / 1000)
            if r.webhooks is not None:
                wh_dlq.add_metric([r.queue], float(r.webhooks["dlq"]))
                wh_retry.add_metric([r.queue], float(r.webhooks["retry_scheduled"]))
        return [up, jobs, dlq, lat, paused, bstate, held, groups, overdue, wh_dlq, wh_retry, unread]
