"""Module-level processors for tests/test_procpool_orphans.py (process-mode children
import them by path).

Each writes what the test needs to find into the folder ``job.data["dir"]``: ``child``
(the child's pid) and ``grandchild`` (the pid of a ``sleep`` it started), each file
written whole.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any


def _mark(job: Any, name: str, value: object) -> None:
    path = Path(job.data["dir"]) / name
    path.with_suffix(".tmp").write_text(str(value))
    path.with_suffix(".tmp").replace(path)


def spawn_and_sleep(job: Any) -> None:
    """Starts ``sleep 300`` and sleeps in Python (the main thread can run handlers)."""
    _mark(job, "child", os.getpid())
    proc = subprocess.Popen(["sleep", "300"])
    _mark(job, "grandchild", proc.pid)
    time.sleep(300)


def spawn_holding_the_gil(job: Any) -> None:
    """Runs ``sleep 300`` through libc's ``system()`` called with the GIL held (``PyDLL``):
    no Python code runs in this child meanwhile, in no thread (``system`` waits again
    when a signal interrupts it). The shell writes its pid, then becomes ``sleep``."""
    _mark(job, "child", os.getpid())
    where = Path(job.data["dir"])
    tmp, final = shlex.quote(str(where / "grandchild.tmp")), shlex.quote(str(where / "grandchild"))
    command = f"echo $$ > {tmp} && mv {tmp} {final} && exec sleep 300"
    ctypes.PyDLL(None).system(command.encode())


def fork_helpers(job: Any) -> int:
    """Forks a ``multiprocessing`` helper and runs a ``sleep``, both ending at once, and
    returns the child's pid (which must live on to take the next job)."""
    helper = multiprocessing.get_context("fork").Process(target=time.sleep, args=(0.05,))
    helper.start()
    helper.join()
    subprocess.run(["sleep", "0.05"], check=True)
    return os.getpid()


def reap_any(job: Any) -> str:
    """What ``os.waitpid(-1, WNOHANG)`` finds in a child that started no process itself:
    ``none`` when it has no child process at all."""
    try:
        pid, _ = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return "none"
    return f"a child process is running (pid {pid})" if pid == 0 else f"reaped {pid}"


def quick(job: Any) -> int:
    """Return at once (a child per job with ``max_jobs_per_child=1``)."""
    return os.getpid()
