"""The dashboard's Server page ``/q/<queue>/server``, shown for every queue: what
``kitium-queue health``, ``memory``, ``replicas`` and ``config show`` print, on one page.

* **Health** (``kitium-queue health``, the readiness probe with its defaults): the
  verdict and the exit code the command would give (0 ready, 3 unreachable, 4 not
  ready: a damaged key, a server the queue refuses, a failed check), the backend (its
  credentials redacted), Redis latency, memory in use against ``maxmemory``, the
  ``maxmemory-policy`` (flagged unless ``noeviction``), persistence (AOF with its
  ``appendfsync``, RDB), missing job records, the server's version, and each check.
* **Replicas** (``kitium-queue replicas``): the server's role, its connected replicas
  with their state and lag, ``min-replicas-to-write``, and the queue's ``ReplicaAcks``
  setting in this process (replicas each write waits for, timeout, outcomes), flagged
  when fewer replicas are connected than it waits for.
* **Memory** (``kitium-queue memory``): on demand only, never on page load. The button
  sends ``?memory=1&samples=N``; the estimate samples at most ``MAX_MEMORY_SAMPLES``
  jobs per state (``MEMORY USAGE`` of each one's hash and log, ``features/footprint.py``):
  bounded work whatever the queue's size, no ``KEYS`` or ``SCAN``. One measurement per
  queue runs at a time in this process, and a result is reused for ``MEMORY_REUSE_S``
  seconds, so reloads and many viewers do not sample again. It is a read like the
  CLI's (``measure_footprint``, ``can_view_job``): every role may run it.
* **Configuration** (``kitium-queue config show``): ``queue.advanced.effective()``,
  flattened. Never a secret: values under a secret-looking name (password, secret,
  token, credential, key) are masked, and every text goes through the connection's
  ``redact`` (``redact_url`` plus the passwords the connection was given).

The page first passes the queue's read guards as ``server_status`` (``can_view_job``,
in the access feature's ``READ_PERMISSIONS``); its reads (``get_stats``,
``measure_footprint``) pass them again. Each section degrades alone: an ``INFO`` the
Redis user may not run (an ACL without ``+info``), a damaged key, a server that does
not answer within ``SECTION_TIMEOUT_S`` is said in that section, and the rest of the
page renders (200). When Redis does not answer at all, the sections that need it say so
without trying again.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from redis.exceptions import NoPermissionError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..limits import clip
from ..serverinfo import SAFE_POLICY, answered_check, node_info, server_checks
from .data import FEATURE_PAGES
from .views import queue_context

if TYPE_CHECKING:
    from ..features.footprint import QueueFootprint
    from ..serverinfo import MemoryReport
    from .app import Dashboard
    from .auth import Session
    from .views import PageWrap

__all__ = [
    "MAX_MEMORY_SAMPLES",
    "MEMORY_REUSE_S",
    "MEMORY_SAMPLES",
    "SECTION_TIMEOUT_S",
    "config_rows",
    "routes",
]

#: How long one section waits for Redis (s) before it says so.
SECTION_TIMEOUT_S = 5.0
#: How long a memory measurement may take (s).
MEMORY_TIMEOUT_S = 15.0
#: Jobs sampled per state unless ``?samples=`` says otherwise (the CLI's ``--samples``).
MEMORY_SAMPLES = 50
#: Most jobs sampled per state from the dashboard (the CLI allows 1,000).
MAX_MEMORY_SAMPLES = 200
#: A measurement of the same queue and sample size is reused this long (s).
MEMORY_REUSE_S = 10.0
#: Readiness fails at this share of ``maxmemory`` in use (``health --max-memory``).
MAX_MEMORY_FRACTION = 0.95
#: Most configuration rows shown.
MAX_CONFIG_ROWS = 2000
#: The exit codes of ``kitium-queue health`` (``cli/base.py``).
EXIT_UNREACHABLE = 3
EXIT_NOT_READY = 4
_TEXT = 500
#: Names whose values are never shown (fail closed: a harmless ``*_key`` goes too).
_SECRET = re.compile(
    r"pass(?:word|wd)?|pwd|secret|token|credential|private|(?:^|_)keys?$|^auth", re.IGNORECASE
)

FEATURE_PAGES["server"] = lambda q: True


# ---------------------------------------------------------------------- sections
def failure(queue: Any, what: str, exc: BaseException) -> str:
    """What went wrong reading ``what``, for the page: the error's type and message
    with the connection's credentials redacted, and what to do for a refused command."""
    if isinstance(exc, asyncio.TimeoutError):
        return f"{what}: Redis did not answer within {SECTION_TIMEOUT_S:g} s"
    text = f"{what} failed: {type(exc).__name__}: {queue.connection.redact(exc)}"
    if isinstance(exc, NoPermissionError):
        text += " (the Redis user may not run it: an ACL rule; grant the command to see this)"
    return clip(text, _TEXT)


async def _read(queue: Any, what: str, call: Awaitable[Any]) -> tuple[Any, str]:
    """``await call`` within ``SECTION_TIMEOUT_S``: (its value, "") or (None, why not)."""
    try:
        return await asyncio.wait_for(call, SECTION_TIMEOUT_S), ""
    except Exception as exc:
        return None, failure(queue, what, exc)


