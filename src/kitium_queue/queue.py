"""``JobQueue``: configuration, producer, query and admin API of one queue."""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import random
import re
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import timedelta
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
    PartialEnqueueError,
    PayloadTooLargeError,
)
from .events import (
    PROGRESS_BYTES_FIELD,
    EventData,
    EventEmitter,
    Handler,
    StreamEvent,
    read_stream,
)
from .job import JobInfo
from .keys import QueueKeys
from .limits import (
    ENQUEUE_CHUNK_BYTES,
    ENQUEUE_CHUNK_JOBS,
    MAX_DELAY_MS,
    MAX_ID_LENGTH,
    MAX_JOB_NAME_LENGTH,
    MAX_OPTIONS_BYTES,
    clip,
)
from .middleware import EnqueueMiddleware, ProcessMiddleware, Service
from .options import (
    CORE_OPTION_NAMES,
    JOB_OPTION_NAMES,
    MAX_CONCURRENCY,
    MAX_COUNT,
    MAX_EVENTS_MAX_LEN,
    MAX_LOG_LINES,
    MAX_PAYLOAD_LIMIT,
    MAX_PRIORITY,
    MAX_QUERY_LIMIT,
    BackoffOptions,
    DLQConfig,
    JobOptions,
    LimiterConfig,
    Policy,
    QueueSettings,
    RetentionPolicy,
    RetryConfig,
    WorkerConfig,
    _shown,
    _unknown,
    check_text,
    coerce,
    has_bad_char,
    to_int,
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
        # Ranges: README "Limits and ranges". Checked here, at construction, so a bad
        # value never reaches a script (where it would fail after the job's first write).
        self.events_max_len = to_int(
            events_max_len, "events_max_len", minimum=0, maximum=MAX_EVENTS_MAX_LEN
        )
        self.idempotency_ttl = to_ms(idempotency_ttl, "idempotency_ttl", minimum=1)
        self.max_payload_bytes = to_int(
            max_payload_bytes, "max_payload_bytes", minimum=1, maximum=MAX_PAYLOAD_LIMIT
        )
        self.max_log_lines = to_int(
            max_log_lines, "max_log_lines", minimum=0, maximum=MAX_LOG_LINES
        )
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
        to_int(s.max_stalled_count, "settings.max_stalled_count", minimum=0, maximum=MAX_COUNT)
        self.lock_duration_ms = to_ms(s.lock_duration, "settings.lock_duration")
        if self.lock_duration_ms < 100:
            raise ConfigurationError("settings.lock_duration must be at least 100 ms")
        renew = to_ms(
            s.lock_renew_time, "settings.lock_renew_time", allow_none=True, minimum=1
        )
        self.lock_renew_ms = renew if renew is not None else max(50, self.lock_duration_ms // 2)
        if self.lock_renew_ms >= self.lock_duration_ms:
            raise ConfigurationError(
                f"settings.lock_renew_time ({self.lock_renew_ms} ms) must be shorter than "
                f"lock_duration ({self.lock_duration_ms} ms), or leases expire between renewals"
            )
        self.stalled_interval_ms = to_ms(
            s.max_stalled_interval, "settings.max_stalled_interval", minimum=1
        )
        w = self.worker_config
        to_int(w.concurrency, "worker.concurrency", minimum=1, maximum=MAX_CONCURRENCY)
        self.shutdown_timeout_ms = to_ms(w.shutdown_timeout, "worker.shutdown_timeout")
        self.limiter: LimiterConfig | None = None
        if w.limiter is not None:
            lim = coerce(LimiterConfig, w.limiter, "worker.limiter")
            limit_max = to_int(lim.max, "worker.limiter.max", minimum=1, maximum=MAX_COUNT)
            dur = to_ms(lim.duration, "worker.limiter.duration", minimum=1)
            self.limiter = LimiterConfig(limit_max, dur)

    def _base_policy(self) -> Policy:
        r = self.retry
        attempts = to_int(r.max_attempts, "retry.max_attempts", minimum=1, maximum=MAX_COUNT)
        policy = Policy(
            attempts=attempts,
            backoff=BackoffOptions(r.backoff_type, r.backoff_delay, r.max_backoff_delay),
        )
        return self.policy_for(self._defaults, policy)

    def policy_for(self, opts: Mapping[str, Any], base: Policy | None = None) -> Policy:
        """Resolve the execution policy of a job from its stored options.

        Options come from Redis and may have been damaged (by hand, by another client):
        an entry that is not valid is ignored, and the queue's default applies to it.
        """
        return _resolve_policy(opts, base or self.policy)[0]

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
        """Validate values and convert them to the canonical stored form.

        Every value is checked against its documented range (README, "Limits and
        ranges"); text values (ids, keys, feature options) must be encodable and free of
        control characters. Errors are ``ConfigurationError`` naming the option.
        """
        out: dict[str, Any] = {}
        for k, v in opts.items():
            if v is None:
                continue
            if k == "attempts":
                out[k] = to_int(v, f"{what}: attempts", minimum=1, maximum=MAX_COUNT)
            elif k == "backoff":
                if isinstance(v, BackoffOptions):
                    out[k] = v.to_dict()
                elif isinstance(v, Mapping):
                    out[k] = coerce(BackoffOptions, v, f"{what}.backoff").to_dict()
                elif isinstance(v, (int, float, timedelta)) and not isinstance(v, bool):
                    out[k] = BackoffOptions("fixed", v).to_dict()
                else:
                    raise ConfigurationError(
                        f"{what}: backoff must be a dict, BackoffOptions or ms, got {_shown(v)}"
                    )
            elif k in ("timeout", "delay", "jitter"):
                # timeout: 0 = no limit; a positive value below 1 ms becomes 1 ms (to_ms),
                # so timeout=0.4 cannot turn into "no limit".
                out[k] = to_ms(v, f"{what}.{k}")
            elif k == "priority":
                if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= MAX_PRIORITY:
                    raise ConfigurationError(
                        f"{what}: priority must be an int from 0 to {MAX_PRIORITY} (higher runs "
                        f"first), got {_shown(v)}"
                    )
                out[k] = int(v)
            elif k in ("remove_on_complete", "remove_on_fail"):
                rp = RetentionPolicy.parse(v, f"{what}.{k}")
                out[k] = {"count": rp.count, "age": rp.age}
            elif k == "job_id":
                out[k] = _check_job_id(v, f"{what}: job_id")
            elif k == "idempotency_key":
                out[k] = check_text(v, f"{what}: idempotency_key", max_len=MAX_ID_LENGTH)
            elif k == "lifo":
                if not isinstance(v, bool) and v not in (0, 1):
                    raise ConfigurationError(f"{what}: lifo must be a bool, got {_shown(v)}")
                out[k] = bool(v)
            elif k == "delivery_guarantee":
                out[k] = DeliveryGuarantee(v).value
            else:
                # A feature's option (group, tenant, rate-limit key, ...): ids and keys,
                # stored in the job's options and often in key names. Refuse text that
                # cannot be encoded or holds control characters, here, so the job fails
                # alone instead of the batch it would join.
                _check_option_text(v, f"{what}: {k}")
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
                        f"queue {self.name!r} ({self.connection.redact(exc)}); check the "
                        "username and password given in redis="
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
                        f"{self.name!r}: {self.connection.redact(exc)}. Check the redis= "
                        "setting and that the server is running"
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
        """Validate and encode one job into its enqueue arguments.

        Everything that reaches Redis is checked and encoded here, per job, before the
        job joins a batch (``add_job`` coalesces concurrent calls; ``add_jobs`` sends
        chunks): a name, id, key or option that cannot be encoded, or data that is not
        JSON, fails this job alone with a library error naming what is wrong.
        """
        check_text(name, "job name", max_len=MAX_JOB_NAME_LENGTH)
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
            # Each is at most MAX_DELAY_MS; so is their sum.
            delay = min(delay + random.randint(0, jitter), MAX_DELAY_MS)
        stored = {
            k: v
            for k, v in opts.items()
            if k not in ("delay", "priority", "lifo", "job_id", "idempotency_key")
        }
        if "idempotency_key" in merged:
            stored["idempotency_key"] = merged["idempotency_key"]
        try:
            raw_opts = orjson.dumps(stored) if stored else b""
        except TypeError as exc:  # orjson.JSONEncodeError: a feature option's odd value
            raise ConfigurationError(
                f"job {name!r} options cannot be encoded as JSON ({exc}); option values must "
                "be strings, numbers, booleans or lists of them, without lone surrogates"
            ) from None
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
                    # Callers whose jobs are known written get their ids; only the others
                    # get the error (the underlying one, not the batch's bookkeeping).
                    written: list[str] = []
                    err: BaseException = exc
                    if isinstance(exc, PartialEnqueueError):
                        written = exc.written_ids
                        err = exc.__cause__ or exc
                    for i, (_, fut) in enumerate(batch):
                        if fut.done():
                            continue
                        if i < len(written):
                            fut.set_result(written[i])
                        else:
                            fut.set_exception(err)
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

        The call is not one transaction: the jobs go in chunks of at most
        ``ENQUEUE_CHUNK_JOBS`` jobs (and about ``ENQUEUE_CHUNK_BYTES`` of payload), one
        atomic script call per chunk, sent one after the other, each with its own reply
        deadline (``scripts.REPLY_TIMEOUT_S``). So a large call never holds Redis for
        long, and a failure is pinned to one chunk.

        Raises:
            PartialEnqueueError: a chunk failed after earlier ones were written, or the
                server refused a job; ``written_ids`` lists the ids of the jobs known
                written (in order), ``failed_from`` the index of the first job that is
                not. Retrying ``jobs[failed_from:]`` is idempotent when those jobs carry
                a ``job_id`` or an ``idempotency_key`` (jobs already written come back
                as the existing ids, nothing is written twice); jobs with auto ids may
                be added twice by such a retry if the failed chunk was in fact written.
            ConfigurationError, SerializationError, PayloadTooLargeError: a job is
                invalid; nothing was written.
            Other errors (connection, timeout, permission) from the first chunk: no job
                is known written; the first chunk's jobs may or may not be.
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
        ids: list[str] = []

        def announce() -> None:
            if self.metrics is not None:
                tags = {"queue": self.name, "job_name": name or "*"}
                self.metrics.increment("jobs.added", len(ids), tags)
            if self.emitter.wants("job-added"):
                for i, p in zip(ids, prepared, strict=False):
                    self.emitter.emit(EventData("job-added", self.name, i, extra={"name": p[1]}))

        try:
            client = await self.client()
            keys = self.keys.all
            failure: PartialEnqueueError | None = None
            # One script call per chunk, each awaited before the next is sent: every call
            # has its own reply deadline (a pipeline of all chunks shared one, and a
            # timeout left an unknown subset written), and when one fails, every job of
            # the chunks before it is known to be in Redis.
            for chunk in _enqueue_chunks(prepared):
                args: list[Any] = [*self._argv_head, self.idempotency_ttl]
                for p in chunk:
                    args.extend(p)
                try:
                    reply = await self.scripts.call(client, "enqueue", keys, args)
                except Exception as exc:
                    if not ids:
                        raise  # nothing of this call is known written: the error as it is
                    failure = _partial_enqueue(
                        ids, len(prepared), f"{type(exc).__name__}: {exc}", unknown=True
                    )
                    failure.__cause__ = exc
                    break
                for k in range(0, len(reply), 2):
                    if reply[k + 1] == b"err":
                        # The script refused this job before writing any of it, and
                        # stopped there: the rest of the chunk was not written either.
                        failure = _partial_enqueue(
                            ids, len(prepared), reply[k].decode(), unknown=False
                        )
                        break
                    ids.append(reply[k].decode())
                if failure is not None:
                    break
            if failure is not None:
                # The jobs before the failure are in Redis: count and announce them, but
                # never let an adapter error hide which ones they are.
                try:
                    announce()
                except Exception:
                    log.exception("queue %s: reporting the jobs added failed", self.name)
                raise failure
        except Exception as exc:
            if span is not None:
                span.record_exception(exc)
            raise
        finally:
            if span is not None:
                span.end()
        announce()
        return ids

    # ------------------------------------------------------------------ queries
    async def get_job_status(self, job_id: str) -> JobInfo | None:
        """The stored record of a job, or None if it does not exist (or was removed).

        A damaged record (options that are not JSON, an unknown state, counters that are
        not numbers, text that is not UTF-8) is returned as a ``JobInfo`` with ``damaged`` set whose
        ``damaged`` says what is wrong, never as an exception.

        Raises ``ConfigurationError`` for an id that cannot name a job (not a string or
        int, or holding a lone surrogate).
        """
        jid = _query_id(job_id)
        client = await self.client()
        pipe = client.pipeline(transaction=False)
        pipe.hgetall(self.keys.job(jid))
        pipe.hget(self.keys.meta, "paused")
        raw, paused = await pipe.execute()
        if not raw:
            return None
        found_in = None
        if _stored_status(raw) is None:
            # Unknown state on the record: say where the job actually is, if anywhere.
            found_in = await self._find_state(jid)
        return self._info(jid, raw, paused == b"1", found_in)

    async def _find_state(self, job_id: str) -> JobStatus | None:
        client = await self.client()
        pipe = client.pipeline(transaction=False)
        for _, attr in _STATE_SETS:
            pipe.zscore(getattr(self.keys, attr), job_id)
        scores = await pipe.execute()
        for (status, _), score in zip(_STATE_SETS, scores, strict=True):
            if score is not None:
                return status
        return None

    async def get_job_logs(self, job_id: str, start: int = 0, end: int = -1) -> list[str]:
        """Log lines a processor wrote with ``job.log`` (``start``/``end`` as in
        ``LRANGE``: 0-based, negative counts from the end, ``end`` inclusive)."""
        jid = _query_id(job_id)
        first = to_int(start, "start", minimum=-_MAX_INDEX, maximum=_MAX_INDEX)
        last = to_int(end, "end", minimum=-_MAX_INDEX, maximum=_MAX_INDEX)
        client = await self.client()
        lines = await client.lrange(self.keys.logs(jid), first, last)
        # Lines are written as UTF-8; anything else (a damaged list) is shown escaped.
        return [b.decode("utf-8", "backslashreplace") for b in lines]

    async def get_jobs_by_status(self, status: JobStatus | str, limit: int = 100) -> list[JobInfo]:
        """Jobs in a state: waiting/delayed/active in run order, finished ones newest first.

        ``limit``: an int from 0 (returns nothing) to ``MAX_QUERY_LIMIT`` (100,000);
        anything else raises ``ConfigurationError``. A damaged record is returned as a
        ``JobInfo`` with ``damaged`` set (see ``get_job_status``) and the others as usual.
        """
        st = _status(status)
        n = _query_limit(limit)
        if st is JobStatus.PENDING or n == 0:
            return []
        client = await self.client()
        key = getattr(self.keys, _STATUS_SETS[st])
        if st is JobStatus.PAUSED and not await client.hget(self.keys.meta, "paused"):
            return []
        if st in _NEWEST_FIRST:
            ids = await client.zrevrange(key, 0, n - 1)
        else:
            ids = await client.zrange(key, 0, n - 1)
        found_in = JobStatus.WAITING if st is JobStatus.PAUSED else st
        return await self._infos(ids, found_in)

    async def _infos(
        self, ids: Sequence[str | bytes], found_in: JobStatus | None = None
    ) -> list[JobInfo]:
        """The records of ``ids`` (as read from a state set: bytes are used as they are,
        so a member that is not UTF-8 is still looked up and shown escaped)."""
        if not ids:
            return []
        client = await self.client()
        base = self.keys.job("")
        base_b = base.encode()
        pipe = client.pipeline(transaction=False)
        for i in ids:
            pipe.hgetall(base_b + i if isinstance(i, bytes) else base + i)
        pipe.hget(self.keys.meta, "paused")
        *raws, paused = await pipe.execute()
        out: list[JobInfo] = []
        for i, r in zip(ids, raws, strict=True):
            if not r:
                continue
            problems: list[str] = []
            if isinstance(i, bytes):
                try:
                    jid = i.decode()
                except UnicodeDecodeError:
                    jid = i.decode("utf-8", "backslashreplace")
                    problems.append("job id is not valid UTF-8")
            else:
                jid = i
            out.append(self._info(jid, r, paused == b"1", found_in, problems))
        return out

    def _info(
        self,
        job_id: str,
        raw: Mapping[bytes, bytes],
        paused: bool,
        found_in: JobStatus | None = None,
        problems: list[str] | None = None,
    ) -> JobInfo:
        """A ``JobInfo`` from a job hash; never raises on damaged fields (it returns a
        ``JobInfo`` with ``damaged`` set naming them). ``found_in``: the state set the job was found
        in, used when the record's own state is unknown."""
        g = raw.get
        damage = list(problems or ())

        def text(key: bytes, what: str) -> str | None:
            v = g(key)
            if not v:
                return None
            try:
                return v.decode()
            except UnicodeDecodeError:
                damage.append(f"{what} is not valid UTF-8")
                return v.decode("utf-8", "backslashreplace")

        def num(key: bytes, what: str) -> int | None:
            v = g(key)
            if not v:
                return None
            try:
                return int(v)
            except ValueError:
                pass
            try:
                f = float(v)
            except ValueError:
                f = math.nan
            if math.isfinite(f):
                return int(f)
            damage.append(f"{what} is not a number: {_shown(v)}")
            return None

        st = _stored_status(raw)
        if st is None:
            damage.append(f"unknown state {_shown(g(b'st'))}")
            st = found_in or JobStatus.PENDING
        if st is JobStatus.WAITING and paused:
            st = JobStatus.PAUSED
        opts: dict[str, Any] = {}
        raw_opts = g(b"o")
        if raw_opts:
            try:
                parsed = orjson.loads(raw_opts)
            except orjson.JSONDecodeError:
                damage.append("options are not valid JSON")
            else:
                if isinstance(parsed, dict):
                    opts = parsed
                else:
                    damage.append("options are not a JSON object")
        policy, bad_opts = _resolve_policy(opts, self.policy)
        damage.extend(bad_opts)
        data: Any = None
        if g(b"d") is not None:
            try:
                data = self.serializer.loads(g(b"d") or b"")
            except Exception as exc:
                damage.append(f"data cannot be decoded ({clip(str(exc), 200)})")
        result: Any = None
        if g(b"r"):
            try:
                result = self.serializer.loads(g(b"r") or b"", "result")
            except Exception as exc:
                damage.append(f"result cannot be decoded ({clip(str(exc), 200)})")
        progress: Any = None
        if g(b"pg"):
            try:
                progress = orjson.loads(g(b"pg") or b"null")
            except orjson.JSONDecodeError:
                damage.append("progress is not valid JSON")

        values: dict[str, Any] = {
            "id": job_id,
            "name": text(b"n", "name") or "",
            "status": st,
            "data": data,
            "progress": progress,
            "attempts": num(b"a", "attempts") or 0,
            "max_attempts": policy.attempts,
            "priority": num(b"p", "priority") or 0,
            "created_at": num(b"ts", "created_at"),
            "started_at": num(b"ps", "started_at"),
            "finished_at": num(b"f", "finished_at"),
            "delayed_until": num(b"due", "delayed_until"),
            "result": result,
            "failed_reason": text(b"e", "failed_reason"),
            "stacktrace": text(b"tb", "stacktrace"),
            "last_error": text(b"le", "last_error"),
            "stalls": num(b"s", "stalls") or 0,
            "options": opts,
        }
        if damage:
            return JobInfo(**values, damaged="; ".join(damage))
        return JobInfo(**values)

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
            # The error may quote the connection (a redis-py message, a bad setting): it
            # goes through the same redaction as ``backend`` (never the raw text).
            error = f"{type(exc).__name__}: {self.connection.redact(exc)}"
            return HealthStatus(False, None, self.connection.describe(), error)
        running = self._worker is not None and self._worker.running
        return HealthStatus(True, round(latency, 3), self.connection.describe(), None, running)

    async def get_dlq_jobs(self, limit: int = 100) -> list[JobInfo]:
        """Dead-lettered jobs, newest first, with ``failed_reason`` and ``stacktrace``.

        ``limit``: 0 to ``MAX_QUERY_LIMIT`` (100,000), as in ``get_jobs_by_status``.
        """
        return await self.get_jobs_by_status(JobStatus.DLQ, limit)

    async def events(
        self, *, last_id: str = "$", block_ms: int = 5000, follow: bool = True
    ) -> AsyncIterator[StreamEvent]:
        """Iterate the durable event stream (events of every process, written atomically
        with each transition). ``last_id="0"`` replays what the stream still holds;
        ``follow=False`` stops when no event arrives within ``block_ms`` (1 ms to 10
        years; with ``follow=True`` 0 is allowed too and waits without a deadline).

        A ``job-progress`` event whose value was too large for the stream (it carries
        ``progress_bytes``) gets ``progress`` from the job record, see ``StreamEvent``.
        """
        if not _is_stream_id(last_id):
            raise ConfigurationError(
                f"last_id must be '$' (new events only), '0' (from the start) or a stream "
                f"id such as '1700000000000-0', got {_shown(last_id)}"
            )
        block = to_int(
            block_ms, "block_ms", minimum=0 if follow else 1, maximum=MAX_DELAY_MS
        )
        client = self.connection.client(blocking=True)
        try:
            async for ev in read_stream(
                client, self.keys.events, last_id=last_id, block_ms=block, follow=follow
            ):
                if ev.event == "job-progress" and PROGRESS_BYTES_FIELD in ev.fields:
                    ev = await self._with_progress(ev)
                yield ev
        finally:
            if self.connection.owns(client):
                await client.aclose()

    async def _with_progress(self, ev: StreamEvent) -> StreamEvent:
        """``ev`` with ``progress`` read from its job's record (left out if it is gone)."""
        fields_ = dict(ev.fields)
        try:
            jid = _query_id(ev.job_id)
        except ConfigurationError:
            return ev
        raw = await (await self.client()).hget(self.keys.job(jid), "pg")
        if raw is not None:
            fields_["progress"] = raw.decode("utf-8", "backslashreplace")
        return StreamEvent(ev.id, ev.event, ev.job_id, fields_)

    # ------------------------------------------------------------------ management
    async def pause(self) -> None:
        """Pause for every worker: running jobs finish, nothing new starts."""
        await self.run("pause", ["1"])

    async def resume(self) -> None:
        """Resume a paused queue."""
        await self.run("pause", ["0"])

    async def drain(self, *, delayed: bool = True) -> int:
        """Remove every job that has not started (waiting and, by default, delayed).

        Running jobs are left to finish. Returns the number removed. Works in script calls
        of at most 1000 jobs, so Redis serves other clients in between.
        """
        total = 0
        while True:
            n = int(await self.run("drain", ["1" if delayed else "0", _ADMIN_BATCH]))
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
        await self.run("retry", ["ids", _query_id(job_id)])

    async def bulk_retry(
        self, status: JobStatus | str = JobStatus.FAILED, limit: int = 1000
    ) -> int:
        """Retry up to ``limit`` jobs of a state (failed, dlq or completed), oldest first.

        ``limit`` is an int >= 0 (else ``ConfigurationError``); the jobs move in script
        calls of at most 1000, each atomic. Returns how many moved.
        """
        st = _status(status)
        limit = _check_limit(limit, "bulk_retry limit")
        moved = 0
        while moved < limit:
            batch = min(_ADMIN_BATCH, limit - moved)
            ids = await self.run("retry", ["state", st.value, batch])
            moved += len(ids)
            if len(ids) < batch:
                break
        return moved

    async def replay_dlq(self, limit: int = 1000) -> int:
        """Move up to ``limit`` dead-lettered jobs back to waiting; returns how many.

        ``limit`` is an int >= 0 (else ``ConfigurationError``); the jobs move in script
        calls of at most 1000, each atomic.
        """
        limit = _check_limit(limit, "replay_dlq limit")
        moved = 0
        while moved < limit:
            batch = min(_ADMIN_BATCH, limit - moved)
            ids = await self.run("replay", [batch])
            moved += len(ids)
            if len(ids) < batch:
                break
        return moved

    async def remove_job(self, job_id: str) -> bool:
        """Delete a job that is not running. Returns False if it did not exist.

        Raises ``JobActiveError`` for a running job (use ``cancel_job``).
        """
        (status,) = await self.run("remove", [_query_id(job_id)])
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
        (status,) = await self.run("cancel", [_query_id(job_id)])
        if status == b"missing":
            raise JobNotFoundError(f"job {job_id} does not exist in queue {self.name!r}")
        return {"removed": "removed", "flagged": "cancelling"}.get(status.decode(), "finished")

    async def promote_delayed(self, limit: int = 1000) -> int:
        """Move up to ``limit`` due delayed jobs to waiting now; returns how many moved.

        Workers also do this themselves. ``limit`` is an int >= 0 (else
        ``ConfigurationError``). The jobs move in script calls of at most 1000 (the
        script clamps to that too), so a large limit never blocks Redis for long: each
        call is atomic, the whole is not, and jobs that fall due meanwhile may be
        promoted by it as well.
        """
        limit = _check_limit(limit, "promote_delayed limit")
        dlq = "1" if self.dlq.enabled else "0"
        moved = 0
        while moved < limit:
            batch = min(_ADMIN_BATCH, limit - moved)
            n = int(await self.run("promote", [batch, dlq]))
            moved += n
            if n < batch:  # no due job left
                break
        return moved

    async def recover_stalled(self, limit: int = 1000) -> tuple[list[str], list[str]]:
        """Requeue jobs whose lease expired; returns (requeued ids, dead-lettered ids).

        Examines up to ``limit`` expired leases (an int >= 0, else
        ``ConfigurationError``) in script calls of at most 1000 each.
        """
        limit = _check_limit(limit, "recover_stalled limit")
        dlq = "1" if self.dlq.enabled else "0"
        back: list[str] = []
        dead: list[str] = []
        while len(back) + len(dead) < limit:
            batch = min(_ADMIN_BATCH, limit - len(back) - len(dead))
            b, d = await self.run("recover", [self.settings.max_stalled_count, dlq, batch])
            back += [x.decode() for x in b]
            dead += [x.decode() for x in d]
            if len(b) + len(d) < batch:  # no expired lease left
                break
        return back, dead

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


def _partial_enqueue(
    written: list[str], total: int, why: str, *, unknown: bool
) -> PartialEnqueueError:
    """The error of an enqueue that stopped after ``written`` of ``total`` jobs.

    ``unknown``: whether the jobs from ``len(written)`` on may have been written anyway
    (a chunk whose reply never came) rather than certainly not (a job the script refused).
    """
    done = len(written)
    known = f"jobs 0 to {done - 1} are in the queue" if done else "no job was added"
    rest = "may or may not have been added" if unknown else "were not added"
    return PartialEnqueueError(
        f"enqueue stopped at job {done} of {total} ({why}): {known}; job {done} and later "
        f"{rest}. Retrying jobs[{done}:] is idempotent for jobs with a job_id or "
        "idempotency_key",
        written_ids=list(written),
        failed_from=done,
    )


#: Most jobs one admin script call moves (promote, recover, retry, replay, drain): the
#: scripts clamp to the same bound, so no single call blocks Redis for long.
_ADMIN_BATCH = 1000


def _check_limit(limit: Any, what: str) -> int:
    """``limit`` as an int >= 0, or ConfigurationError (bool, float, NaN, negative)."""
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise ConfigurationError(f"{what} must be an int >= 0, got {clip(repr(limit), 100)}")
    return limit


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


# ---------------------------------------------------------------------------- input checks
def _check_job_id(value: Any, what: str) -> str:
    """A caller-chosen job id: ``check_text`` rules, and not made of ASCII digits only.

    Auto-generated ids are the queue's sequence numbers ("1", "2", ...): a chosen id
    from that namespace would meet one of them (and replace it, or be mistaken for it),
    so the two namespaces are kept apart here.
    """
    job_id = check_text(value, what, max_len=MAX_ID_LENGTH)
    if job_id.isascii() and job_id.isdigit():
        raise ConfigurationError(
            f"{what} {_shown(job_id)} is made of digits only: numeric ids are reserved for "
            f"the ids the queue generates itself, and a chosen one would collide with "
            f"them; add a prefix, such as 'order-{clip(job_id, 40)}'"
        )
    return job_id


def _check_option_text(value: Any, what: str) -> None:
    """Refuse control characters and lone surrogates in a feature option's text (a str,
    or the str items of a list such as ``depends_on``); other values pass through and
    are checked when the options are encoded."""
    if isinstance(value, str):
        if has_bad_char(value):
            check_text(value, what, max_len=max(1, len(value)))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            if isinstance(item, str) and has_bad_char(item):
                check_text(item, f"{what}[{i}]", max_len=max(1, len(item)))


def _resolve_policy(opts: Any, base: Policy) -> tuple[Policy, list[str]]:
    """The policy of a job from its stored options, and what was wrong with them.

    Each option that is not valid (a damaged record, a value written by another client)
    is skipped, so the base policy applies to it, and described in the returned list.
    """
    p = Policy(
        base.attempts, base.backoff, base.timeout_ms, base.jitter_ms, base.keep_completed,
        base.keep_failed,
    )
    if not isinstance(opts, Mapping):
        return p, [f"options are not a JSON object ({type(opts).__name__})"]
    problems: list[str] = []

    def retention(v: Any, what: str) -> RetentionPolicy:
        if not isinstance(v, Mapping):
            raise ConfigurationError(f"{what} is not an object")
        count, age = v.get("count", -1), v.get("age", -1)
        if not (type(count) is int and count == -1):
            count = to_int(count, f"{what}.count", minimum=0, maximum=MAX_COUNT)
        if not (type(age) is int and age == -1):
            age = to_ms(age, f"{what}.age")
        return RetentionPolicy(count, age)

    for key, value in opts.items():
        try:
            if key == "attempts":
                p.attempts = to_int(value, "attempts", minimum=1, maximum=MAX_COUNT)
            elif key == "backoff":
                if not isinstance(value, Mapping):
                    raise ConfigurationError("backoff is not an object")
                p.backoff = coerce(BackoffOptions, value, "backoff")
            elif key == "timeout":
                p.timeout_ms = to_ms(value, "timeout") or None
            elif key == "jitter":
                p.jitter_ms = to_ms(value, "jitter")
            elif key == "remove_on_complete":
                p.keep_completed = retention(value, key)
            elif key == "remove_on_fail":
                p.keep_failed = retention(value, key)
        except (ConfigurationError, TypeError, ValueError) as exc:
            problems.append(f"option {_shown(key)} ignored ({clip(str(exc), 200)})")
    return p, problems


def _query_limit(limit: Any, what: str = "limit") -> int:
    """The ``limit`` of a query: an int from 0 (nothing) to ``MAX_QUERY_LIMIT``."""
    return to_int(limit, what, minimum=0, maximum=MAX_QUERY_LIMIT)


def _query_id(job_id: Any) -> str:
    """A job id given to a query, as text that can be sent to Redis.

    Ints are accepted (``get_job_status(3)``). Ids that were stored before names were
    checked may hold control characters, so only what cannot be encoded at all (a lone
    surrogate) or is not an id is refused.
    """
    if isinstance(job_id, int) and not isinstance(job_id, bool):
        return str(job_id)
    if not isinstance(job_id, str) or not job_id:
        raise ConfigurationError(f"job_id must be a non-empty string, got {_shown(job_id)}")
    try:
        job_id.encode()
    except UnicodeEncodeError:
        raise ConfigurationError(
            f"job_id {_shown(job_id)} holds a lone surrogate and cannot name a job (no job "
            "can be added with such an id)"
        ) from None
    return job_id


#: The state sets a job can be found in, in the order ``_find_state`` looks.
_STATE_SETS = (
    (JobStatus.ACTIVE, "active"),
    (JobStatus.WAITING, "wait"),
    (JobStatus.DELAYED, "delayed"),
    (JobStatus.DLQ, "dlq"),
    (JobStatus.FAILED, "failed"),
    (JobStatus.COMPLETED, "completed"),
)
#: Largest |start| / |end| of ``get_job_logs`` (Redis list indexes are signed 64-bit).
_MAX_INDEX = 2**63 - 1
_STATES = {s.value.encode(): s for s in JobStatus}


def _stored_status(raw: Mapping[bytes, bytes]) -> JobStatus | None:
    """The state written on a job hash (missing = waiting), or None when it is unknown."""
    return _STATES.get(raw.get(b"st") or b"waiting")
_STREAM_ID = re.compile(r"[0-9]{1,20}(-[0-9]{1,20})?")


def _is_stream_id(value: Any) -> bool:
    """What ``events(last_id=...)`` accepts: "$", or a stream id "<ms>" / "<ms>-<seq>"
    with both parts unsigned 64-bit numbers (Redis refuses anything else)."""
    if value == "$":
        return True
    if not isinstance(value, str) or not _STREAM_ID.fullmatch(value):
        return False
    return all(int(part) < 2**64 for part in value.split("-"))
