"""The worker process: runs the jobs the web app adds, until SIGTERM or Ctrl-C.

    KQ_REDIS_URL=redis://localhost:6379/0 python -m examples.fastapi_app.worker

The same as ``kitium-queue worker examples.fastapi_app.tasks:queue``.
"""

from __future__ import annotations

import asyncio

from .tasks import queue

if __name__ == "__main__":
    asyncio.run(queue.run_worker())
