"""Multi-tenancy: tenants with quotas and weighted fair dispatch on one shared queue.

Tenants through ``AccessControlManager.create_tenant``: tenants are
created through the access-control manager (which checks who makes the change and
writes it to the audit log), and each tenant's jobs carry its ``tenant_id``. A tenant
over its ``max_queue_size`` is refused at enqueue (``QuotaExceededError``, nothing
written), one at its ``max_concurrency`` waits without holding up the others, and
tenants with a backlog share the workers by their weights, so a small tenant is served
at once behind a big tenant's hundreds of queued jobs.

    python examples/tenancy.py                                 # memory:// backend
    KQ_REDIS_URL=redis://localhost:6379/0 python examples/tenancy.py
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections import Counter

from kitium_queue import AccessControlManager, Job, JobQueue, QuotaExceededError

REDIS = os.environ.get("KQ_REDIS_URL", "").strip() or "memory://tenancy-example"
PREFIX = f"kq-examples-{os.getpid()}"
queue = JobQueue("reports", redis=REDIS, prefix=PREFIX, worker={"concurrency": 8})
# The audit key belongs in your secret store; the principal is who this code acts for.
acm = AccessControlManager(REDIS, prefix=PREFIX, audit_key=secrets.token_hex(32),
                           principal="platform-admin")
acm.tenants.enable(queue)  # tenancy on this queue (in every process that uses it)
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
    # Tenant changes need can_manage_queue on every queue: name the first administrator.
    await acm.grant_access(principal_id="platform-admin", queue_pattern="*", role="admin")
    await acm.create_tenant({"tenant_id": "acme", "name": "ACME Corp", "weight": 3,
                             "quota": {"max_concurrency": 3}})
    await acm.create_tenant({"tenantId": "globex", "name": "Globex",  # camelCase keys
                             "quota": {"maxQueueSize": 20}})
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
    usage = await acm.get_tenant_usage("acme")
    print(f"acme usage: queued={usage.queued} active={usage.active} "
          f"completed={usage.completed} (every job counted once: "
          f"{usage.queued + usage.active + usage.completed == 300})")
    created = await acm.query_audit_log(action="tenant.create", newest_first=False)
    print("audited:", ", ".join(f"{e.principal} {e.action} {e.resource}" for e in created))
    await queue.worker.stop()  # let the running jobs finish, hand the others back
    await queue.clear()
    await queue.close()
    await acm.close()


if __name__ == "__main__":
    asyncio.run(main())
