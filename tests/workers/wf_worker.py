"""A worker process for the workflow tests (``tests/test_workflows_procs.py``).

    python wf_worker.py --url redis://127.0.0.1:PORT/0 --prefix P --queue Q --ledger FILE

Runs the queue's worker with workflows enabled and one processor, ``node``. Each run
appends to the ledger file (one ``O_APPEND`` write per line, so a SIGKILL loses nothing
already written): ``start <job id> <time> <pid>``, then ``finish <job id> <time> <ok>`` where
``ok`` is 1 when the parents' results it read are exactly the ones expected (every
parent named in ``job.data["parents"]``, each with ``{"v": value(parent id)}``). The
result is ``{"v": value(job id)}``. ``job.data["ms"]``: how long a run sleeps. Prints
``ready`` once the worker runs.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import time
from typing import Any

from kitium_queue import JobChainManager, JobQueue


def value(job_id: str) -> str:
    return hashlib.sha256(job_id.encode()).hexdigest()[:16]


async def run(args: argparse.Namespace) -> None:
    queue = JobQueue(
        args.queue,
        redis=args.url,
        prefix=args.prefix,
        settings={"lock_duration": 1000, "max_stalled_interval": 250, "max_stalled_count": 1000},
        worker={"concurrency": 8, "shutdown_timeout": 2000},
    )
    chains = JobChainManager(queue)
    fd = os.open(args.ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(line: str) -> None:
        os.write(fd, (line + "\n").encode())

    async def node(job: Any) -> Any:
        write(f"start {job.id} {time.time():.6f} {os.getpid()}")
        parents = await chains.parent_results(job)
        want = {p: {"v": value(f"{job.data['wf']}:{p}")} for p in job.data["parents"]}
        got = {k: p.result for k, p in parents.items()}
        await asyncio.sleep(job.data.get("ms", 0) / 1000)
        write(f"finish {job.id} {time.time():.6f} {int(got == want)}")
        return {"v": value(job.id)}

    queue.process("node", node)
    await queue.start()
    print("ready", flush=True)
    try:
        await queue.run_worker()
    finally:
        os.close(fd)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--queue", required=True)
    p.add_argument("--ledger", required=True)
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
