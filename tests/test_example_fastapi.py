"""examples/fastapi_app (issue 16, item 5): the FastAPI producer with FastAPI's test
client, on memory:// (the worker inside the web app) and on a real Redis (the worker a
process of its own, started as the example's README says)."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

with warnings.catch_warnings():  # starlette's notice about its own httpx transport
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

ROOT = Path(__file__).resolve().parents[1]
ORDER = {"order_id": "A-1001", "amount_cents": 2500, "email": "ann@example.com"}


def _load(monkeypatch: pytest.MonkeyPatch, **env: str) -> ModuleType:
    """The example's app module, imported afresh with ``env`` (it reads it at import)."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.syspath_prepend(str(ROOT))
    for name in [m for m in sys.modules if m.startswith("examples.fastapi_app")]:
        del sys.modules[name]
    return importlib.import_module("examples.fastapi_app.app")


@pytest.fixture
def memory_app(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    yield _load(monkeypatch, KQ_REDIS_URL=f"memory://{uuid.uuid4().hex}")
    for name in [m for m in sys.modules if m.startswith("examples.fastapi_app")]:
        del sys.modules[name]


def _until_finished(client: TestClient, job_id: str, timeout: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
        if body["status"] in ("completed", "dlq", "failed") or time.monotonic() > deadline:
            return body
        time.sleep(0.02)


def _orders_flow(client: TestClient) -> None:
    made = client.post("/orders", json=ORDER)
    assert made.status_code == 202, made.text
    job_id = made.json()["job_id"]
    assert made.json()["status_url"] == f"/jobs/{job_id}"
    # The same order again (a client retrying): the same job, nothing new queued.
    assert client.post("/orders", json=ORDER).json()["job_id"] == job_id
    done = _until_finished(client, job_id)
    assert done["status"] == "completed", done
    assert done["result"] == {"charged_cents": 2500, "receipt": "rcpt-A-1001"}
    assert done["progress"] == 100 and done["attempts"] == 1
    # An explicit Idempotency-Key header is the key instead of the order id.
    other = dict(ORDER, order_id="A-1002")
    first = client.post("/orders", json=other, headers={"Idempotency-Key": "req-77"})
    again = client.post(
        "/orders", json=dict(other, order_id="A-1003"), headers={"Idempotency-Key": "req-77"}
    )
    assert first.json()["job_id"] == again.json()["job_id"]
    # Over the card limit: no retry, straight to the DLQ with the reason.
    big = client.post("/orders", json=dict(ORDER, order_id="B-1", amount_cents=5_000_000))
    failed = _until_finished(client, big.json()["job_id"])
    assert failed["status"] == "dlq" and "over the card limit" in failed["failed_reason"]
    assert _until_finished(client, first.json()["job_id"])["status"] == "completed"
    # Refused before anything is queued.
    for bad in (
        {**ORDER, "amount_cents": 0},
        {**ORDER, "order_id": "a b"},
        {**ORDER, "email": "nobody"},
        {"order_id": "x"},
    ):
        assert client.post("/orders", json=bad).status_code == 422
    assert client.get("/jobs/no-such-job").status_code == 404
    stats = client.get("/stats").json()
    # Charges: A-1001, A-1002 completed, B-1 dead-lettered; receipts: 2, one per order.
    assert stats["dlq"] == 1 and stats["waiting"] == 0
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True


def test_on_memory_with_the_worker_inside(memory_app: ModuleType) -> None:
    assert memory_app.RUN_WORKER is True
    with TestClient(memory_app.app) as client:
        _orders_flow(client)
        assert _wait(lambda: client.get("/stats").json()["completed"] == 4, "receipts")


def _wait(cond: Any, note: Any, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, note
        time.sleep(0.02)
    return True


@pytest.mark.redis_only
def test_on_redis_with_a_worker_process(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, prefix: str
) -> None:
    env = {"KQ_REDIS_URL": redis_url, "KQ_PREFIX": prefix}
    mod = _load(monkeypatch, **env)
    assert mod.RUN_WORKER is False  # with Redis, the worker is its own process
    worker = subprocess.Popen(
        [sys.executable, "-m", "examples.fastapi_app.worker"],
        cwd=ROOT,
        env={**os.environ, **env, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with TestClient(mod.app) as client:
            _orders_flow(client)
            assert _wait(lambda: client.get("/stats").json()["completed"] == 4, "receipts")
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=30)
        for name in [m for m in sys.modules if m.startswith("examples.fastapi_app")]:
            del sys.modules[name]
    assert worker.returncode == 0, err
    assert "Traceback" not in err, err


def test_the_dashboard_is_mounted(monkeypatch: pytest.MonkeyPatch) -> None:
    token = "t" * 40
    mod = _load(
        monkeypatch,
        KQ_REDIS_URL=f"memory://{uuid.uuid4().hex}",
        KQ_DASHBOARD_TOKENS=f"{token}:ann@example.com:viewer",
    )
    try:
        with TestClient(mod.app) as client:
            job_id = client.post("/orders", json=ORDER).json()["job_id"]
            # Signed out: sent to the dashboard's sign-in page, under the mount path.
            r = client.get("/admin/queues/", follow_redirects=False)
            assert r.status_code == 303 and "/login" in r.headers["location"]
            assert client.get("/admin/queues/api/stats").status_code == 401
            auth = {"authorization": f"Bearer {token}"}
            stats = client.get("/admin/queues/api/stats", headers=auth).json()
            assert [q["name"] for q in stats["queues"]] == [mod.queue.name]
            assert _until_finished(client, job_id)["status"] == "completed"
    finally:
        for name in [m for m in sys.modules if m.startswith("examples.fastapi_app")]:
            del sys.modules[name]


def test_without_tokens_the_dashboard_serves_this_machine_only(memory_app: ModuleType) -> None:
    with TestClient(memory_app.app, client=("203.0.113.7", 50000)) as client:
        assert client.get("/admin/queues/api/stats").status_code == 403
        assert client.get("/healthz").status_code == 200  # the API is not affected
    # This machine's names only (a rebound domain, or TestClient's "testserver", is not).
    with TestClient(memory_app.app, client=("127.0.0.1", 50000)) as client:
        assert client.get("/admin/queues/api/stats").status_code == 403
    with TestClient(
        memory_app.app, client=("127.0.0.1", 50000), base_url="http://localhost"
    ) as client:
        assert client.get("/admin/queues/api/stats").status_code == 200
