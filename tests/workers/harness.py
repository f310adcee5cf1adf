"""Helpers for the reliability tests: worker subprocesses, their logs, direct script calls.

* :class:`WorkerPool` starts ``run_worker.py`` processes (``sys.executable``), keeps their
  logs and stderr under a directory, and kills whatever is still running on ``close()``
  (use it from a fixture so a failing test cleans up too).
* :func:`read_log` parses the crash-safe logs those processes write.
* :func:`wait_for` polls a condition with a deadline instead of sleeping a fixed time.
* :class:`Engine` runs the Lua transitions directly with an explicit ``now`` (ARGV[2]).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from kitium_queue.keys import QueueKeys
from kitium_queue.scripts import SCRIPT_NAMES, ScriptRegistry

__all__ = [
    "Engine",
    "LogLine",
    "ProcBase",
    "Timeout",
    "WorkerPool",
    "WorkerProc",
    "read_log",
    "spawn",
    "starts",
    "wait_for",
]

RUN_WORKER = Path(__file__).resolve().with_name("run_worker.py")
T = TypeVar("T")


# ---------------------------------------------------------------------- polling


class Timeout(AssertionError):
    """A polled condition did not become true before its deadline."""


def wait_for(
    predicate: Callable[[], T], timeout: float, *, interval: float = 0.02, what: str = ""
) -> T:
    """Call ``predicate`` until it returns something truthy; raise ``Timeout`` after
    ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise Timeout(f"timed out after {timeout:.1f} s waiting for {what or predicate}")
        time.sleep(interval)


# ---------------------------------------------------------------------- logs


@dataclass(frozen=True, slots=True)
class LogLine:
    event: str  # ready | start | finish | exit
    job_id: str
    pid: int
    attempt: int
    t: float  # unix time


