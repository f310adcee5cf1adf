"""The web app: a FastAPI producer that takes orders and hands them to the queue.

    pip install fastapi uvicorn
    uvicorn examples.fastapi_app.app:app                      # memory://, worker inside
    KQ_REDIS_URL=redis://localhost:6379/0 uvicorn examples.fastapi_app.app:app
    KQ_REDIS_URL=redis://localhost:6379/0 python -m examples.fastapi_app.worker

Endpoints: ``POST /orders`` (202 and the job's id; an order sent twice is one job),
``GET /jobs/{job_id}`` (its status, progress and result), ``GET /stats``,
``GET /healthz`` (liveness), ``GET /readyz`` (readiness: Redis answers), and the
dashboard under ``/admin/queues``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Header, HTTPException, Response
from pydantic import BaseModel, Field

from kitium_queue.dashboard import create_dashboard

from .tasks import queue

#: Run the worker inside the web process: by default only on memory://, whose data
#: lives in this process; with Redis the worker is a process of its own (worker.py).
RUN_WORKER = os.environ.get("KQ_RUN_WORKER", "1" if queue.connection.is_memory else "0") == "1"


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    if RUN_WORKER:
        await queue.start()
    try:
        yield
    finally:
        await queue.close()  # stops the worker gracefully, releases the connections


app = FastAPI(title="orders", lifespan=lifespan)


class Order(BaseModel):
    """An order as the client sends it (validated before anything is queued)."""

    order_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    amount_cents: int = Field(gt=0, le=100_000_000)
    email: str = Field(min_length=3, max_length=254, pattern=r"^[^@\s]+@[^@\s]+$")


@app.post("/orders", status_code=202)
async def create_order(
    order: Order, idempotency_key: str | None = Header(default=None, max_length=200)
) -> dict[str, str]:
    """Queue the charge of an order; a retried request (same order id, or the same
    ``Idempotency-Key`` header) returns the first request's job instead of a second one."""
    job_id = await queue.add_job(
        "charge", order.model_dump(), idempotency_key=idempotency_key or f"order-{order.order_id}"
    )
    return {"job_id": job_id, "status_url": f"/jobs/{job_id}"}


@app.get("/jobs/{job_id}")
async def job_status(job_id: str) -> dict[str, Any]:
    """Where a job is: status, progress, attempts, result or failure reason."""
    info = await queue.get_job_status(job_id)
    if info is None:
        raise HTTPException(status_code=404, detail="no such job")
    return {
        "id": info.id,
        "name": info.name,
        "status": info.status.value,
        "progress": info.progress,
        "attempts": info.attempts,
        "result": info.result,
        "failed_reason": info.failed_reason,
    }


@app.get("/stats")
async def stats() -> dict[str, Any]:
    """Counts of jobs per state."""
    return (await queue.get_stats()).to_dict()


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers (restart it if not)."""
    return {"status": "ok"}


@app.get("/readyz")
async def readyz(response: Response) -> dict[str, Any]:
    """Readiness: Redis answers (take the instance out of rotation if not)."""
    health = await queue.health_check()
    if not health:
        response.status_code = 503
    return {"ready": bool(health), "redis_latency_ms": health.redis_latency_ms}


# ---------------------------------------------------------------- the dashboard
# The kitium-queue dashboard (an ASGI app, extra "dashboard") mounted next to the API.
# Who may sign in comes from KQ_DASHBOARD_TOKENS: "TOKEN:PRINCIPAL:ROLE" entries separated
# by commas (roles: viewer, operator, manager, admin; tokens of 32+ random characters).
# Without it the dashboard serves this machine's browsers only, as an admin (development).
DASHBOARD_PATH = "/admin/queues"
_tokens = [t for t in os.environ.get("KQ_DASHBOARD_TOKENS", "").split(",") if t.strip()]
app.mount(
    DASHBOARD_PATH,
    create_dashboard(queues=[queue], tokens=_tokens or None, insecure_local=not _tokens),
)
