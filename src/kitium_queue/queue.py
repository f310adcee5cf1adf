"""``JobQueue``: configuration, producer, query and admin API of one queue."""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, TypeVar, overload

import orjson
from redis.exceptions import AuthenticationError, NoPermissionError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .adapters import MetricsAdapter, TelemetryAdapter
from .codec import Codec, Serializer
from .connection import ConnectionFactory
from .enums import DeliveryGuarantee, JobStatus
from .errors import (
    ConfigurationError,
    ConnectionUnavailableError,
    JobActiveError,
    JobNotFoundError,
    PayloadTooLargeError,
)
from .events import EventData, EventEmitter, Handler, StreamEvent, read_stream
from .job import JobInfo
from .keys import QueueKeys
from .limits import (
    ENQUEUE_CHUNK_BYTES,
    ENQUEUE_CHUNK_JOBS,
    MAX_ID_LENGTH,
    MAX_JOB_NAME_LENGTH,
    MAX_OPTIONS_BYTES,
    clip,
)
from .middleware import EnqueueMiddleware, ProcessMiddleware, Service
from .options import (
    CORE_OPTION_NAMES,
    JOB_OPTION_NAMES,
    MAX_PRIORITY,
    BackoffOptions,
    DLQConfig,
    JobOptions,
    LimiterConfig,
    Policy,
    QueueSettings,
    RetentionPolicy,
    RetryConfig,
    WorkerConfig,
    _unknown,
    coerce,
    to_ms,
)
from .procpool import import_path
from .scripts import ScriptCall, ScriptRegistry, permission_denied

if TYPE_CHECKING:
    from .flowcontrol import FlowControl
    from .schedules import Schedule, ScheduleStore

__all__ = ["HealthStatus", "JobQueue", "Processor", "QueueStats"]

log = logging.getLogger(__name__)

Processor = Callable[..., Any]
P = TypeVar("P", bound=Callable[..., Any])
_STATUS_SETS = {
    JobStatus.WAITING: "wait",
    JobStatus.PAUSED: "wait",
    JobStatus.ACTIVE: "active",
    JobStatus.DELAYED: "delayed",
    JobStatus.COMPLETED: "completed",
    JobStatus.FAILED: "failed",
    JobStatus.DLQ: "dlq",
}
_NEWEST_FIRST = {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.DLQ}
_ENQUEUE_CHUNK = ENQUEUE_CHUNK_JOBS
_CONNECT_TIMEOUT_S = 10.0


@dataclass(slots=True)
class QueueStats:
    """Counts per state. ``latency_ms``: how long the next job in line has waited."""

    waiting: int
    active: int
    delayed: int
    completed: int
    failed: int
    dlq: int
    paused: int
    is_paused: bool
    latency_ms: int

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)


@dataclass(slots=True)
class HealthStatus:
    """Result of ``health_check()``; truthy when healthy."""

    healthy: bool
    redis_latency_ms: float | None
    backend: str
    error: str | None = None
    worker_running: bool = False

    def __bool__(self) -> bool:
        return self.healthy


