"""A complete enterprise setup: every enterprise feature on one queue.

- an order is added effectively-once (a repeated key returns the first job), in its
  customer's FIFO group, with its card data encrypted at rest;
- its processor checks the tenant's grant, charges through a circuit breaker and records
  the side effect so a re-run never charges twice;
- a workflow (validate, charge, ship) passes results from step to step;
- signed, guaranteed ``job-completed`` webhooks reach a local receiver that verifies them;
- a ``GlobalQueueManager`` over two regions places a tenant restricted to eu-west-1 there
  (its tenants come from the ``AccessControlManager``) and refuses it elsewhere.

    python examples/enterprise_setup.py                                         # memory://
    KQ_REDIS_URL=redis://localhost:6379/0 python examples/enterprise_setup.py   # a real Redis
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from kitium_queue import (
    AccessControlManager,
    CircuitBreakerManager,
    DeliveryGuarantee,
    FIFOQueueManager,
    GlobalQueueManager,
    IdempotencyManager,
    Job,
    JobChainManager,
    JobQueue,
    RegionNotAllowedError,
    WebhookConfig,
    WebhookManager,
    WorkflowStep,
    generate_secret,
    verify_webhook,
)
from kitium_queue.features.encryption import EncryptionManager, KeyConfig, generate_key

REDIS = os.environ.get("KQ_REDIS_URL", "").strip() or "memory://"
PREFIX = f"kq-examples-{os.getpid()}"
SECRET = generate_secret()  # webhook signing secret: from your configuration in real life
os.environ.setdefault("ORDERS_KEY", generate_key())  # the encryption key: from a secret store
received: list[dict[str, Any]] = []


class Receiver(BaseHTTPRequestHandler):  # the receiving side of the webhooks
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        verify_webhook(body, self.headers, SECRET)  # raises if forged, tampered or stale
        received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


server = HTTPServer(("127.0.0.1", 0), Receiver)
threading.Thread(target=server.serve_forever, daemon=True).start()

# Core queue, and the enterprise managers on it (in every process of the queue).
queue = JobQueue(
    "enterprise-queue",
    redis=REDIS,
    prefix=PREFIX,
    default_job_options={"attempts": 3, "backoff": {"type": "exponential", "delay": 1000}},
    worker={"concurrency": 4},
)
idempotency = IdempotencyManager(queue)
fifo = FIFOQueueManager(queue)
encryption = EncryptionManager(queue, keys=[KeyConfig.from_env("ORDERS_KEY", "k1")])
chains = JobChainManager(queue)
breakers = CircuitBreakerManager(queue)
webhooks = WebhookManager(queue, allow_networks=["127.0.0.0/8"])  # loopback: demo only
acl = AccessControlManager(
    REDIS, prefix=PREFIX, audit_key=secrets.token_hex(32), principal="platform-admin"
)
charges: list[str] = []


async def process_payment(data: dict[str, Any]) -> dict[str, str]:
    charges.append(data["id"])  # the payment API call
    return {"id": f"pay-{data['id']}"}


@queue.process("process-order")
async def process_order(job: Job) -> dict[str, Any]:
    if not await acl.check_access(job.data["tenant_id"], queue.name, "can_add_job"):
        raise PermissionError(f"tenant {job.data['tenant_id']} may not add orders")
    done = await idempotency.get_execution_result(f"charge:{job.idempotency_key}")
    if done is not None:  # a re-run after a crash: the charge was already made
        return dict(done.result)
    payment = await breakers.get_breaker("stripe-payment")
    assert payment is not None
    paid = await payment.execute(process_payment, job.data)  # job.data is plaintext here
    result = {"order_id": job.data["id"], "payment_id": paid["id"]}
    await idempotency.record_execution(f"charge:{job.idempotency_key}", job.id, job.name, result)
    return result


@queue.process("validate-order")
async def validate(job: Job) -> dict[str, Any]:
    return {"amount": job.data["amount"]}


@queue.process("charge-card")
async def charge_card(job: Job) -> dict[str, Any]:
    return {"charged": job.data["amount"], "card": "****" + job.data["card_token"][-3:]}


@queue.process("ship-order")
async def ship(job: Job) -> dict[str, str]:
    return {"tracking": f"TRK-{job.data['order']}"}


def charge_data(data: Any, parents: dict[str, Any]) -> dict[str, Any]:
    """The data transformer of the charge step: the validated amount and the card token."""
    return {"amount": parents["validate"].result["amount"], "card_token": data["card_token"]}


chains.register_transformer("charge-data", charge_data)


def region_urls() -> tuple[str, str]:
    """Each region is its own store: memory:// names, or the next two Redis databases."""
    if REDIS.startswith("memory://"):
        return (f"memory://{PREFIX}-us", f"memory://{PREFIX}-eu")
    base, _, db = REDIS.rpartition("/")
    first = int(db) if db.isdigit() else 0
    return (f"{base}/{first + 1}", f"{base}/{first + 2}")


