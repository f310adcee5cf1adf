"""Processes of a chaos run: private redis-server processes, chaos worker processes, logs.

* :func:`redis_server` starts a private ``redis-server`` on a free loopback port (the
  test suite's ``tests/_redis.py``), optionally durable (AOF).
* :class:`Fleet` starts ``chaos/worker.py`` processes for one queue, restarts dead ones on
  request (like a process manager would) and kills whatever still runs on ``close()``.
* :func:`read_log` parses the workers' shared line log.
* :func:`wait_for` polls a condition with a deadline (no fixed sleeps).

The process base class, ``wait_for`` and ``spawn`` are the test suite's
(``tests/workers/harness.py``); the chaos worker logs more events (raise, cancel, crash,
stalls), so its ``LogLine`` and ``WorkerProc`` extend them here.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from _redis import RedisServer, free_port  # noqa: E402  (tests/ put on sys.path above)
from workers.harness import ProcBase, Timeout, spawn, wait_for  # noqa: E402

__all__ = [
    "ROOT",
    "Fleet",
    "LogLine",
    "RedisServer",
    "Timeout",
    "WorkerProc",
    "free_port",
    "read_log",
    "redis_server",
    "runs_by_job",
    "wait_for",
]

WORKER_SCRIPT = Path(__file__).resolve().with_name("worker.py")


def redis_server(*, appendfsync: str | None = None) -> RedisServer:
    """A started private redis-server; with ``appendfsync`` it keeps an AOF."""
    args: list[str] = []
    if appendfsync:
        args = ["--appendonly", "yes", "--appendfsync", appendfsync]
    return RedisServer(*args).start()


# ---------------------------------------------------------------------- logs


@dataclass(frozen=True, slots=True)
class LogLine:
    event: str  # ready | clock | start | finish | raise | cancel | wake | crash | exit
    job_id: str
    pid: int
    attempt: int
    stalls: int
    t: float  # real unix time


def read_log(path: Path) -> list[LogLine]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    out = []
    for raw in text.splitlines():
        parts = raw.split()
        if len(parts) != 6:
            continue  # a line torn by a crash mid-write (one write per line: not seen)
        ev, jid, pid, att, st, t = parts
        out.append(LogLine(ev, jid, int(pid), int(att), int(st), float(t)))
    return sorted(out, key=lambda ln: ln.t)


@dataclass(slots=True)
class Run:
    """One execution of a job's processor in one process, from the log."""

    job_id: str
    pid: int
    attempt: int
    stalls: int
    start: float
    end: float | None = None
    how: str | None = None  # finish | raise | cancel | crash | None (process died)


def runs_by_job(lines: Iterable[LogLine], dead_at: dict[int, float] | None = None) -> dict[
    str, list[Run]
]:
    """Group log lines into runs. A run with no end line ends at its process's death
    (``dead_at[pid]``) if known, else stays open (``end is None``)."""
    open_: dict[tuple[str, int], Run] = {}
    runs: dict[str, list[Run]] = defaultdict(list)
    for ln in lines:
        key = (ln.job_id, ln.pid)
        if ln.event == "start":
            run = Run(ln.job_id, ln.pid, ln.attempt, ln.stalls, ln.t)
            open_[key] = run
            runs[ln.job_id].append(run)
        elif ln.event in ("finish", "raise", "cancel", "crash"):
            run_or_none = open_.pop(key, None)
            if run_or_none is not None:
                run_or_none.end = ln.t
                run_or_none.how = ln.event
    for (_, pid), run in open_.items():
        if dead_at and pid in dead_at:
            run.end = dead_at[pid]
            run.how = "killed"
    return dict(runs)


def overlaps(runs: dict[str, list[Run]], now: float) -> list[tuple[str, float]]:
    """Jobs whose runs in different processes overlapped in time, with the overlap (s)."""
    out = []
    for jid, rs in runs.items():
        if len(rs) < 2:
            continue
        worst = 0.0
        for i, a in enumerate(rs):
            for b in rs[i + 1 :]:
                if a.pid == b.pid:
                    continue
                lo = max(a.start, b.start)
                hi = min(a.end if a.end is not None else now, b.end if b.end is not None else now)
                worst = max(worst, hi - lo)
        if worst > 0:
            out.append((jid, worst))
    return out


# ---------------------------------------------------------------------- processes


