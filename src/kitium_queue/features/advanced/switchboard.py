"""The switchboard: ``AdvancedQueueConfig`` applied to one queue (``queue.advanced``).

``AdvancedFeatures.install(queue, config)`` enables each enabled section's feature on
the queue, in the order of its sections, the way a user would by hand: it constructs the
feature's manager (which declares the feature's job options in the queue's option
registry, fills its Lua slots, adds its middleware, subscribers and services) with the
section's values as its defaults. The managers are then reachable as attributes
(``queue.advanced.fifo``, ``queue.advanced.compliance``, ...), and ``effective()``
tells what is in force (``kitium-queue config show`` prints it).

A section whose optional extra is not installed fails with the ``pip install`` line;
a section for a feature this version does not provide fails saying so. Nothing is
half-enabled:
every section is checked against the queue (extras, modules, conflicts) before the
first feature is installed.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ...errors import ConfigurationError, install_hint
from ...options import LimiterConfig
from .config import AdvancedQueueConfig

if TYPE_CHECKING:
    from ...queue import JobQueue

__all__ = ["EXTRAS", "FUTURE_MODULES", "AdvancedFeatures"]

#: The optional extras some sections need: section -> [(module, extra)].
EXTRAS: dict[str, list[tuple[str, str]]] = {
    "encryption": [("cryptography", "encryption")],
    "webhooks": [("httpx", "webhooks")],
}
#: Sections whose feature lives in a module this version may not have: section ->
#: (module, the function there that enables it from its section).
FUTURE_MODULES: dict[str, tuple[str, str]] = {
    "global_queue": ("kitium_queue.features.regions", "enable_from_advanced"),
}
_LABEL = {
    "global_queue": "global queues (multi-region)",
}


#: What each section's feature uses of an optional extra's package: package -> {module:
#: the names taken from it}. Imported by the preflight (``_require``), so that a package
#: installed in part (its top module there, a submodule or a name it takes missing),
#: which ``find_spec`` would pass, fails there, naming the extra, and not later, after
#: other sections were installed. tests/test_tenancy_readonly.py checks the names
#: against the features' sources.
_USES: dict[str, dict[str, tuple[str, ...]]] = {
    "cryptography": {
        "cryptography.exceptions": ("InvalidTag",),
        "cryptography.hazmat.primitives": ("hashes", "padding"),
        "cryptography.hazmat.primitives.ciphers": ("Cipher", "algorithms", "modes"),
        "cryptography.hazmat.primitives.ciphers.aead": ("AESGCM",),
        "cryptography.hazmat.primitives.kdf.hkdf": ("HKDF",),
    },
    "httpx": {
        "httpx": (
            "AsyncBaseTransport", "AsyncByteStream", "AsyncClient", "HTTPError", "InvalidURL",
            "Request", "Response", "TimeoutException", "TransportError",
        ),
        "httpcore": (
            "AnyIOBackend", "AsyncConnectionPool", "AsyncNetworkBackend", "ConnectError",
            "NetworkError", "ProtocolError", "Request", "TimeoutException", "URL",
            "UnsupportedProtocol",
        ),
    },
    "zstandard": {
        "zstandard": ("ZstdCompressor", "ZstdDecompressor", "ZstdError", "frame_content_size"),
    },
}  # fmt: skip
#: The feature modules that import what they use of an extra's package themselves.
_FEATURE_MODULES: dict[str, tuple[str, ...]] = {
    "prometheus_client": (
        "..prometheus.exporter",
        "..prometheus.collector",
        "..prometheus.subscriber",
    ),
}


def _require(section: str, module: str, extra: str) -> None:
    """Import what ``section``'s feature uses of ``module`` (``_USES``, or the feature's
    own modules, which import it); ``ConfigurationError`` naming the extra when any of
    it cannot be imported (missing, or installed in part: a file cut short raises
    ``SyntaxError``, a broken build anything)."""
    try:
        if importlib.util.find_spec(module) is None:  # not there at all: said so first
            raise ModuleNotFoundError(f"No module named {module!r}", name=module)
        for feature in _FEATURE_MODULES.get(module, ()):
            importlib.import_module(feature, __package__)
        for name, names in _USES.get(module, {module: ()}).items():
            mod = importlib.import_module(name)
            for attr in names:
                if not hasattr(mod, attr):  # a submodule, as ``from name import attr`` does
                    try:
                        importlib.import_module(f"{name}.{attr}")
                    except ImportError:
                        raise ImportError(f"cannot import name {attr!r} from {name!r}") from None
    except Exception as exc:
        said = str(exc) if isinstance(exc, ImportError) else f"{type(exc).__name__}: {exc}"
        raise ConfigurationError(
            f"advanced.{section} needs the optional extra {extra!r}, which is not installed "
            f"or not importable (module {module!r}: {said}): " + install_hint(extra)
        ) from exc


def _require_tracing() -> None:
    """Import the tracing feature, which imports what it uses of OpenTelemetry: a
    partial install (the ``opentelemetry`` namespace there, its API or ``trace`` not
    importable), which ``find_spec`` would pass, is refused as a missing extra is."""
    try:
        importlib.import_module("..tracing", __package__)
    except ImportError as exc:
        raise ConfigurationError(f"advanced.monitoring.tracing: {exc}") from exc


def _present(module: str) -> bool:
    """Whether ``module`` (a feature this version may lack) can be imported."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


