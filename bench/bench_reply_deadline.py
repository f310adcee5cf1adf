"""What the reply deadline (``connerrors.bound_replies``) costs a plain command.

Every connection of the clients a queue builds keeps a deadline for the replies it is
owed, so a Redis that stops answering ends every call. The scripts' path (``add_job``,
a worker's rounds) has its own deadline and is not touched; plain commands (listings,
``get_job_status``, the dashboard's reads) pay the bookkeeping. This measures, against
a private ``redis-server``, awaited ``GET``s one at a time and pipelines of 20 through
a client with the deadline and the same client without it, taking turns:

    .venv/bin/python bench/bench_reply_deadline.py [--calls 5000] [--reps 5]

Prints µs per command (wall clock and process CPU) per repetition and the medians.
Nothing here asserts.
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

import redis.asyncio as aioredis

from _redis import RedisServer
from kitium_queue.connerrors import bound_replies


async def _one(client: Any, calls: int, pipelined: bool) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    if pipelined:
        for _ in range(calls // 20):
            pipe = client.pipeline(transaction=False)
            for _ in range(20):
                pipe.get("k")
            await pipe.execute()
    else:
        for _ in range(calls):
            await client.get("k")
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return wall * 1e6 / calls, cpu * 1e6 / calls


async def amain(args: argparse.Namespace) -> None:
    with RedisServer() as srv:
        url = f"redis://127.0.0.1:{srv.port}/0"
        plain = aioredis.Redis.from_url(url)
        bound = bound_replies(aioredis.Redis.from_url(url))
        await plain.set("k", "v" * 64)
        results: dict[str, list[tuple[float, float]]] = {}
        for rep in range(args.reps):
            for pipelined in (False, True):
                for name, client in (("without", plain), ("with deadline", bound)):
                    await _one(client, 200, pipelined)  # warm
                    got = await _one(client, args.calls, pipelined)
                    case = f"{'pipeline of 20' if pipelined else 'one at a time'}, {name}"
                    results.setdefault(case, []).append(got)
                    print(f"rep {rep + 1} {case:36s} {got[0]:6.1f} us wall {got[1]:6.1f} us CPU")
        await plain.aclose()
        await bound.aclose()
    print(f"\n{args.calls} GETs per case, {args.reps} repetitions, medians (µs per command):")
    for case, runs in results.items():
        wall = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        print(f"  {case:36s} wall {wall:6.1f}  CPU {cpu:6.1f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=5000)
    p.add_argument("--reps", type=int, default=5)
    asyncio.run(amain(p.parse_args()))


if __name__ == "__main__":
    main()