class JobQueue:
    """A named queue: add jobs, register processors, run workers, inspect and manage.

    Args:
        name: queue name (all its keys share the hash tag ``{name}``).
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
        name: str,
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
    ) -> None:
        self.name = name
        self.keys = QueueKeys(name, prefix)
        self.connection = ConnectionFactory(redis)
        self.retry = coerce(RetryConfig, retry, "retry")
        self.dlq = coerce(DLQConfig, dlq, "dlq")
        self.settings = coerce(QueueSettings, settings, "settings")
        self.worker_config = coerce(WorkerConfig, worker, "worker")
        self.telemetry = telemetry
        self.metrics = metrics
        self.serializer = Serializer(codecs)
        self.events_max_len = int(events_max_len)
        self.idempotency_ttl = to_ms(idempotency_ttl, "idempotency_ttl") or 1
        self.max_payload_bytes = int(max_payload_bytes)
        self.max_log_lines = int(max_log_lines)
        self.scripts = ScriptRegistry()
        self.processors: dict[str, Processor] = {}
        self.processor_modes: dict[str, str] = {}
        self.backoff_strategies: dict[str, Callable[..., Any]] = {}
        self.emitter = EventEmitter()
        self.option_owners: dict[str, str] = {}
        self.enqueue_middleware: list[EnqueueMiddleware] = []
        self.process_middleware: list[ProcessMiddleware] = []
        self.services: list[Service] = []
        self._schedules: ScheduleStore | None = None
        self._flow: FlowControl | None = None
        self._defaults = self._normalize_options(
            self._validate_options(_as_dict(default_job_options), "default_job_options"),
            "default_job_options",
        )
        self._check_settings()
        self.policy = self._base_policy()
        self._client: Any = None
        self._connect_lock: asyncio.Lock | None = None
        self._worker: Any = None
        self._batching = False
        self._pending: list[tuple[list[Any], asyncio.Future[str]]] = []
        self._bg: set[asyncio.Future[None]] = set()
        self._argv_head: tuple[str, str, str] = (self.keys.base, "", str(self.events_max_len))

    # ------------------------------------------------------------------ configuration
    def _check_settings(self) -> None:
        s = self.settings
        if s.max_stalled_count < 0:
            raise ConfigurationError("settings.max_stalled_count must be >= 0")
        self.lock_duration_ms = to_ms(s.lock_duration, "settings.lock_duration") or 0
        if self.lock_duration_ms < 100:
            raise ConfigurationError("settings.lock_duration must be at least 100 ms")
        renew = to_ms(s.lock_renew_time, "settings.lock_renew_time", allow_none=True)
        self.lock_renew_ms = renew if renew else max(50, self.lock_duration_ms // 2)
        if self.lock_renew_ms >= self.lock_duration_ms:
            raise ConfigurationError(
                f"settings.lock_renew_time ({self.lock_renew_ms} ms) must be shorter than "
                f"lock_duration ({self.lock_duration_ms} ms), or leases expire between renewals"
            )
        self.stalled_interval_ms = (
            to_ms(s.max_stalled_interval, "settings.max_stalled_interval") or 1000
        )
        w = self.worker_config
        if not isinstance(w.concurrency, int) or w.concurrency < 1:
            raise ConfigurationError(
                f"worker.concurrency must be an int >= 1, got {w.concurrency!r}"
            )
        self.shutdown_timeout_ms = to_ms(w.shutdown_timeout, "worker.shutdown_timeout") or 0
        self.limiter: LimiterConfig | None = None
        if w.limiter is not None:
            lim = coerce(LimiterConfig, w.limiter, "worker.limiter")
            if not isinstance(lim.max, int) or lim.max < 1:
                raise ConfigurationError(f"worker.limiter.max must be an int >= 1, got {lim.max!r}")
            dur = to_ms(lim.duration, "worker.limiter.duration") or 0
            if dur < 1:
                raise ConfigurationError("worker.limiter.duration must be >= 1 ms")
            self.limiter = LimiterConfig(lim.max, dur)

    def _base_policy(self) -> Policy:
        r = self.retry
        if not isinstance(r.max_attempts, int) or r.max_attempts < 1:
            raise ConfigurationError(
                f"retry.max_attempts must be an int >= 1, got {r.max_attempts!r}"
            )
        policy = Policy(
            attempts=r.max_attempts,
            backoff=BackoffOptions(r.backoff_type, r.backoff_delay, r.max_backoff_delay),
        )
        return self.policy_for(self._defaults, policy)

    def policy_for(self, opts: Mapping[str, Any], base: Policy | None = None) -> Policy:
        """Resolve the execution policy of a job from its stored options."""
        b = base or self.policy
        p = Policy(
            b.attempts, b.backoff, b.timeout_ms, b.jitter_ms, b.keep_completed, b.keep_failed
        )
        if "attempts" in opts:
            p.attempts = opts["attempts"]
        if "backoff" in opts:
            p.backoff = BackoffOptions(**opts["backoff"])
        if "timeout" in opts:
            p.timeout_ms = opts["timeout"] or None
        if "jitter" in opts:
            p.jitter_ms = opts["jitter"]
        if "remove_on_complete" in opts:
            rc = opts["remove_on_complete"]
            p.keep_completed = RetentionPolicy(rc["count"], rc["age"])
        if "remove_on_fail" in opts:
            rf = opts["remove_on_fail"]
            p.keep_failed = RetentionPolicy(rf["count"], rf["age"])
        return p

    def _validate_options(self, opts: dict[str, Any], what: str) -> dict[str, Any]:
        bad = [k for k in opts if k not in JOB_OPTION_NAMES]
        if bad:
            raise _unknown(what, bad, sorted(JOB_OPTION_NAMES))
        for k, v in opts.items():
            if v is None or k in CORE_OPTION_NAMES:
                continue
            if k not in self.option_owners:
                raise ConfigurationError(
                    f"option {k!r} needs a feature that is not enabled on queue "
                    f"{self.name!r}; enable the feature that owns it, or drop the option"
                )
        dg = opts.get("delivery_guarantee")
        if dg is not None:
            try:
                dg = DeliveryGuarantee(dg)
            except ValueError:
                raise ConfigurationError(
                    f"delivery_guarantee must be 'at-least-once' or 'exactly-once', got {dg!r}"
                ) from None
            if (
                dg is DeliveryGuarantee.EXACTLY_ONCE
                and "delivery_guarantee" not in self.option_owners
            ):
                raise ConfigurationError(
                    "delivery_guarantee='exactly-once' needs the exactly-once feature, which "
                    f"is not enabled on queue {self.name!r}; for duplicate suppression alone "
                    "pass idempotency_key=..."
                )
        return opts

    def _normalize_options(self, opts: dict[str, Any], what: str) -> dict[str, Any]:
        """Validate values and convert them to the canonical stored form."""
        out: dict[str, Any] = {}
        for k, v in opts.items():
            if v is None:
                continue
            if k == "attempts":
                if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                    raise ConfigurationError(f"{what}: attempts must be an int >= 1, got {v!r}")
                out[k] = v
            elif k == "backoff":
                if isinstance(v, BackoffOptions):
                    out[k] = v.to_dict()
                elif isinstance(v, Mapping):
                    out[k] = coerce(BackoffOptions, v, f"{what}.backoff").to_dict()
                elif isinstance(v, (int, float)) and not isinstance(v, bool):
                    out[k] = BackoffOptions("fixed", v).to_dict()
                else:
                    raise ConfigurationError(
                        f"{what}: backoff must be a dict, BackoffOptions or ms, got {v!r}"
                    )
            elif k in ("timeout",):
                out[k] = to_ms(v, f"{what}.timeout")
            elif k in ("delay", "jitter"):
                out[k] = to_ms(v, f"{what}.{k}")
            elif k == "priority":
                if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= MAX_PRIORITY:
                    raise ConfigurationError(
                        f"{what}: priority must be an int from 0 to {MAX_PRIORITY} (higher runs "
                        f"first), got {v!r}"
                    )
                out[k] = v
            elif k in ("remove_on_complete", "remove_on_fail"):
                rp = RetentionPolicy.parse(v, f"{what}.{k}")
                out[k] = {"count": rp.count, "age": rp.age}
            elif k in ("job_id", "idempotency_key"):
                if not isinstance(v, str) or not v or len(v) > MAX_ID_LENGTH or "\n" in v:
                    raise ConfigurationError(
                        f"{what}: {k} must be a non-empty string of at most {MAX_ID_LENGTH} "
                        f"characters without line breaks, got {clip(repr(v), 100)}"
                    )
                out[k] = v
            elif k == "lifo":
                out[k] = bool(v)
            elif k == "delivery_guarantee":
                out[k] = DeliveryGuarantee(v).value
            else:
                out[k] = v
        return out

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

    @overload
    def process(self, job_name: str, *, mode: str = ...) -> Callable[[P], P]: ...

    @overload
    def process(self, job_name: str, fn: P, *, mode: str = ...) -> P: ...

    def process(self, job_name: str, fn: P | None = None, *, mode: str = "auto") -> Any:
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
        ``job.update_progress_sync`` / ``job.log_sync``.
        """
        if mode not in ("auto", "process"):
            raise ConfigurationError(f"mode must be 'auto' or 'process', got {mode!r}")

        def register(f: P) -> P:
            if not callable(f):
                raise ConfigurationError(f"processor for {job_name!r} must be callable")
            if mode == "process":
                if _is_coroutine_fn(f):
                    raise ConfigurationError(
                        f"processor for {job_name!r}: mode='process' takes a plain function, "
                        "not an async def"
                    )
                import_path(f)
            self.processors[job_name] = f
            self.processor_modes[job_name] = mode
            return f

        if fn is not None:
            return register(fn)
        return register

    def use_enqueue(self, middleware: EnqueueMiddleware) -> None:
        """Add enqueue middleware: ``fn(job_name, data, options) -> (job_name, data,
        options)``, sync or async, run by ``add_job``/``add_jobs`` before validation."""
        self.enqueue_middleware.append(middleware)

    def use_process(self, middleware: ProcessMiddleware) -> None:
        """Add process middleware: ``async fn(job, call_next) -> result`` around every run
        (first added is outermost). Register before the worker starts."""
        self.process_middleware.append(middleware)

    def own_options(self, feature: str, names: Iterable[str]) -> None:
        """Declare that ``feature`` handles the job options ``names`` on this queue."""
        for n in names:
            if n not in JOB_OPTION_NAMES:
                raise ConfigurationError(f"{feature}: {n!r} is not a job option")
            self.option_owners[n] = feature

    def add_service(self, service: Service) -> None:
        """Run ``service`` alongside every worker of this queue in this process (started
        with the worker, stopped with it); replaces a service with the same ``name``."""
        self.services = [s for s in self.services if s.name != service.name]
        self.services.append(service)

    def register_backoff(self, name: str, fn: Callable[..., Any]) -> None:
        """Register a custom backoff: ``fn(attempts_made, error, job) -> delay_ms | None``.

        Use it with ``backoff={"type": "custom", "strategy": name}``. Returning None
        stops retrying (the job fails for good).
        """
        self.backoff_strategies[name] = fn

    # ------------------------------------------------------------------ connection
    async def client(self) -> Any:
        """The shared Redis client (connects and loads the scripts on first use)."""
        if self._client is not None:
            return self._client
        if self._connect_lock is None:
            self._connect_lock = asyncio.Lock()
        async with self._connect_lock:
            if self._client is None:
                client = self.connection.client()
                # Errors are raised "from None": the message says it all, and a chain of
                # redis-py internals would only bury it (the original stays __context__).
                try:
                    # A server that accepts the connection but never answers (plain text
                    # sent to a TLS port, a stalled proxy) fails here within seconds.
                    await asyncio.wait_for(client.ping(), _CONNECT_TIMEOUT_S)
                    await self.scripts.load(client)
                except asyncio.TimeoutError:
                    if self.connection.owns(client):
                        await client.aclose()
                    raise ConnectionUnavailableError(
                        f"Redis at {self.connection.describe()} accepted the connection but "
                        f"did not answer within {_CONNECT_TIMEOUT_S:.0f} s (queue "
                        f"{self.name!r}); check the port and whether it expects TLS (rediss://)"
                    ) from None
                except AuthenticationError as exc:
                    if self.connection.owns(client):
                        await client.aclose()
                    raise ConnectionUnavailableError(
                        f"Redis at {self.connection.describe()} refused the credentials of "
                        f"queue {self.name!r} ({exc}); check the username and password given "
                        "in redis="
                    ) from None
                except NoPermissionError as exc:
                    if self.connection.owns(client):
                        await client.aclose()
                    raise permission_denied(str(exc)) from None
                except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                    if self.connection.owns(client):
                        await client.aclose()
                    raise ConnectionUnavailableError(
                        f"cannot reach Redis at {self.connection.describe()} for queue "
                        f"{self.name!r}: {exc}. Check the redis= setting and that the server "
                        "is running"
                    ) from None
                self._client = client
        return self._client

    def argv_head(self) -> tuple[str, str, str]:
        return self._argv_head

    async def run(self, script: str, args: Sequence[Any] = ()) -> Any:
        client = await self.client()
        return await self.scripts.call(client, script, self.keys.all, (*self._argv_head, *args))

    def call(self, script: str, args: Sequence[Any] = ()) -> ScriptCall:
        return ScriptCall(script, self.keys.all, (*self._argv_head, *args))

    # ------------------------------------------------------------------ producing
    def _prepare(self, name: str, data: Any, options: Mapping[str, Any]) -> list[Any]:
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"job name must be a non-empty string, got {name!r}")
        if len(name) > MAX_JOB_NAME_LENGTH or "\n" in name or "\r" in name:
            raise ConfigurationError(
                f"job name must be at most {MAX_JOB_NAME_LENGTH} characters without line "
                f"breaks, got {clip(repr(name), 100)}"
            )
        if options:
            opts = self._normalize_options(self._validate_options(dict(options), "job"), "job")
            merged = {**self._defaults, **opts}
        else:
            opts = {}
            merged = self._defaults
        raw = self.serializer.dumps(data)
        if len(raw) > self.max_payload_bytes:
            raise PayloadTooLargeError(
                f"job {name!r} payload is {len(raw)} bytes, above max_payload_bytes="
                f"{self.max_payload_bytes}; store large data elsewhere and pass a reference"
            )
        delay = merged.get("delay", 0)
        jitter = merged.get("jitter", 0)
        if jitter:
            delay += random.randint(0, jitter)
        stored = {
            k: v
            for k, v in opts.items()
            if k not in ("delay", "priority", "lifo", "job_id", "idempotency_key")
        }
        if "idempotency_key" in merged:
            stored["idempotency_key"] = merged["idempotency_key"]
        raw_opts = orjson.dumps(stored) if stored else b""
        if len(raw_opts) > MAX_OPTIONS_BYTES:
            raise ConfigurationError(
                f"job {name!r} options are {len(raw_opts)} bytes encoded, above "
                f"{MAX_OPTIONS_BYTES}; options carry ids and settings, put data in the payload"
            )
        return [
            merged.get("job_id", ""),
            name,
            raw,
            raw_opts,
            merged.get("priority", 0),
            delay,
            "1" if merged.get("lifo") else "0",
            merged.get("idempotency_key", ""),
        ]

    async def add_job(
        self,
        job_name: str,
        data: Any = None,
        options: JobOptions | Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> str:
        """Add a job; returns its id.

        Options are keyword arguments (``attempts=5, delay=1000, priority=10``) or a
        ``JobOptions``/dict. With ``job_id`` or ``idempotency_key`` matching an existing
        job, the existing id is returned and nothing is written.

        Raises:
            ConfigurationError: unknown or invalid option (the message names it).
            SerializationError: ``data`` is not JSON-serializable.
            PayloadTooLargeError: encoded data above ``max_payload_bytes``.
        """
        opts = {**_as_dict(options), **kwargs} if options is not None else kwargs
        if self.enqueue_middleware:
            job_name, data, opts = await self._through_middleware(job_name, data, opts)
        prepared = self._prepare(job_name, data, opts)
        if self._batching:
            # Another add_job is in flight: ride along in the next batch (one round trip
            # for every add_job issued meanwhile, e.g. from many coroutines).
            fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            self._pending.append((prepared, fut))
            return await fut
        self._batching = True
        try:
            ids = await self._enqueue([prepared], job_name)
        finally:
            if self._pending:
                task = asyncio.ensure_future(self._flush_pending())
                self._bg.add(task)
                task.add_done_callback(self._bg.discard)
            else:
                self._batching = False
        return ids[0]

    async def _flush_pending(self) -> None:
        try:
            while self._pending:
                batch = self._pending[:_ENQUEUE_CHUNK]
                del self._pending[:_ENQUEUE_CHUNK]
                try:
                    ids = await self._enqueue([p for p, _ in batch], None)
                except BaseException as exc:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    continue
                for (_, fut), job_id in zip(batch, ids, strict=True):
                    if not fut.done():
                        fut.set_result(job_id)
        finally:
            self._batching = False

    async def _through_middleware(
        self, name: str, data: Any, opts: Mapping[str, Any]
    ) -> tuple[str, Any, dict[str, Any]]:
        for mw in self.enqueue_middleware:
            out = mw(name, data, opts)
            if inspect.isawaitable(out):
                out = await out
            name, data, opts = out
        return name, data, dict(opts)

    async def add_jobs(self, jobs: Iterable[Any]) -> list[str]:
        """Add many jobs in few round trips; returns their ids in order.

        Each job is a dict ``{"name": ..., "data": ..., "options": {...}}`` (``opts`` is
        accepted for ``options``), or a tuple ``(name, data)`` / ``(name, data, options)``.
        All jobs are validated before any is written.
        """
        prepared: list[list[Any]] = []
        for i, j in enumerate(jobs):
            if isinstance(j, Mapping):
                extra = [k for k in j if k not in ("name", "data", "options", "opts")]
                if extra:
                    raise ConfigurationError(
                        f"add_jobs item {i}: unknown key(s) {extra}; use name, data, options"
                    )
                name, data = j.get("name"), j.get("data")
                opts = _as_dict(j.get("options", j.get("opts")))
            elif isinstance(j, (tuple, list)) and len(j) in (2, 3):
                name, data = j[0], j[1]
                opts = _as_dict(j[2]) if len(j) == 3 else {}
            else:
                raise ConfigurationError(
                    f"add_jobs item {i} must be a dict or a (name, data[, options]) tuple"
                )
            if self.enqueue_middleware:
                name, data, opts = await self._through_middleware(str(name or ""), data, opts)
            prepared.append(self._prepare(str(name or ""), data, opts))
        return await self._enqueue(prepared, None)

    async def _enqueue(self, prepared: list[list[Any]], name: str | None) -> list[str]:
        span = None
        if self.telemetry is not None:
            span = self.telemetry.start_span(
                "kitium.enqueue", {"queue": self.name, "job.count": len(prepared)}
            )
        try:
            client = await self.client()
            calls = []
            for chunk in _enqueue_chunks(prepared):
                args: list[Any] = [self.idempotency_ttl]
                for p in chunk:
                    args.extend(p)
                calls.append(self.call("enqueue", args))
            if len(calls) == 1:
                replies = [await self.scripts.call(client, "enqueue", calls[0].keys, calls[0].args)]
            else:
                replies = await self.scripts.pipeline(client, calls)
            ids: list[str] = []
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
                for k in range(0, len(reply), 2):
                    ids.append(reply[k].decode())
        except Exception as exc:
            if span is not None:
                span.record_exception(exc)
            raise
        finally:
            if span is not None:
                span.end()
        if self.metrics is not None:
            tags = {"queue": self.name, "job_name": name or "*"}
            self.metrics.increment("jobs.added", len(ids), tags)
        if self.emitter.wants("job-added"):
            for i, p in zip(ids, prepared, strict=True):
                self.emitter.emit(EventData("job-added", self.name, i, extra={"name": p[1]}))
        return ids

    # ------------------------------------------------------------------ queries
    async def get_job_status(self, job_id: str) -> JobInfo | None:
        """The stored record of a job, or None if it does not exist (or was removed)."""
        client = await self.client()
        pipe = client.pipeline(transaction=False)
        pipe.hgetall(self.keys.job(job_id))
        pipe.hget(self.keys.meta, "paused")
        raw, paused = await pipe.execute()
        if not raw:
            return None
        return self._info(job_id, raw, paused == b"1")

    async def get_job_logs(self, job_id: str, start: int = 0, end: int = -1) -> list[str]:
        """Log lines a processor wrote with ``job.log``."""
        client = await self.client()
        return [b.decode() for b in await client.lrange(self.keys.logs(job_id), start, end)]

    async def get_jobs_by_status(self, status: JobStatus | str, limit: int = 100) -> list[JobInfo]:
        """Jobs in a state: waiting/delayed/active in run order, finished ones newest first."""
        st = _status(status)
        if st is JobStatus.PENDING:
            return []
        client = await self.client()
        key = getattr(self.keys, _STATUS_SETS[st])
        if st is JobStatus.PAUSED and not await client.hget(self.keys.meta, "paused"):
            return []
        if st in _NEWEST_FIRST:
            ids = await client.zrevrange(key, 0, max(0, limit - 1))
        else:
            ids = await client.zrange(key, 0, max(0, limit - 1))
        return await self._infos([i.decode() for i in ids])

    async def _infos(self, ids: Sequence[str]) -> list[JobInfo]:
        if not ids:
            return []
        client = await self.client()
        pipe = client.pipeline(transaction=False)
        for i in ids:
            pipe.hgetall(self.keys.job(i))
        pipe.hget(self.keys.meta, "paused")
        *raws, paused = await pipe.execute()
        return [self._info(i, r, paused == b"1") for i, r in zip(ids, raws, strict=True) if r]

    def _info(self, job_id: str, raw: dict[bytes, bytes], paused: bool) -> JobInfo:
        g = raw.get
        st = JobStatus((g(b"st") or b"waiting").decode())
        if st is JobStatus.WAITING and paused:
            st = JobStatus.PAUSED
        raw_opts = g(b"o")
        opts: dict[str, Any] = orjson.loads(raw_opts) if raw_opts else {}
        data: Any = None
        if g(b"d") is not None:
            try:
                data = self.serializer.loads(g(b"d") or b"")
            except Exception:
                data = None
        result: Any = None
        if g(b"r"):
            try:
                result = self.serializer.loads(g(b"r") or b"", "result")
            except Exception:
                result = None
        progress: Any = orjson.loads(g(b"pg") or b"null") if g(b"pg") else None

        def num(key: bytes) -> int | None:
            v = g(key)
            return int(v) if v else None

        return JobInfo(
            id=job_id,
            name=(g(b"n") or b"").decode(),
            status=st,
            data=data,
            progress=progress,
            attempts=num(b"a") or 0,
            max_attempts=self.policy_for(opts).attempts,
            priority=num(b"p") or 0,
            created_at=num(b"ts"),
            started_at=num(b"ps"),
            finished_at=num(b"f"),
            delayed_until=num(b"due"),
            result=result,
            failed_reason=(g(b"e") or b"").decode() or None,
            stacktrace=(g(b"tb") or b"").decode() or None,
            last_error=(g(b"le") or b"").decode() or None,
            stalls=num(b"s") or 0,
            options=opts,
        )

    async def get_stats(self) -> QueueStats:
        """Counts per state, whether the queue is paused, and ``latency_ms``."""
        r = await self.run("stats")
        waiting, active, delayed, completed, failed, dlq = (int(x) for x in r[:6])
        is_paused = r[6] == b"1"
        oldest, now = int(r[7]), int(r[8])
        return QueueStats(
            waiting=waiting,
            active=active,
            delayed=delayed,
            completed=completed,
            failed=failed,
            dlq=dlq,
            paused=waiting if is_paused else 0,
            is_paused=is_paused,
            latency_ms=max(0, now - oldest) if oldest >= 0 else 0,
        )

    async def health_check(self) -> HealthStatus:
        """Ping Redis; healthy when it answers. Never raises."""
        loop = asyncio.get_running_loop()
        try:
            client = await self.client()
            t0 = loop.time()
            await asyncio.wait_for(client.ping(), _CONNECT_TIMEOUT_S)
            latency = (loop.time() - t0) * 1000
        except Exception as exc:
            return HealthStatus(
                False, None, self.connection.describe(), f"{type(exc).__name__}: {exc}"
            )
        running = self._worker is not None and self._worker.running
        return HealthStatus(True, round(latency, 3), self.connection.describe(), None, running)

    async def get_dlq_jobs(self, limit: int = 100) -> list[JobInfo]:
        """Dead-lettered jobs, newest first, with ``failed_reason`` and ``stacktrace``."""
        return await self.get_jobs_by_status(JobStatus.DLQ, limit)

    async def events(
        self, *, last_id: str = "$", block_ms: int = 5000, follow: bool = True
    ) -> AsyncIterator[StreamEvent]:
        """Iterate the durable event stream (events of every process, written atomically
        with each transition). ``last_id="0"`` replays what the stream still holds;
        ``follow=False`` stops when no event arrives within ``block_ms``."""
        client = self.connection.client(blocking=True)
        try:
            async for ev in read_stream(
                client, self.keys.events, last_id=last_id, block_ms=block_ms, follow=follow
            ):
                yield ev
        finally:
            if self.connection.owns(client):
                await client.aclose()

    # ------------------------------------------------------------------ management
    async def pause(self) -> None:
        """Pause for every worker: running jobs finish, nothing new starts."""
        await self.run("pause", ["1"])

    async def resume(self) -> None:
        """Resume a paused queue."""
        await self.run("pause", ["0"])

    async def drain(self, *, delayed: bool = True) -> int:
        """Remove every job that has not started (waiting and, by default, delayed).

        Running jobs are left to finish. Returns the number removed.
        """
        total = 0
        while True:
            n = int(await self.run("drain", ["1" if delayed else "0", 1000]))
            total += n
            if n == 0:
                return total

    async def clear(self, *, force: bool = False) -> None:
        """Delete every job and key of the queue.

        Refused with ``QueueActiveError`` while jobs run, unless ``force=True``.
        """
        while int(await self.run("clear", ["1" if force else "0", 1000])):
            pass

    async def retry_job(self, job_id: str) -> None:
        """Run a failed, dead-lettered or completed job again with fresh attempts.

        Raises ``JobNotFoundError`` or ``JobStateError`` (waiting/active/delayed jobs).
        """
        await self.run("retry", ["ids", job_id])

    async def bulk_retry(
        self, status: JobStatus | str = JobStatus.FAILED, limit: int = 1000
    ) -> int:
        """Retry up to ``limit`` jobs of a state (failed, dlq or completed), oldest first."""
        st = _status(status)
        moved = 0
        while moved < limit:
            batch = min(1000, limit - moved)
            ids = await self.run("retry", ["state", st.value, batch])
            moved += len(ids)
            if len(ids) < batch:
                break
        return moved

    async def replay_dlq(self, limit: int = 1000) -> int:
        """Move up to ``limit`` dead-lettered jobs back to waiting; returns how many."""
        moved = 0
        while moved < limit:
            batch = min(1000, limit - moved)
            ids = await self.run("replay", [batch])
            moved += len(ids)
            if len(ids) < batch:
                break
        return moved

    async def remove_job(self, job_id: str) -> bool:
        """Delete a job that is not running. Returns False if it did not exist.

        Raises ``JobActiveError`` for a running job (use ``cancel_job``).
        """
        (status,) = await self.run("remove", [job_id])
        if status == b"active":
            raise JobActiveError(
                f"job {job_id} is running; cancel it with cancel_job() or wait for it"
            )
        return bool(status == b"removed")

    async def cancel_job(self, job_id: str) -> str:
        """Stop a job: a waiting or delayed job is removed; a running one is stopped by its
        worker at the next lease renewal and recorded as failed (no retry).

        Returns ``"removed"``, ``"cancelling"`` or ``"finished"`` (nothing to cancel).
        """
        (status,) = await self.run("cancel", [job_id])
        if status == b"missing":
            raise JobNotFoundError(f"job {job_id} does not exist in queue {self.name!r}")
        return {"removed": "removed", "flagged": "cancelling"}.get(status.decode(), "finished")

    async def promote_delayed(self, limit: int = 1000) -> int:
        """Move due delayed jobs to waiting now (workers also do this themselves)."""
        return int(await self.run("promote", [limit, "1" if self.dlq.enabled else "0"]))

    async def recover_stalled(self, limit: int = 1000) -> tuple[list[str], list[str]]:
        """Requeue jobs whose lease expired; returns (requeued ids, dead-lettered ids)."""
        back, dead = await self.run(
            "recover",
            [self.settings.max_stalled_count, "1" if self.dlq.enabled else "0", limit],
        )
        return [b.decode() for b in back], [b.decode() for b in dead]

    # ------------------------------------------------------------------ schedules
    # Scheduling, flow control and batches live in their own modules (schedules.py,
    # scheduler.py, flowcontrol.py, batches.py), imported on first use. docs/scheduling.md
    # describes every option.
    @property
    def schedules(self) -> ScheduleStore:
        """The schedules of this queue in Redis (list, get, update, pause, remove)."""
        if self._schedules is None:
            from .schedules import ScheduleStore

            self._schedules = ScheduleStore(self)
        return self._schedules

    async def schedule_job(
        self, job_name: str, data: Any, cron_pattern: str, **options: Any
    ) -> Schedule:
        """Enqueue ``job_name`` on a cron schedule; upserts by schedule id.

        ``cron_pattern``: 5 fields (minute hour day month weekday) or 6 with seconds
        first; ``@hourly``-style aliases. Schedule options: ``schedule_id`` (default
        ``"<job_name>@<pattern>"``), ``tz`` ("UTC"), ``start_date``, ``end_date``,
        ``limit`` (runs), ``jitter`` (0 ms), ``misfire`` ("run_once" | "skip" |
        "catch_up" | ("catch_up", N)), ``misfire_grace`` (1000 ms), ``overlap``
        ("allow" | "skip"); any other keyword is a job option (attempts, priority, ...).
        Any worker's scheduler fires it, each tick once. Raises ``ConfigurationError``
        for a malformed pattern or option.

        Example::

            await queue.schedule_job("report", {}, "0 2 * * *", tz="Europe/Berlin")
        """
        sched, job_opts = _split_schedule_options(options)
        return await self.schedules.declare(job_name, data, cron=cron_pattern,
                                            options=job_opts, **sched)

    async def schedule_every(
        self, job_name: str, data: Any, interval_ms: Any, **options: Any
    ) -> Schedule:
        """Enqueue ``job_name`` every ``interval_ms`` (ms or timedelta), ticks aligned
        on ``start_date`` (default: the Unix epoch). Same options as ``schedule_job``;
        ``jitter`` delays each run by up to that many ms, never past the next tick.

        Example::

            await queue.schedule_every("heartbeat", {"svc": "api"}, 30_000, jitter=2000)
        """
        sched, job_opts = _split_schedule_options(options)
        return await self.schedules.declare(job_name, data, every=interval_ms,
                                            options=job_opts, **sched)

    async def get_schedules(self) -> list[Schedule]:
        """Every schedule of this queue, oldest first."""
        return await self.schedules.list()

    async def get_schedule(self, schedule_id: str) -> Schedule | None:
        """One schedule (definition and state), or None."""
        return await self.schedules.get(schedule_id)

    async def update_schedule(self, schedule_id: str, **changes: Any) -> Schedule:
        """Change some fields of a schedule (``data``, ``cron_pattern``, ``interval_ms``,
        schedule or job options); raises ``ScheduleNotFoundError``."""
        return await self.schedules.update(schedule_id, **changes)

    async def remove_schedule(self, schedule_id: str) -> bool:
        """Delete a schedule (jobs it enqueued stay); False if it did not exist."""
        return await self.schedules.remove(schedule_id)

    async def pause_schedule(self, schedule_id: str) -> bool:
        """Stop a schedule from firing; False if it does not exist."""
        return await self.schedules.pause(schedule_id)

    async def resume_schedule(self, schedule_id: str) -> bool:
        """Resume a paused schedule at its next tick from now; False if it does not exist."""
        return await self.schedules.resume(schedule_id)

    # ------------------------------------------------------------------ flow control
    @property
    def flow(self) -> FlowControl:
        """Per-key rate limits and concurrency caps of this queue (enabled on first use)."""
        if self._flow is None:
            from .flowcontrol import FlowControl

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
        self, job_name: str, fn: Callable[..., Any] | None = None, *, size: int,
        min_size: int = 1, max_wait: Any = 1000,
    ) -> Any:
        """Register a batch processor: ``fn(jobs)`` gets up to ``size`` jobs at once.

        A batch is handed over when it is full, when the jobs claimed together arrived
        and it has ``min_size``, or ``max_wait`` ms after its first job. ``fn`` returns
        a list (a result or an exception per job), a dict by job id, or None; raising
        fails them all. Each job keeps its own lease, timeout, retries and outcome.
        Usable as a decorator.
        """
        from .batches import BatchProcessor

        def register(f: Callable[..., Any]) -> Callable[..., Any]:
            self.processors[job_name] = BatchProcessor(
                f, size=size, min_size=min_size, max_wait=max_wait
            )
            self.processor_modes.pop(job_name, None)
            if self.worker_config.concurrency < size:
                log.warning(
                    "queue %s: batch size %d of %r exceeds worker.concurrency=%d; batches "
                    "will hold at most %d jobs", self.name, size, job_name,
                    self.worker_config.concurrency, self.worker_config.concurrency,
                )
            return f

        return register(fn) if fn is not None else register

    # ------------------------------------------------------------------ workers
    async def start(self, *, concurrency: int | None = None) -> None:
        """Start consuming in this process (returns once the worker runs)."""
        from .worker import Worker

        if self._worker is not None and self._worker.running:
            return
        if self.worker_config.scheduler and not any(s.name == "scheduler" for s in self.services):
            from .scheduler import Scheduler

            self.services.append(Scheduler())
        self._worker = Worker(self, concurrency=concurrency)
        try:
            await self._worker.start()
        except BaseException:
            # Never started: forget it, or close() would wait forever for it to stop.
            self._worker = None
            raise

    async def run_worker(
        self, *, concurrency: int | None = None, install_signal_handlers: bool = True
    ) -> None:
        """Run a worker until SIGTERM/SIGINT (or ``close()``), then shut down gracefully."""
        from .worker import serve_until_stopped

        await self.start(concurrency=concurrency)
        await serve_until_stopped(
            self._worker.stopped, self.close, install_signal_handlers=install_signal_handlers
        )

    @property
    def worker(self) -> Any:
        """The running ``Worker`` of this process, if any."""
        return self._worker

    async def close(self) -> None:
        """Stop the worker gracefully (if any) and release connections."""
        if self._worker is not None:
            await self._worker.stop()
        await self.emitter.drain()
        client, self._client = self._client, None
        if client is not None:
            self.scripts.forget(client)
            if self.connection.owns(client):
                await client.aclose()

    async def __aenter__(self) -> JobQueue:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _is_coroutine_fn(fn: Any) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004
    )


