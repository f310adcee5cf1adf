"""Workflows: step-to-step latency of a serial chain, and the throughput of a wide
workflow and of many small ones (on one queue, and on a partitioned queue) against the
plain queue's drain, measured in one run.

    PYTHONPATH=src .venv/bin/python bench/bench_workflows.py            # 3 repetitions
    PYTHONPATH=src .venv/bin/python bench/bench_workflows.py --reps 5 --width 10000

One private ``redis-server``, flushed before each case; the cases are interleaved per
repetition (order rotating), each in a fresh queue in this process, one worker at
concurrency 20 (the chain: concurrency 1, so the figure is the queue's own hand-over).

Cases:
  plain    ``width`` no-op jobs added with ``add_jobs`` (untimed), then drained; jobs/s
           from the first start to the last run
  wide     a workflow of one root and ``width`` children depending on it (written
           untimed); jobs/s from the first child's start to the last child's run
  chain    a serial chain of ``chain`` no-op steps; the step-to-step latency is the time
           from the end of one step's processor to the start of the next one's (the
           completion recorded, the next step released, claimed and started): p50 / p95
  many     ``width / 5`` diamond workflows of 5 no-op steps (a -> b, c -> d -> e; written
           untimed, one ``execute_workflow`` each); jobs/s from the first start to the
           last run
  many-part  the same on a ``PartitionedQueue`` of 4 partitions on the same server (each
           workflow on the partition of its id; one worker budget of 20 over them)

Benchmarks are not tests: nothing here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import redis

from _redis import RedisServer
from kitium_queue import JobChainManager, JobQueue, PartitionedQueue, WorkflowStep

CASES = ("plain", "wide", "chain", "many", "many-part")
DIAMOND = 5


def _diamond() -> list[WorkflowStep]:
    return [WorkflowStep("a", "noop"), WorkflowStep("b", "noop", depends_on=["a"]),
            WorkflowStep("c", "noop", depends_on=["a"]),
            WorkflowStep("d", "noop", depends_on=["b", "c"]),
            WorkflowStep("e", "noop", depends_on=["d"])]


async def _drain(url: str, name: str, case: str, width: int, chain: int) -> dict[str, float]:
    conc = 1 if case == "chain" else 20
    q: Any = (PartitionedQueue(name, partitions=4, redis=url, worker={"concurrency": conc})
              if case == "many-part" else JobQueue(name, redis=url, worker={"concurrency": conc}))
    chains = JobChainManager(q, events=False) if case != "plain" else None
    starts: list[float] = []
    ends: list[float] = []
    flows = width // DIAMOND
    total = {"plain": width, "wide": width + 1, "chain": chain, "many": flows * DIAMOND,
             "many-part": flows * DIAMOND}[case]
    done = asyncio.Event()

    async def noop(job: Any) -> None:
        starts.append(time.perf_counter())
        ends.append(time.perf_counter())
        if len(ends) == total:
            done.set()

    q.process("noop", noop)
    if case == "plain":
        for s in range(0, width, 1000):
            await q.add_jobs([("noop", {"i": i}) for i in range(s, min(width, s + 1000))])
    elif case in ("many", "many-part"):
        assert chains is not None
        for i in range(flows):
            await chains.execute_workflow(f"wf-{i}", _diamond())
    elif case == "wide":
        assert chains is not None
        await chains.execute_workflow(name, [WorkflowStep("root", "noop")] + [
            WorkflowStep(f"c{i}", "noop", {"i": i}, depends_on=["root"]) for i in range(width)])
    else:
        assert chains is not None
        await chains.execute_workflow(name, [
            WorkflowStep(f"s{i}", "noop", depends_on=[f"s{i - 1}"] if i else [])
            for i in range(chain)])
    await q.start()
    await asyncio.wait_for(done.wait(), 600)
    await q.close()
    if case == "chain":
        gaps = sorted((starts[i] - ends[i - 1]) * 1000 for i in range(1, len(starts)))
        return {"p50_ms": statistics.median(gaps), "p95_ms": gaps[int(len(gaps) * 0.95)]}
    first = starts[1] if case == "wide" else starts[0]
    n = (flows * DIAMOND if case.startswith("many") else width) - 1
    return {"rate": n / (ends[-1] - first)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--width", type=int, default=10_000)
    p.add_argument("--chain", type=int, default=1000)
    args = p.parse_args()
    runs: dict[str, list[dict[str, float]]] = {c: [] for c in CASES}
    with RedisServer() as srv:
        client = redis.Redis.from_url(srv.url)
        for rep in range(args.reps):
            k = rep % len(CASES)
            for case in CASES[k:] + CASES[:k]:
                client.flushall()
                r = asyncio.run(_drain(srv.url, f"bw-{case}-{rep}", case, args.width,
                                       args.chain))
                runs[case].append(r)
                print(f"rep {rep + 1} {case:6s} " + "  ".join(
                    f"{k} {v:.2f}" for k, v in r.items()), flush=True)
    med = statistics.median
    plain = med(r["rate"] for r in runs["plain"])
    wide = med(r["rate"] for r in runs["wide"])
    print(f"\n{args.reps} repetitions, medians (min-max); machine: {platform.machine()}, "
          f"{os.cpu_count()} CPUs, python {platform.python_version()}")
    rates = [r["rate"] for r in runs["plain"]]
    print(f"  plain drain, {args.width} no-op jobs: {plain:.0f} jobs/s "
          f"({min(rates):.0f}-{max(rates):.0f})")
    rates = [r["rate"] for r in runs["wide"]]
    print(f"  wide workflow, 1 root + {args.width} children: {wide:.0f} jobs/s "
          f"({min(rates):.0f}-{max(rates):.0f}) = {wide / plain * 100:.1f} % of plain")
    for case, what in (("many", "one queue"), ("many-part", "a partitioned queue (4)")):
        rates = [r["rate"] for r in runs[case]]
        m = med(rates)
        print(f"  {args.width // DIAMOND} diamond workflows of {DIAMOND} steps on {what}: "
              f"{m:.0f} jobs/s ({min(rates):.0f}-{max(rates):.0f}) = "
              f"{m / plain * 100:.1f} % of plain")
    p50 = [r["p50_ms"] for r in runs["chain"]]
    p95 = [r["p95_ms"] for r in runs["chain"]]
    print(f"  serial chain of {args.chain} steps: step-to-step p50 {med(p50):.2f} ms "
          f"({min(p50):.2f}-{max(p50):.2f}), p95 {med(p95):.2f} ms")


if __name__ == "__main__":
    main()
