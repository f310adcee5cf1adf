"""Starts ``flow_worker.py`` processes for the schedule and flow-control tests.

    wp = WorkerProcs(redis_url, prefix, "queue-name", tmp_path)
    await wp.start(2, "--global-cap", "3")   # returns once every process printed "ready"
    wp.kill(0)                                # SIGKILL one
    await wp.close()                          # SIGTERM the rest, then SIGKILL stragglers

``script=`` runs another worker script taking the same ``--url --prefix --queue``
(``breaker_worker.py``). Each process's stderr goes to ``<tmp_path>/worker-<n>.err``
(``stderr()`` shows them).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

__all__ = ["FLOW_WORKER", "WorkerProcs"]

FLOW_WORKER = Path(__file__).resolve().with_name("flow_worker.py")


class WorkerProcs:
    def __init__(
        self, url: str, prefix: str, queue: str, logdir: Path, script: Path = FLOW_WORKER
    ) -> None:
        self.script = script
        self.url = url
        self.prefix = prefix
        self.queue = queue
        self.logdir = logdir
        self.procs: list[asyncio.subprocess.Process] = []
        self._errs: list[Path] = []

    async def start(self, n: int, *extra: str, timeout: float = 20.0) -> None:
        started = []
        for _ in range(n):
            err = self.logdir / f"worker-{len(self.procs)}.err"
            self._errs.append(err)
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(self.script),
                "--url",
                self.url,
                "--prefix",
                self.prefix,
                "--queue",
                self.queue,
                *extra,
                stdout=asyncio.subprocess.PIPE,
                stderr=err.open("wb"),
                env=env,
            )
            self.procs.append(proc)
            started.append(proc)
        for proc in started:
            assert proc.stdout is not None
            try:
                line = await asyncio.wait_for(proc.stdout.readline(), timeout)
            except asyncio.TimeoutError:
                raise AssertionError(f"worker did not start: {self.stderr()}") from None
            assert line.strip() == b"ready", f"worker failed: {line!r} {self.stderr()}"

    def kill(self, i: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.procs[i].send_signal(signal.SIGKILL)

    def alive(self) -> int:
        return sum(1 for p in self.procs if p.returncode is None)

    def stderr(self) -> str:
        return "\n".join(f"--- {e.name}\n{e.read_text()[-3000:]}" for e in self._errs if e.exists())

    async def close(self) -> None:
        for p in self.procs:
            if p.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                await asyncio.wait_for(p.wait(), 10)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                await p.wait()