@dataclass(slots=True)
class Check:
    """One readiness check as ``kitium-queue health --json`` lists it."""

    name: str
    ok: bool
    detail: str


@dataclass(slots=True)
class Health:
    """The health section: ``health_check(server_config=True)`` and the readiness
    checks of ``kitium-queue health``."""

    verdict: str = ""
    exit_code: int = 0
    healthy: bool = False
    latency_ms: float | None = None
    backend: str = ""
    error: str = ""
    missing_records: int | None = None
    memory: MemoryReport | None = None
    used_fraction: float | None = None
    evicting: bool = False
    checks: list[Check] = field(default_factory=list)
    role: str | None = None
    role_error: str = ""
    version: str | None = None
    version_error: str = ""
    failed: str = ""

    @property
    def answers(self) -> bool:
        return self.exit_code != EXIT_UNREACHABLE and not self.failed


async def read_health(queue: Any) -> Health:
    """The health section of ``queue`` (never raises: a failure is in ``failed``)."""
    out = Health()
    h, out.failed = await _read(
        queue, "health check", queue.queries.health_check(lambda: False, server_config=True)
    )
    if h is None:
        out.exit_code, out.verdict = EXIT_UNREACHABLE, "unknown"
        return out
    out.healthy, out.latency_ms = h.healthy, h.redis_latency_ms
    out.backend = clip(queue.connection.redact(h.backend), _TEXT)
    out.error = clip(queue.connection.redact(h.error or ""), _TEXT)
    out.missing_records, out.memory = h.missing_records, h.memory
    name = answered_check(h.healthy, h.error)  # Redis answered, a check failed
    answers = h.healthy or bool(name)
    if name:
        out.checks.append(Check(name, False, out.error))
    if h.healthy or name == "writes":
        await _readiness(queue, out)
    ready = answers and all(c.ok for c in out.checks)
    out.exit_code = 0 if ready else EXIT_UNREACHABLE if not answers else EXIT_NOT_READY
    out.verdict = "ready" if ready else ("unreachable" if not answers else "not ready")
    if answers and not queue.connection.is_memory:
        info, out.version_error = await _read(queue, "INFO server", _info(queue, "server"))
        out.version = None if info is None else str(info.get("redis_version", "?"))
    return out


async def _info(queue: Any, section: str) -> dict[str, Any]:
    return await node_info(await queue.client(), section, queue.keys.meta)


async def _readiness(queue: Any, out: Health) -> None:
    """The checks of ``kitium-queue health`` after Redis answered (``cli/queue.py``)."""
    s, why = await _read(queue, "queue stats", queue.get_stats())
    if s is None:
        out.checks.append(Check("queue readable", False, why))
        return
    out.checks.append(Check("queue readable", True, f"{s.waiting} waiting, {s.active} active"))
    if queue.connection.is_memory:
        return
    m = out.memory
    if m is not None:
        out.used_fraction = m.used_fraction
        out.evicting = m.policy not in (SAFE_POLICY, "")
    info, out.role_error = await _read(queue, "INFO replication", _info(queue, "replication"))
    role = None if info is None else info.get("role")
    out.role = None if role is None else str(role)
    allowed = bool(queue.settings.allow_eviction)
    out.checks += [
        Check(*c)
        for c in server_checks(m, out.role, allow_eviction=allowed, max_memory=MAX_MEMORY_FRACTION)
    ]


@dataclass(slots=True)
class Replicas:
    """The replicas section: ``replication_status`` and the queue's ``ReplicaAcks``."""

    status: dict[str, Any] | None = None
    waits_for: int | None = None
    wait_timeout_ms: int | None = None
    wait_outcomes: bool | None = None
    short: bool = False
    failed: str = ""


async def read_replicas(queue: Any) -> Replicas:
    """The replicas section of ``queue`` (never raises)."""
    from ..features.replicas import ReplicaAcks, replication_status

    out = Replicas()
    barrier = queue.write_barrier
    if isinstance(barrier, ReplicaAcks):
        out.waits_for = barrier.replicas
        out.wait_timeout_ms = barrier.timeout_ms
        out.wait_outcomes = barrier.outcomes
    if queue.connection.is_memory:
        out.failed = "memory:// has no replicas"
        return out
    st, out.failed = await _read(queue, "INFO replication", replication_status(queue))
    if st is not None:
        for r in st["replicas"]:
            r["address"] = clip(queue.connection.redact(r["address"]), 100)
            r["state"] = clip(r["state"], 100)
        st["role"] = clip(st["role"], 100)
        out.status = st
        out.short = bool(out.waits_for) and st["connected_replicas"] < (out.waits_for or 0)
    return out


@dataclass(slots=True)
class Memory:
    """The memory section: a footprint (``measure_footprint``) when asked for."""

    asked: bool = False
    samples: int = MEMORY_SAMPLES
    footprint: QueueFootprint | None = None
    age_s: float | None = None
    problems: list[str] = field(default_factory=list)
    failed: str = ""


