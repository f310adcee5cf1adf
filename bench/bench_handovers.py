"""Planned handovers back and forth under a steady producer and two worker managers.

    .venv/bin/python bench/bench_handovers.py                  # 40 handovers, seed 1
    .venv/bin/python bench/bench_handovers.py --rounds 40 --seeds 1,2,3 --rate 150

Three private redis-servers (one per region). A producer (the manager that also runs
``failover_to``) adds jobs at ``--rate`` per second while two worker managers complete
them; the primary is handed over ``--rounds`` times between the first two regions,
0.05-0.6 s apart (``--handover-wait-ms 0``: the producer's adds refused during a
handover raise at once, as before ``failover.handover_wait_ms``). Then every
acknowledged job must complete at the final primary (60 s at most). Prints, per seed:
adds acknowledged, adds refused (by error type), jobs not completed and jobs missing at
the final primary, and the handovers' median duration. A benchmark, not a test:
nothing here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

from _regions import RegionLoad, Regions, primary_states  # noqa: E402


async def one(rounds: int, seed: int, rate: float, wait_ms: int | None) -> dict[str, object]:
    rnd = random.Random(seed)
    async with Regions(3, timeout_ms=1500) as rg:
        failover: dict[str, object] = {"enabled": True, "timeout_ms": 1500}
        if wait_ms is not None:
            failover["handover_wait_ms"] = wait_ms
        producer = await rg.manager(failover=failover)
        workers = [await rg.manager(), await rg.manager()]
        run = RegionLoad(rg, producer, workers, rate=rate)
        await run.start()
        await asyncio.sleep(0.5)
        took: list[int] = []
        failed = 0
        for _ in range(rounds):
            target = rg.names[1] if producer.primary == rg.names[0] else rg.names[0]
            try:
                took.append((await producer.failover_to(target)).duration_ms)
            except Exception:
                failed += 1
            await asyncio.sleep(rnd.uniform(0.05, 0.6))
        await run.stop()
        ids = list(run.acked)
        deadline = time.time() + 60
        while True:
            states = await primary_states(producer, ids)
            left = [j for j, s in states.items() if s != "completed"]
            missing = [j for j, s in states.items() if s is None]
            if not left or time.time() > deadline:
                break
            await asyncio.sleep(0.5)
        return {
            "seed": seed,
            "acked": len(ids),
            "refused": dict(run.errors),
            "not_completed": len(left),
            "missing": len(missing),
            "handovers": len(took),
            "handovers_failed": failed,
            "handover_ms_median": statistics.median(took) if took else None,
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--seeds", default="1")
    ap.add_argument("--rate", type=float, default=150.0)
    ap.add_argument(
        "--handover-wait-ms",
        type=int,
        default=None,
        help="the producer's failover.handover_wait_ms (0: refuse at once)",
    )
    args = ap.parse_args()
    for seed in (int(s) for s in args.seeds.split(",") if s):
        r = asyncio.run(one(args.rounds, seed, args.rate, args.handover_wait_ms))
        print(
            f"seed {r['seed']}: {r['handovers']} handovers ({r['handovers_failed']} failed, "
            f"median {r['handover_ms_median']} ms); adds acknowledged {r['acked']}, refused "
            f"{r['refused'] or 0}; not completed {r['not_completed']}, missing "
            f"{r['missing']}",
            flush=True,
        )


if __name__ == "__main__":
    main()
