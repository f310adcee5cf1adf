"""Module-level processors for tests/test_procpool_signals.py (process-mode children
import them by path).

``KQ_TEST_SLOW_IMPORT_S`` in the environment makes importing this module take that
long: a child started while it is set has a slow start (the test process imported the
module before setting it).
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

time.sleep(float(os.environ.get("KQ_TEST_SLOW_IMPORT_S", "0")))


def _mark(job: Any, value: object) -> None:
    path = Path(job.data["file"])
    path.with_suffix(".tmp").write_text(str(value))
    path.with_suffix(".tmp").replace(path)  # whole, never half-written


def nap(job: Any) -> int:
    """Writes its pid to ``file``, sleeps ``s`` seconds, returns its pid."""
    _mark(job, os.getpid())
    time.sleep(job.data.get("s", 0))
    return os.getpid()


def pid(job: Any) -> int:
    return os.getpid()


def spawn_and_sleep(job: Any) -> None:
    """Starts ``sleep 120`` (its pid written to ``file``) and sleeps."""
    proc = subprocess.Popen(["sleep", "120"])
    _mark(job, proc.pid)
    time.sleep(120)


def fork_helper_then_exit(job: Any) -> None:
    """Forks a helper (holding the child's pipes, as any forked process does), writes
    its pid to ``file`` and ends the child with exit code 5."""
    helper = multiprocessing.get_context("fork").Process(target=time.sleep, args=(120,))
    helper.start()
    _mark(job, helper.pid)
    os._exit(5)


def leave_a_thread(job: Any) -> str:
    """Returns at once; a thread it leaves behind logs and reports progress a moment
    later, and writes what that did (``ok`` or the error's type) to ``file``."""

    def later() -> None:
        time.sleep(0.3)
        try:
            job.log_sync(f"late line from job {job.id}")
            job.update_progress_sync({"from_job": job.id})
            _mark(job, "ok")
        except Exception as exc:
            _mark(job, type(exc).__name__)

    threading.Thread(target=later, daemon=True).start()
    return "left"


class Holder:
    """Its methods: one bound to an instance (refused in process mode) and a classmethod
    (reached through its class by name: accepted)."""

    def method(self, job: Any) -> int:
        return 1

    @classmethod
    def make(cls, job: Any) -> str:
        return cls.__name__


HOLDER = Holder()