class WorkerProc(ProcBase[LogLine]):
    """One chaos worker process (``chaos/worker.py``)."""

    END_EVENTS = ("finish", "raise", "cancel", "crash")
    read = staticmethod(read_log)

    def __init__(
        self, name: str, popen: subprocess.Popen[bytes], log: Path, err: Path, args: list[str]
    ) -> None:
        super().__init__(name, popen, log, err)
        self.args = args
        self.died_at: float | None = None
        self.stopped_by_scenario = False  # SIGTERM/SIGINT/SIGKILL sent by the scenario

    def signal(self, sig: int) -> float:
        if sig in (signal.SIGTERM, signal.SIGINT, signal.SIGKILL):
            self.stopped_by_scenario = True
        return super().signal(sig)

    def kill(self) -> float:
        self.died_at = t = super().kill()
        return t

    def wait(self, timeout: float) -> int:
        rc = super().wait(timeout)
        if self.died_at is None:
            self.died_at = time.time()
        return rc


class Fleet:
    """Chaos worker processes of one queue; ``close()`` kills whatever still runs."""

    def __init__(
        self, directory: Path, *, url: str, prefix: str, queue: str, **defaults: Any
    ) -> None:
        self.dir = directory
        self.url = url
        self.prefix = prefix
        self.queue = queue
        self.defaults = defaults
        self.log_path = directory / "runs.log"
        self.state_dir = directory / "state"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.procs: list[WorkerProc] = []
        self._n = 0

    def start(self, name: str | None = None, *, url: str | None = None, **settings: Any
              ) -> WorkerProc:
        """Start a worker; ``settings`` (over the fleet's defaults) become CLI flags."""
        self._n += 1
        name = name or f"w{self._n}"
        err = self.dir / f"{name}.{self._n}.stderr"
        cmd = [
            sys.executable, str(WORKER_SCRIPT),
            "--url", url or self.url, "--prefix", self.prefix, "--queue", self.queue,
            "--log", str(self.log_path), "--state-dir", str(self.state_dir),
        ]  # fmt: skip
        for key, value in {**self.defaults, **settings}.items():
            if value is None:
                continue
            cmd += [f"--{key.replace('_', '-')}", str(value)]
        env = dict(os.environ)
        src = str(ROOT / "src")
        env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        popen = spawn(cmd, err, env=env, cwd=str(self.dir))
        proc = WorkerProc(name, popen, self.log_path, err, cmd)
        self.procs.append(proc)
        return proc

    def live(self) -> list[WorkerProc]:
        return [p for p in self.procs if p.alive()]

    def lines(self) -> list[LogLine]:
        return read_log(self.log_path)

    def dead_at(self) -> dict[int, float]:
        return {p.pid: p.died_at for p in self.procs if p.died_at is not None}

    def runs(self) -> dict[str, list[Run]]:
        """Runs from the log; a run cut off by its process's death ends at the death
        (the kill time if the scenario killed it, else now)."""
        dead = self.dead_at()
        for p in self.procs:
            if p.pid not in dead and not p.alive():
                dead[p.pid] = time.time()
        return runs_by_job(self.lines(), dead)

    def running(self, job: str) -> WorkerProc | None:
        """The worker whose run of ``job`` is open per the log, or None. One pass over
        the log's lines for ``job`` only (parsing a log of tens of thousands of lines per
        look, as ``lines`` does, takes seconds on a loaded machine)."""
        try:
            text = self.log_path.read_text()
        except FileNotFoundError:
            return None
        live: Counter[int] = Counter()
        for event, pid in re.findall(rf"^(\w+) {re.escape(job)} (\d+) ", text, re.MULTILINE):
            if event == "start":
                live[int(pid)] += 1
            elif event in WorkerProc.END_EVENTS:
                live[int(pid)] -= 1
        return next((w for pid, n in live.items() if n > 0 and (w := self.by_pid(pid))), None)

    def by_pid(self, pid: int) -> WorkerProc | None:
        return next((p for p in self.procs if p.pid == pid), None)

    def stderr(self) -> str:
        return "\n".join(f"--- {p.name} ({p.pid})\n{p.stderr()}" for p in self.procs)

    def stop_all(self, timeout: float = 30.0) -> dict[str, int | None]:
        """SIGTERM every live worker and wait; returns exit codes by name. A worker
        started moments ago (a replacement after a crash) is first given up to 20 s to
        be ready: before its handler is in place, SIGTERM is not a graceful stop."""
        live = self.live()
        for p in live:
            with contextlib.suppress(OSError):
                p.popen.send_signal(signal.SIGCONT)
        for p in live:
            with contextlib.suppress(Exception):
                wait_for(p.ready, 20, what=f"worker {p.name} to be ready")
            with contextlib.suppress(OSError):
                p.popen.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        for p in self.procs:
            try:
                codes[p.name] = p.wait(timeout)
            except subprocess.TimeoutExpired:
                codes[p.name] = None
        return codes

    def close(self) -> None:
        for p in self.procs:
            if p.popen.poll() is None:
                with contextlib.suppress(OSError):
                    p.popen.kill()
        for p in self.procs:
            with contextlib.suppress(Exception):
                p.popen.wait(timeout=10)
