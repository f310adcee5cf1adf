"""Module-level processors for tests/test_runtime_hostile.py (process-mode children
import them by path)."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any


def pid(job: Any) -> int:
    return os.getpid()


def exit_soon_after(job: Any) -> int:
    """Returns, leaving behind a thread that ends the child a moment later (while it is
    idle in the pool)."""
    threading.Timer(0.1, os._exit, (7,)).start()
    return os.getpid()


def killed(job: Any) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def rate_limited_once(job: Any) -> str:
    """Raises RateLimited (a long hold of its scope) when its data says ``limit``."""
    from kitium_queue import RateLimited

    if job.data.get("limit"):
        raise RateLimited(60_000, "upstream said 429", scope=job.data["scope"])
    return "ok"