def _future(section: str) -> Any:
    """The function enabling ``section``'s feature, or ConfigurationError saying it is
    not available in this version."""
    module, entry = FUTURE_MODULES[section]
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module.startswith(exc.name):
            raise ConfigurationError(
                f"advanced.{section}: {_LABEL[section]} is not available in this version of "
                f"kitium-queue (module {module} is not part of it); leave "
                f"advanced.{section}.enabled False"
            ) from None
        raise
    fn = getattr(mod, entry, None)
    if not callable(fn):
        raise ConfigurationError(
            f"advanced.{section}: {module} does not provide {entry}(queue, section) in this "
            f"version, so {_LABEL[section]} cannot be enabled from AdvancedQueueConfig yet"
        )
    return fn


class AdvancedFeatures:
    """What ``AdvancedQueueConfig`` enabled on one queue (``queue.advanced``).

    Attributes (None when the section is not enabled): ``exactly_once``
    (``IdempotencyManager``), ``fifo`` (``FIFOQueueManager``), ``encryption``
    (``EncryptionManager``), ``workflows`` (``JobChainManager``), ``circuit_breaker``
    (``CircuitBreakerManager``), ``webhooks`` (``WebhookManager``), ``compression``
    (``CompressionCodec``), ``retention`` (``features.retention.Retention``: limits and
    periods), ``prometheus`` (``PrometheusExporter``), ``tracing``
    (``OpenTelemetryTracing``), ``alerts`` (``AlertManager``), ``compliance``
    (``ComplianceManager``), ``multi_tenancy`` (``TenantRegistry``), ``global_queue``
    (a ``GlobalQueueManager``, not yet initialized).
    """

    def __init__(self, queue: JobQueue, config: AdvancedQueueConfig) -> None:
        self.queue = queue
        self.config = config
        self.exactly_once: Any = None
        self.fifo: Any = None
        self.encryption: Any = None
        self.workflows: Any = None
        self.circuit_breaker: Any = None
        self.webhooks: Any = None
        self.global_queue: Any = None
        self.multi_tenancy: Any = None
        self.compression: Any = None
        self.retention: Any = None
        self.prometheus: Any = None
        self.tracing: Any = None
        self.alerts: Any = None
        self.compliance: Any = None
        self.batching: dict[str, Any] | None = None
        self.rate_limiting: dict[str, Any] | None = None
        self._idem_ttl_capped: int | None = None

    # ------------------------------------------------------------------ install
    @classmethod
    def install(cls, queue: JobQueue, config: Any) -> AdvancedFeatures:
        """Enable every enabled section of ``config`` (an ``AdvancedQueueConfig`` or a
        dict of sections) on ``queue``; see the module docstring."""
        cfg = AdvancedQueueConfig.parse(config)
        self = cls(queue, cfg)
        self._preflight()
        c = cfg
        if c.exactly_once.enabled:
            self._exactly_once()
        if c.fifo.enabled:
            from ..groups import FIFOQueueManager

            self.fifo = FIFOQueueManager(
                queue,
                group_concurrency=c.fifo.group_concurrency,
                max_group_size=c.fifo.max_group_size,
                high_throughput=c.fifo.high_throughput,
            )
        if c.encryption.enabled:
            self._encryption()
        if c.workflows.enabled:
            self._workflows()
        if c.circuit_breaker.enabled:
            from ..breakers import CircuitBreakerManager
            from ..breakers.model import FailureThreshold

            cb = c.circuit_breaker
            self.circuit_breaker = CircuitBreakerManager(
                queue,
                events=cb.events,
                default_failure_threshold=FailureThreshold(
                    cb.default_failure_threshold, cb.default_min_requests
                ),
            )
        if c.webhooks.enabled:
            from ..webhooks import WebhookManager

            wh = c.webhooks
            src = wh.secrets  # a mapping is copied; a callable (your vault) is asked
            self.webhooks = WebhookManager(
                queue,
                secrets=dict(src) if isinstance(src, Mapping) else src,
                secret_cache_s=wh.secret_cache_s,
                secret_timeout_s=wh.secret_timeout_s,
                allow_networks=wh.allow_networks,
                run_service=wh.run_service,
                default_delivery_strategy=wh.default_delivery_strategy,
                history_max=wh.history_max,
                history_ttl_s=wh.history_ttl_s,
                dead_max=wh.dead_max,
                dead_ttl_s=wh.dead_ttl_s,
            )
        if c.global_queue.enabled:
            self.global_queue = _future("global_queue")(queue, c.global_queue)
        if c.multi_tenancy.enabled:
            from ..tenancy import TenantRegistry

            mt = c.multi_tenancy
            self.multi_tenancy = TenantRegistry(
                queue,
                quantum=mt.quantum,
                fair_dispatch=mt.fair_dispatch,
                enforce_quotas=mt.enable_resource_quotas,
            )
        if c.batching.enabled:
            from ..batches import set_batch_defaults

            b = c.batching
            set_batch_defaults(queue, size=b.size, min_size=b.min_size, max_wait=b.max_wait_ms)
            self.batching = {"size": b.size, "min_size": b.min_size, "max_wait_ms": b.max_wait_ms}
        if c.rate_limiting.enabled:
            self._rate_limiting()
        if c.cost_optimization.enabled:
            self._cost_optimization()
        if c.compliance.enabled:
            self._compliance()
        if c.monitoring.enabled:
            self._monitoring()
        if self.alerts is None and config is not None:
            self._alert_leftovers()
        return self

    def _preflight(self) -> None:
        """Every check that can fail before anything is installed: extras, features
        this version lacks, conflicts between sections and with the queue."""
        c, q = self.config, self.queue
        for section in c.enabled_sections():
            for module, extra in EXTRAS.get(section, ()):
                _require(section, module, extra)
            if section in FUTURE_MODULES:
                _future(section)
        mon = c.monitoring
        if mon.enabled:
            if mon.prometheus:
                _require("monitoring", "prometheus_client", "prometheus")
            if mon.tracing:
                _require_tracing()
            for rule in mon.alerts:
                if rule.metric == "breaker_open" and not c.circuit_breaker.enabled:
                    raise ConfigurationError(
                        f"advanced.monitoring.alerts: rule {rule.name!r} watches open breakers; "
                        "enable advanced.circuit_breaker too"
                    )
                if rule.metric == "region_lag_ms" and not c.global_queue.enabled:
                    raise ConfigurationError(
                        f"advanced.monitoring.alerts: rule {rule.name!r} watches region_lag_ms, "
                        "the replication lag of a global queue; enable advanced.global_queue "
                        "too (or add the rule to a queue of a GlobalQueueManager)"
                    )
        comp = c.cost_optimization.compression
        if c.cost_optimization.enabled and comp.enabled and comp.algorithm == "zstd":
            _require("cost_optimization", "zstandard", "compression")
        rl = c.rate_limiting
        if rl.enabled and rl.max is not None and q.limiter is not None:
            raise ConfigurationError(
                "advanced.rate_limiting.max sets the queue-wide limiter, and worker.limiter "
                "sets it too: keep one of them"
            )
        periods = c.compliance.retention.periods() if c.compliance.enabled else {}
        ttl = c.exactly_once.ttl_ms if c.exactly_once.enabled else None
        if periods and ttl is not None and int(ttl) > min(periods.values()):
            raise ConfigurationError(
                f"advanced.exactly_once.ttl_ms ({ttl} ms) is longer than the shortest "
                f"compliance retention period ({min(periods.values())} ms): results kept "
                "under idempotency keys would outlive the period; lower ttl_ms"
            )

    def _exactly_once(self) -> None:
        from ..idempotency import IdempotencyManager

        eo = self.config.exactly_once
        self.exactly_once = IdempotencyManager(
            self.queue,
            window=eo.window,
            exactly_once=eo.all_jobs,
            derive_keys=eo.derive_keys,
            ttl_ms=eo.ttl_ms,
        )

    def _encryption(self) -> None:
        from ..encryption import EncryptionManager

        enc = self.config.encryption
        keys = [
            {**k, "algorithm": k.get("algorithm", enc.algorithm)} if isinstance(k, Mapping) else k
            for k in enc.keys
        ]
        self.encryption = EncryptionManager(
            self.queue,
            keys=keys,
            current_key_id=enc.current_key_id,
            encrypt_all=enc.encrypt_all,
            run_rotation=enc.rotation,
            missing_key_wait_ms=enc.missing_key_wait_ms,
        )

    def _workflows(self) -> None:
        from ..workflows import JobChainManager

        wf = self.config.workflows
        self.workflows = JobChainManager(self.queue, retention_ms=wf.retention_ms, events=wf.events)
        timeout = wf.default_timeout_ms
        if timeout is not None:

            def step_timeout(
                job_name: str, data: Any, options: Mapping[str, Any]
            ) -> tuple[str, Any, Mapping[str, Any]]:
                # A workflow step (it carries workflow_id) without a timeout of its own.
                if options.get("workflow_id") is None or options.get("timeout") is not None:
                    return job_name, data, options
                return job_name, data, {**options, "timeout": timeout}

            self.queue.use_enqueue(step_timeout)

    def _rate_limiting(self) -> None:
        q, rl = self.queue, self.config.rate_limiting
        if rl.max is not None:
            q.limiter = q.ctx.limiter = LimiterConfig(rl.max, int(rl.duration_ms))
        for pattern, rule in rl.per_key.items():
            q.set_rate_limit(pattern, max=rule.max, duration=rule.duration_ms)
        for pattern, cap in rl.concurrency_per_key.items():
            q.set_concurrency_limit(pattern, cap)
        if rl.global_concurrency is not None:
            q.set_global_concurrency(rl.global_concurrency)
        if rl.park_rate_limited_jobs:
            q.flow.park_rate_limited_jobs(True)
        self.rate_limiting = rl.to_dict()

    def _cost_optimization(self) -> None:
        from ..retention import Retention

        co, q = self.config.cost_optimization, self.queue
        if co.compression.enabled:
            from ..compression import CompressionCodec

            comp = co.compression
            self.compression = CompressionCodec(
                algorithm=comp.algorithm, threshold=comp.threshold_bytes, level=comp.level
            )
            q.serializer.add_codec(self.compression, first=True)
        limits = {
            s: getattr(co.retention, s)
            for s in ("completed", "failed", "dlq")
            if getattr(co.retention, s) is not None
        }
        if limits:
            self.retention = Retention.of(q) or Retention(q, interval_ms=co.sweep_interval_ms)
            for state, lim in limits.items():
                self.retention.set_limit(state, count=lim.count, age_ms=lim.age_ms)
            self.retention.apply_defaults()

    def _compliance(self) -> None:
        from ..compliance import ComplianceManager

        cc, q = self.config.compliance, self.queue
        periods = cc.retention.periods()
        self.compliance = ComplianceManager(
            q,
            retention=periods,
            redact_fields=cc.redact_fields,
            redact_everywhere=cc.redact_everywhere,
            erase_batch=cc.erase_batch,
            interval_ms=cc.sweep_interval_ms,
        )
        self.retention = self.compliance.retention
        if periods:
            # A result kept under an idempotency key must not outlive the period of the
            # job it came from (ttl_ms longer than a period was refused up front).
            shortest = min(periods.values())
            if q.ctx.idempotency_ttl > shortest:
                q.ctx.idempotency_ttl = q.idempotency_ttl = shortest
                self._idem_ttl_capped = shortest

    def _monitoring(self) -> None:
        mon, q = self.config.monitoring, self.queue
        if mon.prometheus:
            from ..prometheus import PrometheusExporter

            self.prometheus = PrometheusExporter(q)
        if mon.tracing:
            from ..tracing import OpenTelemetryTracing

            self.tracing = OpenTelemetryTracing(q)
        if mon.alerts:
            from ..alerts import AlertManager

            self.alerts = AlertManager(
                q,
                mon.alerts,
                interval_ms=mon.evaluation_interval_ms,
                webhook_event=mon.alert_webhook_event,
                lease_ms=mon.leader_lease_ms,
            )

    def _alert_leftovers(self) -> None:
        """No alert rules configured: a worker's start checks once whether earlier
        configurations left alerts in Redis, and clears them (``alerts.removed``)."""
        from ..alerts.removed import LeftoverSweep

        mon = self.config.monitoring
        self.queue.add_service(
            LeftoverSweep(
                interval_ms=int(mon.evaluation_interval_ms),
                webhook_event=mon.alert_webhook_event,
                lease_ms=int(mon.leader_lease_ms),
            )
        )

    # ------------------------------------------------------------------ reporting
    def effective(self) -> dict[str, Any]:
        """What is in force on the queue: each section as configured, plus what its
        feature resolved (the compression algorithm chosen, the idempotency window
        length, the retention rules), and the job options the queue accepts by owner.
        No secrets (key material, webhook secrets, passwords) are included."""
        q = self.queue
        sections = self.config.to_dict()
        if self.exactly_once is not None:
            sections["exactly_once"]["effective_ttl_ms"] = q.idempotency_ttl
        if self._idem_ttl_capped is not None:
            sections["exactly_once"]["ttl_capped_by_compliance_ms"] = self._idem_ttl_capped
        if self.compression is not None:
            sections["cost_optimization"]["compression"]["effective"] = {
                "algorithm": self.compression.algorithm,
                "level": self.compression.level,
                "threshold": self.compression.threshold,
            }
        for name, (module, _) in FUTURE_MODULES.items():
            sections[name]["available"] = _present(module)
        from ..tenancy.install import installed

        tenancy = installed(q)
        if tenancy is not None:  # by the section, or by hand (TenantRegistry(queue))
            sections["multi_tenancy"]["effective"] = tenancy
        if self.alerts is not None:
            sections["monitoring"]["alerts_effective"] = self.alerts.to_dict()
        if self.compliance is not None:
            sections["compliance"]["effective"] = self.compliance.to_dict()
        if self.encryption is not None:
            sections["encryption"]["held_key_ids"] = self.encryption.held_key_ids()
        owners: dict[str, list[str]] = {}
        for spec in q.jobspec.specs():
            owners.setdefault(spec.feature, []).append(spec.name)
        return {
            "queue": q.name,
            "connection": q.connection.describe(),
            "core": _core(q),
            "sections": sections,
            "retention": None if self.retention is None else self.retention.to_dict(),
            "enabled_sections": self.config.enabled_sections(),
            "job_options": owners,
            "codecs": [type(c).__name__ for c in q.serializer.codecs],
            "services": [s.name for s in q.services],
            "lua_slots": {
                slot: q.scripts.slot_names(slot)
                for slot in ("accept", "enqueue", "admission", "release", "duplicate", "erase")
                if q.scripts.slot_names(slot)
            },
        }


