"""Module-level processors for tests/test_process_mode.py (children import them by path)."""

from __future__ import annotations

import os
from typing import Any

from kitium_queue import NonRetryableError, RetryLater


def double(job: Any) -> dict[str, Any]:
    job.update_progress_sync(40)
    job.log_sync(f"doubling {job.data['x']}")
    print("stray output must not corrupt the frame stream")
    return {"value": job.data["x"] * 2, "pid": os.getpid()}


def spin(job: Any) -> None:
    while True:
        pass


def refuse(job: Any) -> None:
    raise NonRetryableError("bad input")


def later(job: Any) -> str:
    marker = job.data["marker"]
    if not os.path.exists(marker):
        with open(marker, "w"):
            pass
        raise RetryLater(50, "not yet")
    return "ran"


def crash(job: Any) -> None:
    os._exit(3)


def unserializable(job: Any) -> object:
    return object()
