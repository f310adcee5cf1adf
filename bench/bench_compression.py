"""Payload compression: bytes per job and drain rate with 10 KB JSON payloads, on and off,
in the same run.

    .venv/bin/python bench/bench_compression.py                 # 5,000 jobs, 3 reps
    .venv/bin/python bench/bench_compression.py --jobs 20000 --reps 5

0. Overhead per job (µs), in process, no Redis: encoding the payload as the producer
   does (serialize + compress) and decoding it as the worker does, against plain JSON;
   a CPU figure that does not depend on the load of the machine.

Cases, interleaved per repetition against one private ``redis-server`` (each in a fresh
child process): ``off`` (no compression), ``zstd`` and ``zlib`` (the
``cost_optimization.compression`` section with ``algorithm`` set). For each:

1. ``--jobs`` jobs with a ~10 KB JSON payload (a page of order records: repeated keys,
   varied values) added with ``add_jobs`` in batches of 500; enqueue rate;
2. bytes per job: the stored payload (``d``) and ``MEMORY USAGE`` of the job hash,
   averaged over 200 jobs, and ``used_memory`` growth over the whole batch divided by
   the jobs;
3. drain rate: one worker (concurrency 20) reads each job's data (decompressing it)
   and returns a small result.

Prints every figure and the medians against ``off``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _redis import RedisServer

ROOT = Path(__file__).resolve().parents[1]

_CHILD = r"""
import asyncio, json, random, sys, time
import redis.asyncio as aioredis
from kitium_queue import JobQueue

def payload(i):
    rnd = random.Random(i)
    return {"page": i, "orders": [
        {"id": f"ORD-{i:06d}-{k:03d}", "customer": {"id": rnd.randrange(10**6),
         "name": rnd.choice(["Ada Lovelace", "Alan Turing", "Grace Hopper", "Edsger Dijkstra"]),
         "email": f"user{rnd.randrange(10**5)}@example.com"},
         "status": rnd.choice(["paid", "shipped", "pending"]),
         "amount": round(rnd.uniform(1, 500), 2), "currency": "EUR",
         "lines": [{"sku": f"SKU-{rnd.randrange(5000):05d}", "qty": rnd.randrange(1, 9)}
                   for _ in range(3)]}
        for k in range(41)]}

async def main(url, name, jobs, case):
    adv = None
    if case != "off":
        adv = {"cost_optimization": {"enabled": True, "compression": {"algorithm": case}}}
    q = JobQueue(name, redis=url, worker={"concurrency": 20}, advanced=adv)
    client = aioredis.Redis.from_url(url)
    await client.flushall()
    before = (await client.info("memory"))["used_memory"]
    sample = [payload(i) for i in range(64)]
    raw_size = len(json.dumps(sample[0], separators=(",", ":")))
    t0 = time.perf_counter()
    ids = []
    for start in range(0, jobs, 500):
        batch = [("w", sample[i % 64], {}) for i in range(start, min(jobs, start + 500))]
        ids += await q.add_jobs(batch)
    enq = jobs / (time.perf_counter() - t0)
    used = (await client.info("memory"))["used_memory"] - before
    picks = ids[:: max(1, len(ids) // 200)][:200]
    d = [len(await client.hget(q.keys.job(j), "d")) for j in picks]
    mem = [await client.memory_usage(q.keys.job(j), samples=0) for j in picks]
    done = asyncio.Event()
    count = 0

    async def w(job):
        nonlocal count
        n = len(job.data["orders"])
        count += 1
        if count == jobs:
            done.set()
        return {"orders": n}

    q.process("w", w)
    t0 = time.perf_counter()
    await q.start()
    await done.wait()
    wall = time.perf_counter() - t0
    await q.clear(force=True)
    await q.close()
    await client.aclose()
    print(json.dumps({"rate": jobs / wall, "enqueue": enq, "json_bytes": raw_size,
                      "d_bytes": sum(d) / len(d), "hash_bytes": sum(mem) / len(mem),
                      "used_per_job": used / jobs}))

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]))
"""


def overhead(n: int, rounds: int = 7) -> dict[str, float]:
    """µs per job the codec adds: compressing the encoded payload (producer) and
    decompressing it (worker), per algorithm; the best of ``rounds`` rounds (the least
    disturbed by other work on the machine). Plain JSON encode + decode for scale."""
    from kitium_queue.codec import Serializer
    from kitium_queue.features.compression import CompressionCodec

    ns: dict[str, Any] = {}
    exec(_CHILD.split("async def main")[0], ns)  # the payload() of the child
    data = ns["payload"](7)
    plain = Serializer()
    raw = plain.dumps(data)
    codecs = {alg: CompressionCodec(algorithm=alg) for alg in ("zstd", "zlib")}
    best = {k: float("inf") for k in ("plain", *codecs)}
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            plain.loads(plain.dumps(data))
        best["plain"] = min(best["plain"], (time.perf_counter() - t0) / n * 1e6)
        for alg, codec in codecs.items():
            t0 = time.perf_counter()
            for _ in range(n):
                codec.decode(codec.encode(raw))
            best[alg] = min(best[alg], (time.perf_counter() - t0) / n * 1e6)
    return best


def run_case(url: str, case: str, jobs: int, rep: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, url, f"bench-cmp-{case}-{rep}", str(jobs), case],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=5_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--micro", type=int, default=1000, help="iterations per round of part 0")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    costs = overhead(args.micro)
    print(f"plain JSON encode + decode of the payload: {costs['plain']:.1f} us/job")
    for alg in ("zstd", "zlib"):
        print(f"overhead {alg}: +{costs[alg]:.1f} us/job (compress + decompress)")
    cases = ("off", "zstd", "zlib")
    got: dict[str, list[dict[str, float]]] = {c: [] for c in cases}
    with RedisServer() as server:
        for rep in range(args.reps):
            for case in cases:
                r = run_case(server.url, case, args.jobs, rep)
                got[case].append(r)
                print(
                    f"rep {rep + 1} {case:4s}: drain {r['rate']:,.0f} jobs/s, enqueue "
                    f"{r['enqueue']:,.0f} jobs/s, payload {r['d_bytes']:,.0f} B (JSON "
                    f"{r['json_bytes']:,} B), hash {r['hash_bytes']:,.0f} B, used_memory "
                    f"{r['used_per_job']:,.0f} B/job"
                )

    def med(case: str, key: str) -> float:
        return statistics.median(r[key] for r in got[case])

    base_rate, base_enq = med("off", "rate"), med("off", "enqueue")
    for case in cases:
        rates = [r["rate"] for r in got[case]]
        print(
            f"{case:4s}: drain median {med(case, 'rate'):,.0f} jobs/s ({min(rates):,.0f}-"
            f"{max(rates):,.0f}), {med(case, 'rate') / base_rate * 100:.0f}% of off; enqueue "
            f"{med(case, 'enqueue'):,.0f} jobs/s ({med(case, 'enqueue') / base_enq * 100:.0f}%"
            f"); stored payload {med(case, 'd_bytes'):,.0f} B, job hash "
            f"{med(case, 'hash_bytes'):,.0f} B, used_memory {med(case, 'used_per_job'):,.0f} "
            f"B/job ({med(case, 'used_per_job') / med('off', 'used_per_job') * 100:.0f}% of off)"
        )


if __name__ == "__main__":
    main()
