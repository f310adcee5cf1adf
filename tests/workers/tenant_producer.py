"""A producer process racing others on a tenant's quota (``tests/test_tenancy_procs.py``).

    python tenant_producer.py --url URL --prefix P --queue Q --tenant T --jobs N \
        --mode single|bulk

Enables tenancy on the queue, connects, prints ``ready`` and waits for a line on stdin
(so that every producer starts at once); then adds N jobs of tenant T: ``single``: N
concurrent ``add_job`` calls (they share round trips), ``bulk``: ``add_jobs`` in chunks
of 7. Prints one JSON line: ``{"added": [ids], "refused": n, "errors": [...]}`` (errors:
anything but a quota refusal).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from kitium_queue import JobQueue
from kitium_queue.errors import JobRefusedError, QuotaExceededError
from kitium_queue.features.tenancy import TenantRegistry


async def run(args: argparse.Namespace) -> None:
    queue = JobQueue(args.queue, redis=args.url, prefix=args.prefix)
    reg = TenantRegistry(queue)
    await reg.attach(queue)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    added: list[str] = []
    refused = 0
    errors: list[str] = []
    opts = {"tenant_id": args.tenant}
    if args.mode == "single":
        outs = await asyncio.gather(*(queue.add_job("x", {"i": i}, **opts)
                                      for i in range(args.jobs)), return_exceptions=True)
        for o in outs:
            if isinstance(o, QuotaExceededError):
                refused += 1
            elif isinstance(o, BaseException):
                errors.append(repr(o))
            else:
                added.append(o)
    else:
        for start in range(0, args.jobs, 7):
            batch = [("x", {"i": i}, opts) for i in range(start, min(args.jobs, start + 7))]
            try:
                added += await queue.add_jobs(batch)
            except JobRefusedError as exc:
                added += [i for i in exc.ids if i]
                refused += len(exc.refused)
                errors += [repr(e) for e in exc.errors.values()
                           if not isinstance(e, QuotaExceededError)]
    print(json.dumps({"added": added, "refused": refused, "errors": errors}), flush=True)
    await queue.close()


def main() -> None:
    p = argparse.ArgumentParser()
    for name in ("url", "prefix", "queue", "tenant", "mode"):
        p.add_argument(f"--{name}", required=True)
    p.add_argument("--jobs", type=int, required=True)
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
