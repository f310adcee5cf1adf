"""``JobQueue``: the public API of one queue, composed of components with one job each.

``JobQueue`` builds a ``QueueContext`` (context.py: keys, scripts, connection, resolved
settings, the option registry, the lifecycle subscribers) and the components that share
it, and delegates to them:

* ``queue.producer`` (producer.py): ``add_job``, ``add_jobs``;
* ``queue.queries`` (queries.py): job records and pages, logs, counts, health, events;
* ``queue.admin`` (admin.py): administrative commands, through one choke point;
* ``queue.jobspec`` (jobspec.py): the job options the queue accepts;
* the worker (worker.py), started by ``start``/``run_worker``; schedules, flow control
  and batches (schedules.py, flowcontrol.py, batches.py), loaded on first use.

The public methods of the first three are defined next to them, as the mixins
``ProducerAPI``, ``QueryAPI`` and ``AdminAPI``, with their documentation: one place per
component, and a façade that stays small. This class keeps configuration, registration
(processors, middleware, options, subscribers, services), features and workers.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import fields
from typing import TYPE_CHECKING, Any, TypeVar, overload

from .adapters import MetricsAdapter, TelemetryAdapter
from .admin import Admin, AdminAPI
from .backoff import check_strategy
from .codec import Codec
from .connection import ConnectionFactory
from .context import QueueContext
from .errors import ConfigurationError
from .events import Handler
from .identity import check_principal
from .jobspec import Normalizer, OptionSpec, feature_text, resolve_policy
from .lifecycle import Lifecycle, job_name_for_processor
from .limits import get_logger
from .middleware import (
    EnqueueMiddleware,
    FailureTextFilter,
    ProcessMiddleware,
    Service,
    check_callable,
)
from .observe import Observer
from .options import DLQConfig, JobOptions, Policy, QueueSettings, RetryConfig, WorkerConfig, shown
from .producer import Producer, ProducerAPI
from .queries import HealthStatus, Queries, QueryAPI, QueueStats
from .queueconfig import QueueConfig, keywords_checked
from .scripts import ScriptCall

if TYPE_CHECKING:
    from .barrier import WriteBarrier
    from .explain import Explainer
    from .features.advanced import AdvancedFeatures
    from .features.flowcontrol import FlowControl
    from .features.schedules import ScheduleStore

__all__ = ["HealthStatus", "JobQueue", "Processor", "QueueStats"]

log = get_logger(__name__)
_GAUGE_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")

Processor = Callable[..., Any]
P = TypeVar("P", bound=Callable[..., Any])


class JobQueue(ProducerAPI, QueryAPI, AdminAPI):
    """A named queue: add jobs, register processors, run workers, inspect and manage.

    Args:
        name: queue name (all its keys share the hash tag ``{name}``), or a
            ``QueueConfig`` holding the name and every other setting (then no other
            argument may be given).
        redis: ``"memory://"`` (default: in-process, for trying it and for tests), a URL
            (``redis://``, ``rediss://``, ``unix://``; ``redis+cluster://h:p[,h:p]`` for
            Redis Cluster, ``redis+sentinel://h:p[,h:p]/service[/db]`` for Sentinel), a
            dict of connection options, or a ``redis.asyncio.Redis`` / ``RedisCluster``
            client. See ``ConnectionFactory`` and docs/scale-out.md.
        prefix: key prefix (default ``"kq"``).
        default_job_options: options applied to every job unless the job sets them.
        retry: queue-wide retry defaults (``RetryConfig`` or dict).
        dlq: dead-letter settings (``DLQConfig`` or dict).
        settings: lease/stall settings (``QueueSettings`` or dict).
        worker: worker controls (``WorkerConfig`` or dict).
        telemetry: tracer adapter (``start_span``); metrics: adapter (``increment``,
            ``observe``).
        codecs: bytes transforms applied to payloads and results (encryption, compression).
        events_max_len: approximate length kept of the durable event stream (10000).
        idempotency_ttl: ms an ``idempotency_key`` suppresses duplicates (24 h).
        max_payload_bytes: largest encoded payload accepted by ``add_job``, and largest
            encoded result a processor may return (1 MiB). Other size limits:
            ``kitium_queue.limits``.
        max_log_lines: log lines kept per job (1000).
        principal: who this queue acts for when no ``identity.acting_as`` block is
            active (e.g. ``"alice@acme.com"``): stamped on every administrative command
            and seen by guards and enqueue middleware. Naming it enforces nothing by
            itself: access control (``AccessControlManager.protect(queue)``) decides
            what the principal may do.
        advanced: the enterprise features to enable, an ``AdvancedQueueConfig`` or a
            dict of its sections (``{"fifo": {"enabled": True}, ...}``); each enabled
            section enables its feature with the section's values as defaults, and
            ``queue.advanced`` holds the features' managers (docs/advanced-config.md).

    Lifecycle subscribers: ``queue.subscribe(subscriber)`` adds an object with any of
    the hooks of ``hooks.Subscriber`` (``enqueued``, ``started``, ``progress``,
    ``finished``, ``stalled``, ``dead_lettered``, ``removed``, ``admin``,
    ``queue_error``); the queue calls them after Redis recorded each transition, in the
    order added, after the built-in one that feeds ``on(...)`` handlers and metrics.
    Guards on administrative commands: ``queue.admin.add_guard(fn)``.

    Example::

        queue = JobQueue("emails", redis="redis://localhost:6379/0")

        @queue.process("send-email")
        async def send(job):
            return {"sent": job.data["to"]}

        await queue.add_job("send-email", {"to": "a@b.c"}, attempts=5)
        await queue.run_worker()
    """

    def __init__(
        self,
        name: str | QueueConfig,
        *,
        redis: Any = "memory://",
        prefix: str = "kq",
        default_job_options: JobOptions | Mapping[str, Any] | None = None,
        retry: RetryConfig | Mapping[str, Any] | None = None,
        dlq: DLQConfig | Mapping[str, Any] | None = None,
        settings: QueueSettings | Mapping[str, Any] | None = None,
        worker: WorkerConfig | Mapping[str, Any] | None = None,
        telemetry: TelemetryAdapter | None = None,
        metrics: MetricsAdapter | None = None,
        codecs: Sequence[Codec] = (),
        events_max_len: int = 10_000,
        idempotency_ttl: Any = 86_400_000,
        max_payload_bytes: int = 1_048_576,
        max_log_lines: int = 1000,
        principal: str | None = None,
        advanced: Any = None,
    ) -> None:
        if isinstance(name, QueueConfig):
            given = {
                "redis": redis,
                "prefix": prefix,
                "default_job_options": default_job_options,
                "retry": retry,
                "dlq": dlq,
                "settings": settings,
                "worker": worker,
                "telemetry": telemetry,
                "metrics": metrics,
                "codecs": codecs,
                "events_max_len": events_max_len,
                "idempotency_ttl": idempotency_ttl,
                "max_payload_bytes": max_payload_bytes,
                "max_log_lines": max_log_lines,
                "principal": principal,
                "advanced": advanced,
            }
            defaults = QueueConfig("_").kwargs()
            extra = sorted(k for k, v in given.items() if v is not defaults[k] and v != defaults[k])
            if extra:
                raise ConfigurationError(
                    f"JobQueue got a QueueConfig and also {', '.join(extra)}: put every "
                    "setting in the QueueConfig (dataclasses.replace(config, ...))"
                )
            cfg = name
            name = cfg.name
            (
                redis,
                prefix,
                default_job_options,
                retry,
                dlq,
                settings,
                worker,
                telemetry,
                metrics,
                codecs,
                events_max_len,
                idempotency_ttl,
                max_payload_bytes,
                max_log_lines,
                principal,
                advanced,
            ) = (cfg.kwargs()[k] for k in given)
        ctx = self.ctx = QueueContext(
            name,
            redis=redis,
            prefix=prefix,
            default_job_options=default_job_options,
            retry=retry,
            dlq=dlq,
            settings=settings,
            worker=worker,
            telemetry=telemetry,
            metrics=metrics,
            codecs=codecs,
            events_max_len=events_max_len,
            idempotency_ttl=idempotency_ttl,
            max_payload_bytes=max_payload_bytes,
            max_log_lines=max_log_lines,
        )
        if principal is not None:
            ctx.principal = check_principal(principal)
        # The context's parts, as attributes of the queue (the worker, the features and
        # the public API read them here; plain attributes keep the hot path lean).
        self.name, self.keys, self.scripts = ctx.name, ctx.keys, ctx.scripts
        self.serializer, self.jobspec = ctx.serializer, ctx.jobspec
        self.emitter, self.hooks = ctx.emitter, ctx.hooks
        self.retry, self.dlq, self.settings = ctx.retry, ctx.dlq, ctx.settings
        self.worker_config, self.limiter, self.policy = ctx.worker_config, ctx.limiter, ctx.policy
        self.events_max_len, self.idempotency_ttl = ctx.events_max_len, ctx.idempotency_ttl
        self.max_payload_bytes, self.max_log_lines = ctx.max_payload_bytes, ctx.max_log_lines
        self.lock_duration_ms, self.lock_renew_ms = ctx.lock_duration_ms, ctx.lock_renew_ms
        self.stalled_interval_ms = ctx.stalled_interval_ms
        self.shutdown_timeout_ms = ctx.shutdown_timeout_ms
        # Registrations of this process.
        self.processors: dict[str, Processor] = {}
        self.processor_modes: dict[str, str] = {}
        # Shared with the option registry, which refuses an unregistered custom strategy.
        self.backoff_strategies: dict[str, Callable[..., Any]] = self.jobspec.backoff_strategies
        self.enqueue_middleware: list[EnqueueMiddleware] = []
        self.process_middleware: list[ProcessMiddleware] = []
        # Rewrite a failed run's stored reason and traceback (middleware.py).
        self.failure_text_filters: list[FailureTextFilter] = []
        self.job_texts = ctx.job_texts  # rewrite progress and log lines (jobtexts.py)
        self.services: list[Service] = []
        # The components.
        self.producer = Producer(ctx, self.enqueue_middleware)
        self.queries = Queries(ctx)
        self.admin = Admin(ctx)
        # The built-in subscriber comes first: events, metrics, logs and the DLQ
        # notification keep the order they had when they were written inline.
        self._observer = Observer(
            name,
            ctx.emitter,
            ctx.metrics,
            dlq_handler=ctx.dlq.notification_handler,
            job_info=self.queries.job_status,
            text_filters=self.failure_text_filters,
        )
        self.hooks.add(self._observer)
        self._schedules: ScheduleStore | None = None
        self._flow: FlowControl | None = None
        self.lifecycle = Lifecycle(self)  # start, close, and when processors may be added
        self._advanced: AdvancedFeatures | None = None
        if advanced is not None:
            # The switchboard names every feature; it is loaded only when asked for.
            from .features.advanced import AdvancedFeatures

            self._advanced = AdvancedFeatures.install(self, advanced)

    # The connection and the adapters may be replaced after construction (the CLI's
    # --redis does): they are kept in the context, where every component reads them.
    @property
    def connection(self) -> ConnectionFactory:
        """How this queue connects to Redis (set before the first connection)."""
        return self.ctx.connection

    @connection.setter
    def connection(self, value: ConnectionFactory) -> None:
        self.ctx.connection = value

    @property
    def metrics(self) -> MetricsAdapter | None:
        """The metrics adapter (``increment``, ``observe``), or None."""
        return self.ctx.metrics

    @metrics.setter
    def metrics(self, value: MetricsAdapter | None) -> None:
        self.ctx.metrics = self._observer.metrics = value

    @property
    def telemetry(self) -> TelemetryAdapter | None:
        """The tracer adapter (``start_span``), or None."""
        return self.ctx.telemetry

    @telemetry.setter
    def telemetry(self, value: TelemetryAdapter | None) -> None:
        self.ctx.telemetry = value

    def policy_for(self, opts: Mapping[str, Any], base: Policy | None = None) -> Policy:
        """Resolve the execution policy of a job from its stored options.

        Options come from Redis and may have been damaged (by hand, by another client):
        an entry that is not valid is ignored, and the queue's default applies to it.
        """
        return resolve_policy(opts, base or self.policy)[0]

    # ------------------------------------------------------------------ extension points
    def on(self, event: str, handler: Handler) -> None:
        """Call ``handler(EventData)`` (sync or async) on every ``event`` in this process.

        A handler that raises is logged and never breaks the worker. For events of
        other processes read the durable stream with ``events()``.
        """
        self.emitter.on(event, handler)

    def off(self, event: str, handler: Handler) -> None:
        """Remove a handler added with ``on``."""
        self.emitter.off(event, handler)

    def subscribe(self, subscriber: Any) -> None:
        """Add a lifecycle subscriber: an object with any of the hooks of
        ``hooks.Subscriber`` (see the class docstring). Adding one twice is a no-op;
        an object with none of the hooks raises ``TypeError``."""
        self.hooks.add(subscriber)

    def unsubscribe(self, subscriber: Any) -> None:
        """Remove a subscriber added with ``subscribe`` (no-op if absent)."""
        self.hooks.remove(subscriber)

    @overload
    def process(
        self, job_name: str, *, mode: str = ..., replace: bool = ...
    ) -> Callable[[P], P]: ...

    @overload
    def process(self, job_name: str, fn: P, *, mode: str = ..., replace: bool = ...) -> P: ...

    def process(
        self, job_name: str, fn: P | None = None, *, mode: str = "auto", replace: bool = False
    ) -> Any:
        """Register the processor of ``job_name`` (``"*"`` = any name without its own).

        ``fn(job)`` may be ``async def`` (run on the event loop) or a plain function (run
        in a thread pool of ``worker.concurrency`` threads). Return = completed; raise =
        failure with backoff; ``NonRetryableError`` = straight to the DLQ;
        ``RetryLater`` / ``RateLimited`` = again later without spending an attempt.
        Usable as a decorator: ``@queue.process("send-email")``.

        ``mode="process"`` runs a plain, module-level function in a child process instead
        (one job per child at a time, ``worker.concurrency`` children at most): a run past
        its timeout has its child killed (a hard timeout), and CPU-bound work escapes the
        GIL. Job data and results travel as JSON; progress and logs via
        ``job.update_progress_sync`` / ``job.log_sync``. Each name once unless
        ``replace=True``; one registered while a worker of the queue runs here is used
        from its next job of that name.
        """
        job_name = job_name_for_processor(job_name)
        if mode not in ("auto", "process"):
            raise ConfigurationError(f"mode must be 'auto' or 'process', got {shown(mode)}")

        def register(f: P) -> P:
            self.lifecycle.register(job_name, f, mode, replace)
            return f

        if fn is not None:
            return register(fn)
        return register

    def use_enqueue(self, middleware: EnqueueMiddleware) -> None:
        """Add enqueue middleware: ``fn(job_name, data, options) -> (job_name, data,
        options)``, sync or async, run by ``add_job``/``add_jobs`` before validation."""
        self.enqueue_middleware.append(check_callable(middleware, "enqueue middleware"))

    def use_process(self, middleware: ProcessMiddleware) -> None:
        """Add process middleware: ``async fn(job, call_next) -> result`` around every run
        (first added is outermost). Register before the worker starts."""
        self.process_middleware.append(check_callable(middleware, "process middleware"))

    def declare_option(
        self,
        name: str,
        *,
        feature: str,
        normalize: Normalizer | None = None,
        default: Any = None,
        stored: bool = True,
        doc: str = "",
        placement: str = "",
    ) -> None:
        """Declare the job option ``name``, owned by ``feature``, on this queue.

        ``normalize(value, section)`` checks a value and returns the form stored with the
        job (default: text checks for ids and keys, the value stored as given); the
        others as in ``jobspec.OptionSpec`` (``placement``: where the option sends a job
        on a queue made of several queues). Until declared, the option is refused as
        unknown (or, for a feature's own options, as needing its feature).
        """
        spec = OptionSpec(
            name, feature, normalize or feature_text(name), default, stored, doc, placement
        )
        self.jobspec.declare(spec)

    def own_options(self, feature: str, names: Iterable[str]) -> None:
        """Declare that ``feature`` handles the job options ``names`` on this queue (ids
        or keys, stored as given: ``declare_option`` with the default ``normalize``)."""
        self.jobspec.own(feature, names)

    def add_explainer(self, explainer: Explainer) -> None:
        """Add an explainer to ``explain``: ``fn(facts: JobFacts)``, sync or async,
        returning the ``Reason`` objects it knows of for the job (an empty list when the
        job is not its business). A feature that holds jobs back adds one, so operators
        see why a job waits. Adding the same one twice is a no-op."""
        if not callable(explainer):
            raise ConfigurationError(f"explainer must be callable, got {type(explainer).__name__}")
        if not any(e is explainer for e in self.ctx.explainers):
            self.ctx.explainers.append(explainer)

    def add_gauge(self, name: str, fn: Callable[[], Any] | None) -> None:
        """Provide the gauge ``name``: ``fn()``, sync or async, returns its current value
        (a number) or None when it cannot be told now. A feature that computes a figure
        only it knows (a global queue's replication lag: ``region_lag_ms``) adds one, so
        whoever watches metrics (alert rules) reads it without knowing the feature.
        Adding a gauge again replaces it; ``fn=None`` removes it."""
        if not isinstance(name, str) or not _GAUGE_NAME.fullmatch(name):
            raise ConfigurationError(
                f"gauge name must be 1-64 letters, digits or _ . : -, got {name!r:.80}"
            )
        if fn is None:
            self.ctx.gauges.pop(name, None)
            return
        if not callable(fn):
            raise ConfigurationError(f"gauge {name!r} must be callable, got {type(fn).__name__}")
        self.ctx.gauges[name] = fn

    @property
    def gauges(self) -> tuple[str, ...]:
        """The names of the gauges features provide on this queue (``add_gauge``)."""
        return tuple(sorted(self.ctx.gauges))

    async def read_gauge(self, name: str) -> float | None:
        """The current value of gauge ``name``; None when no feature provides it on this
        queue, when it cannot be told now, or when its function failed (logged) or gave
        something that is not a finite number."""
        fn = self.ctx.gauges.get(name)
        if fn is None:
            return None
        try:
            value = fn()
            if inspect.isawaitable(value):
                value = await value
        except Exception:
            log.exception("queue %s: gauge %s failed", self.name, name)
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        v = float(value)
        return v if math.isfinite(v) else None

    def set_write_barrier(self, barrier: WriteBarrier | None) -> None:
        """Run ``barrier``'s command after every enqueue and outcome of this queue, on
        the same connection, before they are acknowledged (``barrier.py``; None removes
        it). One per queue: replica-acknowledged writes (``ReplicaAcks``) set it."""
        self.ctx.write_barrier = barrier

    @property
    def write_barrier(self) -> WriteBarrier | None:
        """The write barrier set with ``set_write_barrier``, or None."""
        return self.ctx.write_barrier

    def add_service(self, service: Service) -> None:
        """Run ``service`` alongside every worker of this queue in this process (started
        with the worker, stopped with it); replaces a service with the same ``name``."""
        self.services = [s for s in self.services if s.name != service.name]
        self.services.append(service)

    def register_backoff(self, name: str, fn: Callable[..., Any]) -> None:
        """Register a custom backoff: ``fn(attempts_made, error, job) -> delay_ms | None``.

        Use it with ``backoff={"type": "custom", "strategy": name}``. Returning None
        stops retrying (the job fails for good). ``fn`` must be a plain function (or
        callable), not an ``async def``: anything else raises ``TypeError`` here.
        """
        check_strategy(name, fn)
        self.backoff_strategies[name] = fn

    # ------------------------------------------------------------------ connection
    async def client(self) -> Any:
        """The shared Redis client (connects and loads the scripts on first use)."""
        return await self.ctx.client()

    def argv_head(self) -> tuple[str, str, str]:
        """The arguments every script takes first (``QueueContext.argv_head``)."""
        return self.ctx.argv_head()

    async def run(self, script: str, args: Sequence[Any] = ()) -> Any:
        """Run one of the queue's scripts (``QueueContext.run``)."""
        return await self.ctx.run(script, args)

    def call(self, script: str, args: Sequence[Any] = ()) -> ScriptCall:
        """A script call for a pipeline (``QueueContext.call``)."""
        return self.ctx.call(script, args)

    # ------------------------------------------------------------------ features
    # Scheduling, flow control and batches live in their own modules (schedules.py,
    # scheduler.py, flowcontrol.py, batches.py), imported on first use. docs/scheduling.md
    # describes every option.
    @property
    def schedules(self) -> ScheduleStore:
        """The schedules of this queue in Redis (list, get, update, pause, remove)."""
        if self._schedules is None:
            from .features.schedules import ScheduleStore

            self._schedules = ScheduleStore(self)
        return self._schedules

    @property
    def advanced(self) -> AdvancedFeatures:
        """The features ``advanced=`` enabled, with their managers and the effective
        configuration (``queue.advanced.effective()``); all sections disabled when the
        queue was made without it."""
        if self._advanced is None:
            from .features.advanced import AdvancedFeatures

            self._advanced = AdvancedFeatures.install(self, None)
        return self._advanced

    @property
    def flow(self) -> FlowControl:
        """Per-key rate limits and concurrency caps of this queue (enabled on first use)."""
        if self._flow is None:
            from .features.flowcontrol import FlowControl

            self._flow = FlowControl(self)
        return self._flow

    def set_rate_limit(self, key: str, *, max: int, duration: Any = 1000) -> None:
        """At most ``max`` starts per ``duration`` ms for each rate-limit key matching
        ``key`` (exact, ``"prefix*"`` or ``"*"``), across all workers. Jobs opt in with
        ``rate_limit_key=``. Declare it in every process that uses the queue."""
        self.flow.set_rate_limit(key, max=max, duration=duration)

    def set_concurrency_limit(self, key: str, max: int) -> None:
        """At most ``max`` running jobs for each concurrency key matching ``key``, across
        all workers. Jobs opt in with ``concurrency_key=``."""
        self.flow.set_concurrency_limit(key, max)

    def set_global_concurrency(self, max: int | None) -> None:
        """At most ``max`` running jobs in this queue across all workers (None: no cap)."""
        self.flow.set_global_concurrency(max)

    def process_batch(
        self,
        job_name: str,
        fn: Callable[..., Any] | None = None,
        *,
        size: int | None = None,
        min_size: int | None = None,
        max_wait: Any = None,
        replace: bool = False,
    ) -> Any:
        """Register a batch processor: ``fn(jobs)`` gets up to ``size`` jobs at once.

        A batch is handed over when it is full, when the jobs claimed together arrived
        and it has ``min_size`` (default 1), or ``max_wait`` ms (default 1000) after its
        first job. ``fn`` returns a list (a result or an exception per job), a dict by
        job id, or None; raising fails them all. Each job keeps its own lease, timeout,
        retries and outcome. Usable as a decorator. Arguments left out take the
        queue's batch defaults (the ``batching`` section of ``AdvancedQueueConfig``);
        ``size`` is required when there are none. Registered as ``process`` registers.
        """
        from .features.batches import BatchProcessor, resolve_batch

        job_name = job_name_for_processor(job_name)
        size, min_size, max_wait = resolve_batch(self, job_name, size, min_size, max_wait)

        def register(f: Callable[..., Any]) -> Callable[..., Any]:
            self.lifecycle.check_registration(job_name, replace)
            self.processors[job_name] = BatchProcessor(
                f, size=size, min_size=min_size, max_wait=max_wait
            )
            self.processor_modes.pop(job_name, None)
            self.lifecycle.registered(job_name)
            if self.worker_config.concurrency < size:
                log.warning(
                    "queue %s: batch size %d of %r exceeds worker.concurrency=%d; batches "
                    "will hold at most %d jobs",
                    self.name,
                    size,
                    job_name,
                    self.worker_config.concurrency,
                    self.worker_config.concurrency,
                )
            return f

        return register(fn) if fn is not None else register

    # ------------------------------------------------------------------ workers
    async def start(self, *, concurrency: int | None = None) -> None:
        """Start consuming in this process (returns once the worker runs). A start() while
        another is under way joins it: one worker per queue and process."""
        from .worker import Worker

        await self.lifecycle.start(lambda: Worker(self, concurrency=concurrency))

    async def run_worker(
        self, *, concurrency: int | None = None, install_signal_handlers: bool = True
    ) -> None:
        """Run a worker until SIGTERM/SIGINT (or ``close()``), then shut down gracefully."""
        from .serving import serve_until_stopped

        await serve_until_stopped(
            lambda: self.worker.stopped,  # the signals' handlers are in place before it starts
            self.close,
            install_signal_handlers=install_signal_handlers,
            start=lambda: self.start(concurrency=concurrency),
        )
        await self.lifecycle.settled()  # a close() a job started releases the connections

    @property
    def worker(self) -> Any:
        """The running ``Worker`` of this process, if any."""
        return self.lifecycle.worker

    async def close(self) -> None:
        """Stop the worker gracefully (if any) and release connections. Awaited from inside
        one of the worker's jobs, it starts the stop and returns at once (it cannot wait for
        the job awaiting it): the worker stops once its jobs end, then connections close."""
        await self.lifecycle.close()

    async def __aenter__(self) -> JobQueue:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


# An unknown keyword (``lock_duration=5``) names the closest one and the section it
# belongs to (``worker={...}``), not a bare TypeError (queueconfig.keywords_checked).
keywords_checked(JobQueue, valid=[f.name for f in fields(QueueConfig)])
