"""Multi-tenancy: tenants with quotas and weighted fair dispatch on one shared queue.

The Python form of the brief's ``createTenant``: each tenant's jobs carry its
``tenant_id``; a tenant over its ``max_queue_size`` is refused at enqueue
(``QuotaExceededError``, nothing written), one at its ``max_concurrency`` waits without
holding up the others, and tenants with a backlog share the workers by their weights, so
a small tenant is served at once behind a big tenant's hundreds of queued jobs.

    python examples/tenancy.py                                 # memory:// backend
    KQ_REDIS_URL=redis://localhost:6379/0 python examples/tenancy.py
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter

from kitium_queue import Job, JobQueue, QuotaExceededError, TenantRegistry

queue = JobQueue("reports", redis=os.environ.get("KQ_REDIS_URL", "memory://"),
                 prefix=f"kq-examples-{os.getpid()}", worker={"concurrency": 8})
tenants = TenantRegistry(queue)  # tenancy enabled on this queue
started: list[str] = []
running: Counter[str] = Counter()
peak: Counter[str] = Counter()


@queue.process("build-report")
async def build_report(job: Job) -> None:
    tenant = job.options["tenant_id"]
    started.append(tenant)
    running[tenant] += 1
    peak[tenant] = max(peak[tenant], running[tenant])
    await asyncio.sleep(0.005)
    running[tenant] -= 1


async def main() -> None:
    await tenants.create_tenant({"tenant_id": "acme", "name": "ACME Corp", "weight": 3,
                                 "quota": {"max_concurrency": 3}})
    await tenants.create_tenant({"tenant_id": "globex", "name": "Globex",
                                 "quota": {"max_queue_size": 20}})
    # ACME's backlog goes in first; Globex adds its jobs afterwards.
    await queue.add_jobs([("build-report", {"n": n}, {"tenant_id": "acme"})
                          for n in range(300)])
    await queue.add_jobs([("build-report", {"n": n}, {"tenant_id": "globex"})
                          for n in range(20)])
    try:
        await queue.add_job("build-report", {"n": 20}, tenant_id="globex")
    except QuotaExceededError as exc:
        print(f"refused: tenant {exc.tenant_id} is at its {exc.quota} of {exc.limit}")
    await queue.start()
    while started.count("globex") < 20:
        await asyncio.sleep(0.005)
    acme_first = started.count("acme")
    print(f"globex's 20 jobs all started after {acme_first} of acme's 300 "
          f"(acme: max_concurrency 3, ran at most {peak['acme']} at once)")
    usage = await tenants.get_tenant_usage("acme")
    print(f"acme usage: queued={usage.queued} active={usage.active} "
          f"completed={usage.completed} (every job counted once: "
          f"{usage.queued + usage.active + usage.completed == 300})")
    await queue.worker.stop()  # let the running jobs finish, hand the others back
    await queue.clear()
    await queue.close()


if __name__ == "__main__":
    asyncio.run(main())