def _core(q: JobQueue) -> dict[str, Any]:
    """The queue's core settings, resolved (what the core reads)."""
    p = q.policy
    return {
        "prefix": q.keys.prefix,
        "retry": {
            "attempts": p.attempts,
            "backoff": p.backoff.to_dict(),
        },
        "timeout_ms": p.timeout_ms,
        "retention": {
            "completed": {"count": p.keep_completed.count, "age_ms": p.keep_completed.age},
            "failed": {"count": p.keep_failed.count, "age_ms": p.keep_failed.age},
        },
        "dlq": {"enabled": q.dlq.enabled, "queue_name": q.dlq.queue_name},
        "lease": {
            "lock_duration_ms": q.lock_duration_ms,
            "lock_renew_ms": q.lock_renew_ms,
            "stalled_interval_ms": q.stalled_interval_ms,
            "max_stalled_count": q.settings.max_stalled_count,
        },
        "worker": {
            "concurrency": q.worker_config.concurrency,
            "limiter": None
            if q.limiter is None
            else {"max": q.limiter.max, "duration_ms": q.limiter.duration},
            "shutdown_timeout_ms": q.shutdown_timeout_ms,
        },
        "idempotency_ttl_ms": q.idempotency_ttl,
        "events_max_len": q.events_max_len,
        "max_payload_bytes": q.max_payload_bytes,
        "max_log_lines": q.max_log_lines,
        "default_job_options": dict(q.ctx.defaults),
    }
