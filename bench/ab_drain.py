"""A/B drain benchmark: the engine at a git revision against the work tree, in one run.

Each case drains ``--jobs`` no-op jobs with one worker (concurrency 20, default
settings otherwise) in a fresh child process, against one private ``redis-server``;
the cases are interleaved per repetition, so load on the machine hits all of them alike.

    .venv/bin/python bench/ab_drain.py --base HEAD~3            # base vs work tree
    .venv/bin/python bench/ab_drain.py --base 688df97 --reps 7 --jobs 30000

Cases:
  base          the engine as committed at ``--base`` (its src/ exported to a temp dir)
  tree          the work tree, default settings
  tree+hooks    the work tree with one no-op lifecycle subscriber (every hook) and one
                no-op Lua fragment in the ``release`` slot

Prints jobs/s per repetition and the medians, and each case against ``base``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _redis import RedisServer

ROOT = Path(__file__).resolve().parents[1]

_CHILD = r"""
import asyncio, json, sys, time
from kitium_queue import JobQueue

async def main(url, name, jobs, hooks):
    q = JobQueue(name, redis=url, worker={"concurrency": 20})
    if hooks:
        from kitium_queue.hooks import Subscriber

        class Noop(Subscriber):
            def started(self, queue, job): pass
            def finished(self, queue, job, outcome): pass
            def progress(self, queue, job, value): pass
            def enqueued(self, queue, ids, names): pass

        q.subscribe(Noop())
        q.scripts.add_slot("release", "noop", "function(id, jk, outcome) end")
    for start in range(0, jobs, 1000):
        await q.add_jobs([("noop", {"i": i}) for i in range(start, min(jobs, start + 1000))])
    done = asyncio.Event()
    count = 0

    async def noop(job):
        nonlocal count
        count += 1
        if count == jobs:
            done.set()

    q.process("noop", noop)
    t0 = time.perf_counter()
    await q.start()
    await done.wait()
    wall = time.perf_counter() - t0
    await q.clear(force=True)
    await q.close()
    print(json.dumps({"rate": jobs / wall}))

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"))
"""


def export_src(rev: str, into: Path) -> Path:
    """The ``src/`` of the engine at git revision ``rev``, exported under ``into``."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "src"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def _run(src: Path, url: str, name: str, jobs: int, hooks: bool) -> float:
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, url, name, str(jobs), "1" if hooks else "0"],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    ).stdout
    return float(json.loads(out.strip().splitlines()[-1])["rate"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--base", required=True, help="git revision of the base engine")
    ap.add_argument("--jobs", type=int, default=20000)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, RedisServer() as srv:
        base_src = export_src(args.base, Path(tmp))
        cases = {
            "base": (base_src, False),
            "tree": (ROOT / "src", False),
            "tree+hooks": (ROOT / "src", True),
        }
        rates: dict[str, list[float]] = {c: [] for c in cases}
        for rep in range(args.reps):
            for case, (src, hooks) in cases.items():
                r = _run(src, srv.url, f"ab-{case}-{rep}", args.jobs, hooks)
                rates[case].append(r)
                print(f"rep {rep + 1} {case:11s} {r:9.0f} jobs/s", flush=True)
        base = statistics.median(rates["base"])
        print(f"\n{args.jobs} jobs, {args.reps} repetitions, medians (min-max):")
        for case, rs in rates.items():
            med = statistics.median(rs)
            print(
                f"  {case:11s} {med:9.0f} jobs/s ({min(rs):.0f}-{max(rs):.0f})  "
                f"{(med / base - 1) * 100:+6.1f} % vs base"
            )


if __name__ == "__main__":
    main()
