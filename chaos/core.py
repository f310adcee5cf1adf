"""Scenario registry, the per-run context (processes, cleanup) and the result record."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from kitium_queue import SyncJobQueue
from kitium_queue.keys import QueueKeys

from .infra import Fleet, RedisServer, redis_server
from .ledger import Check, Ledger, check, snapshot

__all__ = ["SCENARIOS", "Context", "Result", "run_scenario", "scenario"]

EVENTS_MAX_LEN = 1_000_000


@dataclass(slots=True)
class Result:
    name: str
    item: int
    title: str
    mode: str
    passed: bool = False
    duration_s: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    ledger: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    rerun: str = ""

    def expect(self, name: str, ok: bool, detail: Any = "") -> bool:
        self.checks.append({"check": name, "ok": bool(ok), "detail": detail})
        return bool(ok)

    def checker(self, label: str, res: Check) -> Check:
        """Record a ledger/consistency check under ``label``."""
        summary = res.summary()
        summary["label"] = label
        self.ledger.append(summary)
        problems = {k: v["count"] for k, v in summary["problems"].items()}
        self.expect(f"checker: {label}", res.ok, problems or "ok")
        return res

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "item": self.item,
            "title": self.title,
            "mode": self.mode,
            "passed": self.passed,
            "duration_s": round(self.duration_s, 2),
            "figures": self.figures,
            "checks": self.checks,
            "ledger_checks": self.ledger,
            "notes": self.notes,
            "error": self.error,
            "rerun": self.rerun,
        }


class Context:
    """Everything one scenario run owns; ``close()`` kills and removes all of it."""

    def __init__(self, name: str, *, long: bool, workdir: Path | None = None) -> None:
        self.name = name
        self.long = long
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix=f"kq-chaos-{name}-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self._stack = contextlib.ExitStack()
        self.ledger = Ledger()

    def pick(self, short: Any, long: Any) -> Any:
        return long if self.long else short

    # ---------------------------------------------------------------- resources
    def redis(self, *, appendfsync: str | None = None) -> RedisServer:
        srv = redis_server(appendfsync=appendfsync)
        self._stack.callback(srv.close)
        return srv

    def fleet(self, url: str, queue: str, prefix: str | None = None, *, sub: str = "",
              **defaults: Any) -> Fleet:
        d = self.dir / (sub or queue)
        d.mkdir(parents=True, exist_ok=True)
        defaults.setdefault("events_max_len", EVENTS_MAX_LEN)
        f = Fleet(d, url=url, prefix=prefix or self.prefix(), queue=queue, **defaults)
        self._stack.callback(f.close)
        return f

    def producer(self, url: str, queue: str, prefix: str, **config: Any) -> SyncJobQueue:
        config.setdefault("events_max_len", EVENTS_MAX_LEN)
        q = SyncJobQueue(queue, redis=url, prefix=prefix, **config)
        self._stack.callback(_quiet_close, q)
        return q

    def client(self, url: str) -> redis.Redis:
        c = redis.Redis.from_url(url, socket_timeout=10)
        self._stack.callback(c.close)
        return c

    def callback(self, fn: Callable[..., Any], *args: Any) -> None:
        self._stack.callback(fn, *args)

    @staticmethod
    def prefix() -> str:
        return f"chaos{uuid.uuid4().hex[:8]}"

    # ---------------------------------------------------------------- checks
    def check(self, client: redis.Redis, queue: str, prefix: str, **kw: Any) -> Check:
        return check(snapshot(client, QueueKeys(queue, prefix)), self.ledger, **kw)

    def close(self, keep_dir: bool = False) -> None:
        self._stack.close()
        if self._own_dir and not keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


def _quiet_close(q: SyncJobQueue) -> None:
    with contextlib.suppress(Exception):
        q.close()


@dataclass(frozen=True, slots=True)
class Spec:
    name: str
    item: int
    title: str
    fn: Callable[[Context, Result], None]


SCENARIOS: dict[str, Spec] = {}


def scenario(name: str, item: int, title: str) -> Callable[[Callable[[Context, Result], None]],
                                                           Callable[[Context, Result], None]]:
    def register(fn: Callable[[Context, Result], None]) -> Callable[[Context, Result], None]:
        SCENARIOS[name] = Spec(name, item, title, fn)
        return fn

    return register


def rerun_command(name: str, long: bool) -> str:
    return f".venv/bin/python -m chaos --only {name}" + (" --long" if long else "")


def run_scenario(name: str, *, long: bool = False, workdir: Path | None = None,
                 keep: bool = False) -> Result:
    """Run one scenario and return its result (never raises for a scenario failure)."""
    from . import scenarios  # noqa: F401  (registers every scenario)

    spec = SCENARIOS[name]
    res = Result(spec.name, spec.item, spec.title, "long" if long else "short",
                 rerun=rerun_command(name, long))
    ctx = Context(name, long=long, workdir=workdir)
    t0 = time.monotonic()
    try:
        spec.fn(ctx, res)
    except Exception as exc:
        res.error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-4000:]}"
    finally:
        res.duration_s = time.monotonic() - t0
        failed = res.error is not None or not res.checks or not all(c["ok"] for c in res.checks)
        res.passed = not failed
        if failed:
            res.notes.append(f"work directory kept for inspection: {ctx.dir}")
        ctx.close(keep_dir=keep or failed)
    return res