class MemoryCache:
    """Per queue of one dashboard: the measurement under way, and the latest result
    (reused for ``MEMORY_REUSE_S`` seconds with the same sample size)."""

    def __init__(self) -> None:
        self.busy: set[str] = set()
        self.latest: dict[str, tuple[float, int, QueueFootprint]] = {}

    async def measure(self, queue: Any, samples: int) -> Memory:
        """The memory section of ``queue`` with ``samples`` jobs per state (never
        raises: a refusal, of the read guards or of Redis, is said in the section)."""
        from ..features.footprint import measure_footprint

        out = Memory(asked=True, samples=samples)
        now = time.monotonic()
        kept = self.latest.get(queue.name)
        if kept is not None and kept[1] == samples and now - kept[0] < MEMORY_REUSE_S:
            await queue.queries.check("measure_footprint", {"samples": samples})
            out.footprint, out.age_s = kept[2], now - kept[0]
        elif queue.name in self.busy:
            out.failed = "a measurement of this queue is under way: try again in a moment"
            return out
        else:
            self.busy.add(queue.name)
            try:
                out.footprint = await asyncio.wait_for(
                    measure_footprint(queue, samples=samples), MEMORY_TIMEOUT_S
                )
            except asyncio.TimeoutError:
                out.failed = f"the measurement took longer than {MEMORY_TIMEOUT_S:g} s: stopped"
                return out
            except Exception as exc:
                out.failed = failure(queue, "memory measurement", exc)
                return out
            finally:
                self.busy.discard(queue.name)
            self.latest[queue.name] = (time.monotonic(), samples, out.footprint)
            out.age_s = 0.0
        out.problems = [clip(queue.connection.redact(p), _TEXT) for p in out.footprint.problems]
        return out


def _samples(request: Request) -> int:
    raw = request.query_params.get("samples", "")
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 6:
        return MEMORY_SAMPLES
    return max(1, min(int(raw), MAX_MEMORY_SAMPLES))


# ---------------------------------------------------------------------- configuration
def _shown(queue: Any, path: str, value: Any) -> str:
    """One configuration value as text: masked under a secret-looking name, else
    through the connection's redaction."""
    leaf = re.split(r"[.\[]", path)[-1]
    plain = value is None or isinstance(value, (bool, int, float))  # never a secret
    if _SECRET.search(leaf) and not plain and value not in ("", [], {}):
        return "***"
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return clip(queue.connection.redact(text), _TEXT)


def config_rows(queue: Any, effective: dict[str, Any]) -> list[tuple[str, str]]:
    """``effective`` (``queue.advanced.effective()``) as ``(dotted.path, text)`` rows,
    secrets hidden."""
    from ..features.advanced.cli import flatten

    rows = flatten(effective)
    return [(clip(p, 200), _shown(queue, p, v)) for p, v in rows[:MAX_CONFIG_ROWS]]


@dataclass(slots=True)
class Config:
    """The configuration section."""

    rows: list[tuple[str, str]] = field(default_factory=list)
    enabled: list[str] = field(default_factory=list)
    more: int = 0
    failed: str = ""


def read_config(queue: Any) -> Config:
    """The configuration section of ``queue`` (never raises)."""
    from ..features.advanced.cli import flatten

    out = Config()
    try:
        eff = queue.advanced.effective()
        out.rows = config_rows(queue, eff)
        out.more = max(0, len(flatten(eff)) - MAX_CONFIG_ROWS)
        out.enabled = [clip(str(s), 100) for s in eff.get("enabled_sections", [])]
    except Exception as exc:
        out.failed = failure(queue, "the effective configuration", exc)
    return out


# ---------------------------------------------------------------------- the page
def routes(dash: Dashboard, page: PageWrap) -> list[Route]:
    """The route of the Server page (GET, wrapped in ``page``: sign-in, roles, audit)."""
    cache = MemoryCache()

    async def server(request: Request, session: Session) -> Response:
        queue = dash.queue(request.path_params["queue"])
        if queue is None:
            return dash.render(request, "error.html", session, status=404, error="no such queue")
        asked = request.query_params.get("memory") == "1"
        samples = _samples(request)
        await queue.queries.check("server_status", {"memory": asked, "samples": samples})
        health = await read_health(queue)
        unreachable = "" if health.answers else "not read: Redis did not answer (see Health)"
        if unreachable:
            replicas = Replicas(failed=unreachable)
        else:
            replicas = await read_replicas(queue)
        memory = Memory(samples=samples)
        if asked:
            if unreachable:
                memory = Memory(asked=True, samples=samples, failed=unreachable)
            else:
                memory = await cache.measure(queue, samples)
        return dash.render(
            request,
            "server.html",
            session,
            **queue_context(queue, session),
            health=health,
            replicas=replicas,
            memory=memory,
            config=read_config(queue),
            max_samples=MAX_MEMORY_SAMPLES,
            reuse_s=MEMORY_REUSE_S,
            is_memory=queue.connection.is_memory,
        )

    return [Route("/q/{queue}/server", page(server), methods=["GET"])]
