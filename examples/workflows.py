"""Workflows: an order workflow as a DAG of jobs, with data passing and a
failure policy.

``JobChainManager.execute_workflow`` runs it: validate, then charge, then ship and
notify in parallel, then archive. Each step reads its parents' results; a transformer
shapes the data a step runs with; a step added later with
``add_job(..., workflow_id=...)`` joins the running workflow. A second order whose card
is declined shows the default policy: the workflow fails and the steps that had not
started are cancelled (removed, never left pending).

    python examples/workflows.py                                 # memory:// backend
    KQ_REDIS_URL=redis://localhost:6379/0 python examples/workflows.py
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from kitium_queue import Job, JobChainManager, JobQueue, WorkflowStep

queue = JobQueue("orders", redis=os.environ.get("KQ_REDIS_URL", "").strip() or "memory://",
                 prefix=f"kq-examples-{os.getpid()}", worker={"concurrency": 10})
chains = JobChainManager(queue)  # in every process that adds or runs this queue's jobs
ran: list[str] = []


@queue.process("validate-order")
async def validate(job: Job) -> dict[str, Any]:
    ran.append(job.id)
    return {"order": job.data["order"], "amount": job.data["amount"]}


@queue.process("charge-card")
async def charge(job: Job) -> dict[str, Any]:
    ran.append(job.id)
    if job.data["amount"] > 1000:  # set by the transformer from validate's result
        raise RuntimeError(f"card declined for {job.data['amount']}")
    return {"charged": job.data["amount"], "receipt": f"rcpt-{job.data['order']}"}


@queue.process("ship-order")
async def ship(job: Job) -> dict[str, str]:
    ran.append(job.id)
    return {"tracking": "TRK-" + job.data["order"]}


@queue.process("notify-customer")
async def notify(job: Job) -> str:
    ran.append(job.id)
    receipt = (await chains.parent_results(job))["charge"].result["receipt"]
    return f"mailed {receipt}"


@queue.process("archive-order")
async def archive(job: Job) -> list[str]:
    ran.append(job.id)
    return sorted(await chains.parent_results(job))


@queue.process("audit")
async def audit(job: Job) -> str:
    ran.append(job.id)
    return "audited"


def amount_of(data: Any, parents: dict[str, Any]) -> dict[str, Any]:
    """The data transformer of the charge step (the validation's amount), by name."""
    return {**parents["validate"].result}


chains.register_transformer("amount-of", amount_of)


def order_workflow(order: str, amount: int) -> list[WorkflowStep]:
    return [
        WorkflowStep("validate", "validate-order", {"order": order, "amount": amount}),
        WorkflowStep("charge", "charge-card", depends_on=["validate"],
                     data_transformer="amount-of"),
        WorkflowStep("ship", "ship-order", {"order": order}, depends_on=["charge"]),
        WorkflowStep("notify", "notify-customer", depends_on=["charge"]),
        WorkflowStep("archive", "archive-order", depends_on=["ship", "notify"]),
    ]


async def finished(workflow_id: str) -> Any:
    while True:
        status = await chains.get_workflow_status(workflow_id)
        if status is not None and status.state != "running":
            return status
        await asyncio.sleep(0.01)


async def main() -> None:
    ids = await chains.execute_workflow("order-1001", order_workflow("1001", 250))
    await chains.execute_workflow("order-1002", order_workflow("1002", 5000))
    # A step added later joins the running workflow (it completes only with it).
    await queue.add_job("audit", {}, workflow_id="order-1001", workflow_step="audit",
                        depends_on=[ids["charge"]])
    await queue.start()
    ok = await finished("order-1001")
    print(f"order-1001: {ok.state}, steps "
          f"{ {name: s.state for name, s in ok.steps.items()} }")
    archived = await queue.get_job_status(ids["archive"])
    print(f"archive read the results of: {archived.result if archived else None}")
    bad = await finished("order-1002")
    print(f"order-1002: {bad.state} at step {bad.failed_step!r}; "
          f"cancelled: {sorted(n for n, s in bad.steps.items() if s.state == 'cancelled')}")
    print(f"steps of order-1002 that ran: {sorted(j for j in ran if j.startswith('order-1002'))}")
    await queue.clear(force=True)
    await queue.close()


if __name__ == "__main__":
    asyncio.run(main())