def _enqueue_chunks(prepared: list[list[Any]]) -> Iterator[list[list[Any]]]:
    """Split prepared jobs into enqueue calls of at most ENQUEUE_CHUNK_JOBS jobs and about
    ENQUEUE_CHUNK_BYTES of payload: one script call runs alone on the server, and Redis
    drops a client whose single command outgrows its query buffer."""
    chunk: list[list[Any]] = []
    size = 0
    for p in prepared:
        n = len(p[2])
        if chunk and (len(chunk) >= ENQUEUE_CHUNK_JOBS or size + n > ENQUEUE_CHUNK_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(p)
        size += n
    if chunk:
        yield chunk


def _as_dict(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, JobOptions):
        return {
            f.name: getattr(value, f.name)
            for f in fields(value)
            if getattr(value, f.name) is not None
        }
    if isinstance(value, Mapping):
        return dict(value)
    raise ConfigurationError(f"options must be a dict or JobOptions, got {type(value).__name__}")


_SCHEDULE_OPTIONS = ("schedule_id", "tz", "start_date", "end_date", "limit", "jitter",
                     "misfire", "misfire_grace", "overlap")


def _split_schedule_options(options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    sched = {k: v for k, v in options.items() if k in _SCHEDULE_OPTIONS}
    return sched, {k: v for k, v in options.items() if k not in _SCHEDULE_OPTIONS}


def _status(status: JobStatus | str) -> JobStatus:
    try:
        return JobStatus(status)
    except ValueError:
        raise ConfigurationError(
            f"unknown status {status!r}; use one of {[s.value for s in JobStatus]}"
        ) from None
