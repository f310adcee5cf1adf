"""Access control and the audit log: their cost against the plain queue, in one run.

Each case runs in a fresh child process against one private ``redis-server``; cases are
interleaved per repetition.

    .venv/bin/python bench/bench_access.py                  # 5 repetitions
    .venv/bin/python bench/bench_access.py --jobs 20000 --reps 3

Queue cases (the same work on a plain queue and on one protected by an
``AccessControlManager``, the principal holding an ``admin`` grant, its grants cached):
  add_job awaited     ``--jobs`` / 4 jobs added one at a time
  add_job x100        ``--jobs`` jobs added from 100 coroutines (batched by the producer)
  add_jobs            ``--jobs`` jobs in batches of 1,000 (the middleware runs per job)
  get_job_status      ``--jobs`` / 4 reads one at a time (the read guard)
  get_group_stats     ``--jobs`` / 4 reads of a feature (FIFO groups, on a second
                      queue) one at a time: a feature's read passes the same guard
  read guard alone    ``--jobs`` * 10 calls of ``queries.check`` (what every guarded
                      read adds before its round trip; no Redis involved)
  pause+resume        500 pairs of administrative commands (protected: each also
                      recorded in the audit log by the subscriber, written in the
                      background; the flush is included in the time)

Audit cases (appends waited for, i.e. in Redis when counted):
  audit 1x awaited    appends one at a time from one process
  audit x100          100 concurrent appends in one process (batched, up to 100 per call)
  audit 4 procs x100  4 processes appending concurrently (optimistic appends contend)

Prints per-repetition figures, medians (min-max) and each queue case against plain.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _redis import RedisServer

ROOT = Path(__file__).resolve().parents[1]

_CHILD = r"""
import asyncio, json, secrets, sys, time
from kitium_queue import AccessControlManager, FIFOQueueManager, JobQueue

KEY = "k" * 32

async def queue_case(url, name, jobs, protected):
    q = JobQueue(name, redis=url, worker={"scheduler": False})
    # A second queue with FIFO groups for the feature read (the first one stays plain).
    gq = JobQueue(name + "-g", redis=url, worker={"scheduler": False})
    groups = FIFOQueueManager(gq)
    acm = None
    if protected:
        acm = AccessControlManager(url, audit_key=KEY, cache_ttl=60_000)
        await acm.grant_access(principal_id="bench", queue_pattern=name + "*", role="admin")
        acm.protect(q, principal="bench")
        acm.protect(gq, principal="bench")
    await q.get_stats()  # connect (and, protected, cache the grants)
    await gq.get_stats()
    out = {}
    n = jobs // 4
    t0 = time.perf_counter()
    ids = [await q.add_job("noop", {"i": i}) for i in range(n)]
    out["add_job awaited"] = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    await asyncio.gather(*(q.add_job("noop", {"i": i}) for i in range(jobs)))
    out["add_job x100"] = jobs / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for s in range(0, jobs, 1000):
        await q.add_jobs([("noop", {"i": i}, {}) for i in range(s, min(jobs, s + 1000))])
    out["add_jobs"] = jobs / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for i in ids:
        await q.get_job_status(i)
    out["get_job_status"] = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(n):
        await groups.get_group_stats("g")
    out["get_group_stats"] = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(jobs * 10):
        await gq.queries.check("get_group_stats", {"group_id": "g"})
    out["read guard alone"] = jobs * 10 / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(500):
        await q.pause()
        await q.resume()
    if acm is not None:
        await acm.audit.flush()
    out["pause+resume"] = 500 / (time.perf_counter() - t0)
    await q.clear(force=True)
    await q.close()
    await gq.close()
    if acm is not None:
        await acm.close()
    return out

async def audit_case(url, n, concurrency):
    from kitium_queue.features.audit import AuditLog
    log = AuditLog(url, key=KEY, prefix="bench")
    await log.append("bench", "warm", "r")
    t0 = time.perf_counter()
    if concurrency == 1:
        for i in range(n):
            await log.append("bench", "append", "r", "ok", {"i": i})
    else:
        sem = asyncio.Semaphore(concurrency)
        async def one(i):
            async with sem:
                await log.append("bench", "append", "r", "ok", {"i": i})
        await asyncio.gather(*(one(i) for i in range(n)))
    rate = n / (time.perf_counter() - t0)
    await log.close()
    return rate

async def main(url, case, name, jobs):
    if case in ("plain", "protected"):
        print(json.dumps(await queue_case(url, name, jobs, case == "protected")))
    elif case == "audit1":
        print(json.dumps({"rate": await audit_case(url, jobs // 4, 1)}))
    else:
        print(json.dumps({"rate": await audit_case(url, jobs, 100)}))

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
"""

QUEUE_FIGURES = (
    "add_job awaited",
    "add_job x100",
    "add_jobs",
    "get_job_status",
    "get_group_stats",
    "read guard alone",
    "pause+resume",
)


def _child(url: str, case: str, name: str, jobs: int) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, url, case, name, str(jobs)],
        stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip


def _result(proc: subprocess.Popen[str]) -> dict[str, float]:
    out, _ = proc.communicate(timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode})")
    got: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    queue: dict[str, dict[str, list[float]]] = {
        c: {f: [] for f in QUEUE_FIGURES} for c in ("plain", "protected")
    }
    audit: dict[str, list[float]] = {"audit 1x awaited": [], "audit x100": [],
                                     "audit 4 procs x100": []}  # fmt: skip
    with RedisServer() as srv:
        for rep in range(args.reps):
            for case in ("plain", "protected"):
                got = _result(_child(srv.url, case, f"bench-{case}-{rep}", args.jobs))
                for f in QUEUE_FIGURES:
                    queue[case][f].append(got[f])
                print(f"rep {rep + 1} {case:9s} " + "  ".join(
                    f"{f} {got[f]:8.0f}/s" for f in QUEUE_FIGURES), flush=True)  # fmt: skip
            audit["audit 1x awaited"].append(
                _result(_child(srv.url, "audit1", "-", args.jobs))["rate"]
            )
            audit["audit x100"].append(_result(_child(srv.url, "audit100", "-", args.jobs))["rate"])
            procs = [_child(srv.url, "audit100", "-", args.jobs // 4) for _ in range(4)]
            rates = [_result(p)["rate"] for p in procs]
            # Each process times its own appends; together they ran about as long as
            # the slowest: the total rate is the total count over that time.
            audit["audit 4 procs x100"].append(args.jobs / max(args.jobs / 4 / r for r in rates))
            print(f"rep {rep + 1} audit     " + "  ".join(
                f"{k} {v[-1]:8.0f}/s" for k, v in audit.items()), flush=True)  # fmt: skip
    print(f"\n{args.jobs} jobs, {args.reps} repetitions, medians (min-max):")
    for f in QUEUE_FIGURES:
        base = statistics.median(queue["plain"][f])
        prot = queue["protected"][f]
        med = statistics.median(prot)
        print(f"  {f:16s} plain {base:9.0f}/s   protected {med:9.0f}/s "
              f"({min(prot):.0f}-{max(prot):.0f})  {med / base * 100:5.1f} % of plain")  # fmt: skip
    for k, v in audit.items():
        print(f"  {k:20s} {statistics.median(v):8.0f} appends/s ({min(v):.0f}-{max(v):.0f})")


if __name__ == "__main__":
    main()
