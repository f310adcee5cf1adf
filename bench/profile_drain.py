"""Where a drain's time goes: Redis CPU per job (by command) and worker CPU per job.

Runs kitium-queue only, in this process, against a private ``redis-server``:

    .venv/bin/python bench/profile_drain.py                 # 20,000 no-op jobs, concurrency 20
    .venv/bin/python bench/profile_drain.py --jobs 50000 --concurrency 50 --reps 5

It fills the queue with ``add_jobs``, resets Redis' ``INFO commandstats``, drains with
one worker (default settings otherwise) and prints, per repetition, jobs/s, the
worker's CPU µs per job (``time.process_time``), Redis' µs per job spent in scripts
and the commands they ran, and client round trips per job. Use it before and after a
change to the engine to see which side a change moved.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _redis import RedisServer
from kitium_queue import JobQueue


def _cmdstats(info: dict[str, Any]) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for key, value in info.items():
        if key.startswith("cmdstat_"):
            out[key[8:]] = (int(value["calls"]), int(value["usec"]))
    return out


async def one_run(url: str, jobs: int, concurrency: int, name: str) -> dict[str, Any]:
    q = JobQueue(name, redis=url, worker={"concurrency": concurrency})
    client = await q.client()
    for start in range(0, jobs, 1000):
        await q.add_jobs([("noop", {"i": i}) for i in range(start, min(jobs, start + 1000))])
    done = asyncio.Event()
    count = 0

    async def noop(job: Any) -> None:
        nonlocal count
        count += 1
        if count == jobs:
            done.set()

    q.process("noop", noop)
    await client.config_resetstat()
    cpu0, t0 = time.process_time(), time.perf_counter()
    await q.start()
    await done.wait()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    stats = _cmdstats(await client.info("commandstats"))
    await q.close()
    scripts = sum(u for c, (n, u) in stats.items() if c in ("evalsha", "eval", "fcall"))
    calls = sum(n for c, (n, u) in stats.items() if c in ("evalsha", "eval", "fcall", "bzpopmin"))
    inner = {
        c: (n / jobs, u / jobs)
        for c, (n, u) in stats.items()
        if c not in ("evalsha", "eval", "fcall", "config|resetstat", "info")
    }
    return {
        "rate": jobs / wall,
        "py_us": cpu * 1e6 / jobs,
        "redis_us": scripts / jobs,
        "rt": calls / jobs,
        "inner": inner,
    }


async def amain(args: argparse.Namespace) -> None:
    with RedisServer() as srv:
        runs = []
        for rep in range(args.reps):
            r = await one_run(srv.url, args.jobs, args.concurrency, f"prof{rep}")
            runs.append(r)
            print(
                f"rep {rep + 1}: {r['rate']:8.0f} jobs/s  worker CPU {r['py_us']:5.1f} us/job  "
                f"Redis scripts {r['redis_us']:5.1f} us/job  script calls {r['rt']:.3f}/job"
            )
        last = runs[-1]["inner"]
        print("\nRedis commands per job (last repetition): calls/job, usec/job")
        for cmd, (n, u) in sorted(last.items(), key=lambda kv: -kv[1][1]):
            print(f"  {cmd:14s} {n:6.3f} {u:7.2f}")
        print(
            f"\nmedian: {statistics.median(r['rate'] for r in runs):.0f} jobs/s, worker "
            f"{statistics.median(r['py_us'] for r in runs):.1f} us/job, Redis "
            f"{statistics.median(r['redis_us'] for r in runs):.1f} us/job"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--jobs", type=int, default=20000)
    p.add_argument("--concurrency", type=int, default=20)
    p.add_argument("--reps", type=int, default=3)
    asyncio.run(amain(p.parse_args()))


if __name__ == "__main__":
    main()