async def add_order(order: dict[str, Any], tenant_id: str) -> str:
    """Add an order: exactly-once, in the customer's FIFO group, encrypted."""
    return await fifo.add_to_group(
        "process-order",
        {**order, "tenant_id": tenant_id},
        {"group_id": f"customer-{order['customer_id']}"},
        {
            "delivery_guarantee": DeliveryGuarantee.EXACTLY_ONCE,
            "idempotency_key": f"order-{order['id']}",
            "encrypted": True,
        },
    )


async def wait_done(job_id: str) -> Any:
    while (info := await queue.get_job_status(job_id)) is None or info.status.value not in (
        "completed",
        "failed",
        "dlq",
    ):
        await asyncio.sleep(0.01)
    return info


async def main() -> None:
    await encryption.initialize()
    await breakers.create_breaker(
        {
            "id": "stripe-payment",
            "job_name": "process-payment",
            "failure_threshold": {"percentage": 50, "min_requests": 5},
        }
    )
    hook = await webhooks.register_webhook(
        WebhookConfig(
            url=f"http://127.0.0.1:{server.server_port}/webhooks/orders",
            secret=SECRET,
            events=["job-completed", "job-failed"],
            delivery_strategy="guaranteed",
        )
    )
    # Tenants and grants: an administrator grant first, then the tenant and its access.
    await acl.grant_access(principal_id="platform-admin", queue_pattern="*", role="admin")
    await acl.create_tenant({"tenant_id": "acme-corp", "allowed_regions": ["eu-west-1"]})
    await acl.grant_access(
        principal_id="acme-corp",
        queue_pattern="enterprise-*",
        permissions={"can_add_job": True, "can_view_job": True, "can_manage_queue": False},
    )

    order = {
        "id": "order-123",
        "customer_id": "customer-456",
        "amount": 99.99,
        "card_token": "tok_123",
    }
    first = await add_order(order, "acme-corp")
    again = await add_order(order, "acme-corp")
    stored = await (await queue.client()).hget(queue.keys.job(first), "d")
    print(f"same job for a repeated order: {first == again}")
    print(f"stored data holds the card token: {b'tok_123' in stored}")

    ids = await chains.execute_workflow(
        "order-workflow-order-123",
        [
            WorkflowStep("validate", "validate-order", {"amount": 99.99}, retry_attempts=2),
            WorkflowStep(
                "charge",
                "charge-card",
                {"card_token": "tok_123"},
                depends_on=["validate"],
                data_transformer="charge-data",
            ),
            WorkflowStep(
                "ship",
                "ship-order",
                {"order": "order-123"},
                depends_on=["charge"],
                retry_attempts=3,
            ),
        ],
    )
    await queue.start()
    info = await wait_done(first)
    print(f"order {info.status.value}: {info.result}; charges made: {len(charges)}")
    while (wf := await chains.get_workflow_status("order-workflow-order-123")) is None or (
        wf.state == "running"
    ):
        await asyncio.sleep(0.01)
    shipped = await queue.get_job_status(ids["ship"])
    print(f"workflow {wf.state}: ship -> {shipped.result if shipped else None}")
    while len(received) < 4:  # the order and the three workflow steps
        await asyncio.sleep(0.02)
    print(f"webhooks verified: {len(received)} signed job-completed events")
    breaker = await breakers.get_breaker("stripe-payment")
    assert breaker is not None
    print(f"breaker stripe-payment: {(await breaker.get_stats()).state}")

    # The global queue: acme-corp's jobs stay in the regions its tenant record allows.
    us, eu = region_urls()
    regions = GlobalQueueManager()
    await regions.initialize(
        {
            "name": "global-orders",
            "regions": [
                {"region": "us-east-1", "redis": us, "is_primary": True},
                {"region": "eu-west-1", "redis": eu, "priority": 2},
            ],
            "tenants": acl,
            "background": False,
            "queue_options": {"prefix": PREFIX},
        }
    )
    regions.declare_option("tenant_id", feature="enterprise example")
    placed = await regions.add_job("process-order", {"id": "order-124"}, tenant_id="acme-corp")
    print(f"acme-corp's global job placed in: {placed.split(':')[0]}")
    try:
        await regions.add_job(
            "process-order", {"id": "order-125"}, tenant_id="acme-corp", region="us-east-1"
        )
    except RegionNotAllowedError as exc:
        print(f"refused in us-east-1: {type(exc).__name__}")

    await regions.clear(force=True)
    await regions.close()
    await webhooks.remove_webhook(hook.id)
    await breakers.remove_breaker("stripe-payment")
    await queue.clear(force=True)
    await queue.close()
    await acl.close()
    server.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
