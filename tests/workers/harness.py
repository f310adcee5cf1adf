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
from typing import Any, TypeVar

from kitium_queue.keys import QueueKeys
from kitium_queue.scripts import SCRIPT_NAMES, ScriptRegistry

__all__ = ["Engine", "LogLine", "WorkerPool", "WorkerProc", "read_log", "starts", "wait_for"]

RUN_WORKER = Path(__file__).resolve().with_name("run_worker.py")
T = TypeVar("T")


# ---------------------------------------------------------------------- polling


def wait_for(
    predicate: Callable[[], T], timeout: float, *, interval: float = 0.02, what: str = ""
) -> T:
    """Call ``predicate`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what or predicate}")
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


class WorkerProc:
    """One ``run_worker.py`` process."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes], log: Path, err: Path) -> None:
        self.name = name
        self.popen = popen
        self.log_path = log
        self.err_path = err

    @property
    def pid(self) -> int:
        return self.popen.pid

    def lines(self) -> list[LogLine]:
        return [ln for ln in read_log(self.log_path) if ln.pid == self.pid]

    def stderr(self) -> str:
        try:
            return self.err_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait_ready(self, timeout: float = 20.0) -> None:
        def ready() -> bool:
            if not self.alive():
                raise AssertionError(
                    f"worker {self.name} exited with {self.popen.returncode} before it was "
                    f"ready; stderr:\n{self.stderr()[-3000:]}"
                )
            return any(ln.event == "ready" for ln in self.lines())

        wait_for(ready, timeout, what=f"worker {self.name} to start")

    def running_jobs(self) -> set[str]:
        """Jobs this process started and whose processor has not returned."""
        open_: Counter[str] = Counter()
        for ln in self.lines():
            if ln.event == "start":
                open_[ln.job_id] += 1
            elif ln.event == "finish":
                open_[ln.job_id] -= 1
        return {j for j, n in open_.items() if n > 0}

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
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        with open(err, "ab") as err_file:
            popen = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=err_file, stderr=subprocess.STDOUT, env=env
            )
        proc = WorkerProc(name, popen, log, err)
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
        self, now: int, *, name: str = "j", data: str = "{}", priority: int = 0,
        delay: int = 0, lifo: bool = False, job_id: str = "",
    ) -> str:
        reply = self.run(
            "enqueue", now, 86_400_000, job_id, name, data, "", priority, delay,
            "1" if lifo else "0", "",
        )
        return str(reply[0].decode())

    def claim(
        self, now: int, n: int = 1, *, lease: int = 1000, max_stalled: int = 2,
        dlq: bool = True, worker: str = "w",
    ) -> list[Any]:
        return list(self.run("claim", now, n, lease, 0, 0, max_stalled, "1" if dlq else "0",
                             worker, 1000))

    def finish(
        self, now: int, job_id: str, token: Any, kind: str = "C", *, payload: bytes = b"r",
        delay: int = 0, keep_count: int = -1, dlq: bool = True,
    ) -> str:
        reply = self.run("finish", now, "1" if dlq else "0", job_id, token, kind, payload, "",
                         delay, keep_count, -1, "")
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
        lost, cancelled = self.run("extend", now, lease, *flat)
        return [b.decode() for b in lost], [b.decode() for b in cancelled]

    def job(self, job_id: str) -> dict[str, str]:
        raw = self.client.hgetall(self.keys.job(job_id))
        return {k.decode(): v.decode(errors="replace") for k, v in raw.items()}

    def members(self, state_set: str) -> list[str]:
        return [m.decode() for m in self.client.zrange(getattr(self.keys, state_set), 0, -1)]