def read_log(path: Path) -> list[LogLine]:
    """Parse a worker log; a torn last line (impossible with O_APPEND writes) is skipped."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    out = []
    for raw in text.splitlines():
        parts = raw.split()
        if len(parts) != 5:
            continue
        out.append(LogLine(parts[0], parts[1], int(parts[2]), int(parts[3]), float(parts[4])))
    return out


def starts(lines: Iterable[LogLine]) -> Counter[str]:
    """How many times each job id was started."""
    return Counter(ln.job_id for ln in lines if ln.event == "start")


# ---------------------------------------------------------------------- processes


class _Line(Protocol):
    @property
    def event(self) -> str: ...
    @property
    def job_id(self) -> str: ...
    @property
    def pid(self) -> int: ...


L = TypeVar("L", bound=_Line)
P = TypeVar("P", bound="ProcBase[Any]")


def spawn(cmd: list[str], err: Path, **popen: Any) -> subprocess.Popen[bytes]:
    """Start ``cmd`` unbuffered, stdout and stderr appended to ``err``."""
    env = dict(popen.pop("env", None) or os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    with open(err, "ab") as err_file:
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=err_file,
            stderr=subprocess.STDOUT,
            env=env,
            **popen,
        )


class ProcBase(Generic[L]):
    """A worker process writing a crash-safe line log (one ``os.write`` per line).

    Subclasses name the log parser (``read``) and the events that end a run
    (``END_EVENTS``); the tests' and the chaos suite's workers log different lines.
    """

    END_EVENTS: tuple[str, ...] = ("finish",)

    def __init__(self, name: str, popen: subprocess.Popen[bytes], log: Path, err: Path) -> None:
        self.name = name
        self.popen = popen
        self.log_path = log
        self.err_path = err

    @staticmethod
    def read(path: Path) -> list[L]:
        raise NotImplementedError

    @property
    def pid(self) -> int:
        return self.popen.pid

    def lines(self) -> list[L]:
        return [ln for ln in self.read(self.log_path) if ln.pid == self.pid]

    def stderr(self) -> str:
        try:
            return self.err_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def ready(self) -> bool:
        if not self.alive():
            raise AssertionError(
                f"worker {self.name} exited with {self.popen.returncode} before it was ready; "
                f"stderr:\n{self.stderr()[-3000:]}"
            )
        return any(ln.event == "ready" for ln in self.lines())

    def wait_ready(self: P, timeout: float = 20.0) -> P:
        wait_for(self.ready, timeout, what=f"worker {self.name} to start")
        return self

    def running_jobs(self) -> set[str]:
        """Jobs this process started and whose run has not ended (per its log)."""
        live: Counter[str] = Counter()
        for ln in self.lines():
            if ln.event == "start":
                live[ln.job_id] += 1
            elif ln.event in self.END_EVENTS:
                live[ln.job_id] -= 1
        return {j for j, n in live.items() if n > 0}

    def signal(self, sig: int) -> float:
        """Send ``sig``; returns the unix time just before it was sent."""
        t = time.time()
        self.popen.send_signal(sig)
        return t

    def kill(self) -> float:
        """SIGKILL and reap; returns the unix time of the kill."""
        t = self.signal(signal.SIGKILL)
        self.popen.wait(timeout=10)
        return t

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout=timeout)


class WorkerProc(ProcBase[LogLine]):
    """One ``run_worker.py`` process."""

    read = staticmethod(read_log)


class WorkerPool:
    """Starts worker processes for one queue and guarantees they are gone on ``close()``."""

    def __init__(self, directory: Path, *, url: str, prefix: str, queue: str) -> None:
        self.dir = directory
        self.url = url
        self.prefix = prefix
        self.queue = queue
        self.procs: list[WorkerProc] = []

    def start(
        self, name: str, *, behaviour: str = "sleep", log: Path | None = None, **settings: Any
    ) -> WorkerProc:
        """Start ``run_worker.py``; ``settings`` become ``--lock-duration``-style flags."""
        log = log or self.dir / f"{name}.log"
        err = self.dir / f"{name}.stderr"
        cmd = [
            sys.executable, str(RUN_WORKER),
            "--url", self.url, "--prefix", self.prefix, "--queue", self.queue,
            "--log", str(log), "--behaviour", behaviour,
        ]  # fmt: skip
        for key, value in settings.items():
            cmd += [f"--{key.replace('_', '-')}", str(value)]
        proc = WorkerProc(name, spawn(cmd, err), log, err)
        self.procs.append(proc)
        return proc

    def all_lines(self) -> list[LogLine]:
        seen: set[Path] = set()
        out: list[LogLine] = []
        for p in self.procs:
            if p.log_path not in seen:
                seen.add(p.log_path)
                out.extend(read_log(p.log_path))
        return sorted(out, key=lambda ln: ln.t)

    def close(self) -> None:
        for p in self.procs:
            if p.popen.poll() is None:
                with contextlib.suppress(OSError):
                    p.popen.kill()
        for p in self.procs:
            with contextlib.suppress(Exception):
                p.popen.wait(timeout=10)


# ---------------------------------------------------------------------- scripts


class Engine:
    """Runs the transition scripts of one queue directly, with explicit time.

    ``engine.run("claim", now, n, lease, 0, 0, max_stalled, "1", "w", 1000)`` is
    ``EVALSHA claim 12 <keys> <prefix> <now> <maxlen> <args...>`` — exactly the call the
    library makes, except that ``now`` is given instead of read from the Redis clock.
    """

    def __init__(self, client: Any, queue: str, prefix: str, *, maxlen: int = 10_000) -> None:
        self.client = client  # a synchronous redis.Redis
        self.keys = QueueKeys(queue, prefix)
        self.maxlen = maxlen
        registry = ScriptRegistry()
        self.sha = {name: client.script_load(registry.get(name).source) for name in SCRIPT_NAMES}

    def run(self, script: str, now: int | str, *args: Any) -> Any:
        return self.client.evalsha(
            self.sha[script], len(self.keys.all), *self.keys.all,
            self.keys.base, str(now), self.maxlen, *args,
        )  # fmt: skip

    # convenience wrappers with the argument order of the scripts' headers
    def enqueue(
        self,
        now: int,
        *,
        name: str = "j",
        data: str = "{}",
        priority: int = 0,
        delay: int = 0,
        lifo: bool = False,
        job_id: str = "",
    ) -> str:
        reply = self.run(
            "enqueue",
            now,
            86_400_000,
            job_id,
            name,
            data,
            "",
            priority,
            delay,
            "1" if lifo else "0",
            "",
        )
        return str(reply[0].decode())

    def claim(
        self,
        now: int,
        n: int = 1,
        *,
        lease: int = 1000,
        max_stalled: int = 2,
        dlq: bool = True,
        worker: str = "w",
    ) -> list[Any]:
        return list(
            self.run("claim", now, n, lease, 0, 0, max_stalled, "1" if dlq else "0", worker, 1000)
        )

    def finish(
        self,
        now: int,
        job_id: str,
        token: Any,
        kind: str = "C",
        *,
        payload: bytes = b"r",
        delay: int = 0,
        keep_count: int = -1,
        dlq: bool = True,
    ) -> str:
        reply = self.run(
            "finish",
            now,
            "1" if dlq else "0",
            job_id,
            token,
            kind,
            payload,
            "",
            delay,
            keep_count,
            -1,
            "",
        )
        return str(reply[0].decode())

    def recover(
        self, now: int, *, max_stalled: int = 2, dlq: bool = True
    ) -> tuple[list[str], list[str]]:
        back, dead = self.run("recover", now, max_stalled, "1" if dlq else "0", 1000)
        return [b.decode() for b in back], [b.decode() for b in dead]

    def extend(
        self, now: int, lease: int, pairs: Sequence[tuple[str, Any]]
    ) -> tuple[list[str], list[str]]:
        flat: list[Any] = []
        for job_id, token in pairs:
            flat += [job_id, token]
        lost, cancelled, _gone = self.run("extend", now, lease, *flat)
        return [b.decode() for b in lost], [b.decode() for b in cancelled]

    def job(self, job_id: str) -> dict[str, str]:
        raw = self.client.hgetall(self.keys.job(job_id))
        return {k.decode(): v.decode(errors="replace") for k, v in raw.items()}

    def members(self, state_set: str) -> list[str]:
        return [m.decode() for m in self.client.zrange(getattr(self.keys, state_set), 0, -1)]
