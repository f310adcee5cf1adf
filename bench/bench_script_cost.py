"""What one script call costs Redis when calls come back to back and when they come one
at a time (issue 18, item 8: enqueue → start latency and the single add).

A queue at low or moderate load sends its scripts one at a time, with the machine idle
in between; the server's caches are cold for each call. This measures, with ``INFO
commandstats`` (the server's own µs per call; ``CONFIG RESETSTAT`` before each case: run
it against a Redis nothing else uses), each case called ``--calls`` times back to back
("burst") and ``--sparse-calls`` times at ``--rate`` calls/s ("sparse", what the latency
workload of ``bench/run.py`` does at 200 jobs/s):

* ``LPUSH`` of a 60-byte value (a one-command producer);
* ``EVALSHA`` of ``return 1`` with the enqueue script's keys and arguments;
* the enqueue script's fixed part (its fragments' definitions and setup, then
  ``return 1``);
* the enqueue script's seven inner commands as a plain script (no helper, no check);
* the whole enqueue script of one job;
* the same with the helper functions it never calls removed (22 → 11 definitions here):
  whether the per-call definitions are what costs.

    .venv/bin/python bench/bench_script_cost.py [--url redis://127.0.0.1:6379]

Benchmarks are not tests: nothing here asserts. Keys go under ``kqsc:`` and are removed.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _scriptparts import fixed_part, one_job_call

from kitium_queue import JobQueue

PREFIX = "kqsc"

_PLAIN = """
redis.call('TIME')
local s = redis.call('INCR', KEYS[10])
local jk = ARGV[1] .. 'job:' .. s
redis.call('EXISTS', jk)
redis.call('HSET', jk, 'n', 'n', 'd', '{"i":0}', 'ts', '1', 'p', '0', 'q', s, 'a', 0, 's', 0,
  'st', 'waiting')
redis.call('ZADD', KEYS[1], 100, s)
redis.call('XADD', KEYS[8], 'MAXLEN', '~', '10000', '*', 'e', 'job-added', 'id', s,
  'name', 'n', 'st', 'waiting')
redis.call('ZADD', KEYS[9], 0, '0')
return 1
"""


def _strip_comments(src: str) -> str:
    src = re.sub(r"--\[\[.*?\]\]", "", src, flags=re.S)
    out = []
    for line in src.split("\n"):
        code = line.split("--")[0] if "--" in line and "'" not in line else line
        if code.strip():
            out.append(code.rstrip())
    return "\n".join(out)


def without_unused_helpers(src: str) -> str:
    """``src`` without the top-level ``local function``\\ s nothing else names."""
    src = _strip_comments(src)
    while True:
        lines = src.split("\n")
        blocks: list[tuple[str, int, int]] = []
        i = 0
        while i < len(lines):
            m = re.match(r"^local function (\w+)\(", lines[i])
            if m:
                j = i
                while lines[j] != "end":
                    j += 1
                blocks.append((m.group(1), i, j))
                i = j + 1
                continue
            i += 1
        removed = False
        for name, a, b in reversed(blocks):
            if not re.search(rf"\b{name}\b", "\n".join(lines[:a] + lines[b + 1 :])):
                del lines[a : b + 1]
                removed = True
        src = "\n".join(lines)
        if not removed:
            return src


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="redis://127.0.0.1:6379")
    p.add_argument("--calls", type=int, default=3000, help="calls per burst case")
    p.add_argument("--sparse-calls", type=int, default=400, help="calls per sparse case")
    p.add_argument("--rate", type=float, default=200.0, help="calls/s of the sparse cases")
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args(argv)
    r = redis.Redis.from_url(args.url)
    q = JobQueue("scriptcost", redis=args.url, prefix=PREFIX)
    keys, job = one_job_call(q)
    full = q.producer.ctx.scripts.get("enqueue").source
    shaken = without_unused_helpers(full)
    scripts = {
        "EVALSHA return 1 (enqueue's keys, args)": "return 1",
        "enqueue: fixed part": fixed_part("enqueue", full),
        "enqueue's 7 commands, plain script": _PLAIN,
        "enqueue: one job": full,
        "enqueue: one job, unused helpers removed": shaken,
    }
    shas = {label: r.script_load(body) for label, body in scripts.items()}
    gap = 1.0 / args.rate

    def run(label: str, n: int, pause: float) -> float:
        r.config_resetstat()
        if label == "LPUSH":
            for _ in range(n):
                r.lpush(f"{PREFIX}:list", b"x" * 60)
                if pause:
                    time.sleep(pause)
            return float(r.info("commandstats")["cmdstat_lpush"]["usec_per_call"])
        sha = shas[label]
        for _ in range(n):
            r.evalsha(sha, len(keys), *keys, *job)
            if pause:
                time.sleep(pause)
        return float(r.info("commandstats")["cmdstat_evalsha"]["usec_per_call"])

    labels = ["LPUSH", *scripts]
    got: dict[str, dict[str, list[float]]] = {k: {"burst": [], "sparse": []} for k in labels}
    try:
        for _ in range(args.reps):
            for label in labels:
                got[label]["burst"].append(run(label, args.calls, 0.0))
                got[label]["sparse"].append(run(label, args.sparse_calls, gap))
        print(
            f"helper functions defined per call: {full.count('local function')} in the "
            f"enqueue script, {shaken.count('local function')} with unused ones removed"
        )
        print(f"Redis µs per call (median of {args.reps} reps; INFO commandstats):")
        print(f"  {'':44s} {'burst':>8s} {f'{args.rate:g}/s':>8s}")
        for label in labels:
            b, s = statistics.median(got[label]["burst"]), statistics.median(got[label]["sparse"])
            print(f"  {label:44s} {b:8.2f} {s:8.2f}")
    finally:
        for key in r.scan_iter(f"{PREFIX}:*", count=10_000):
            r.unlink(key)
        r.close()


if __name__ == "__main__":
    main()
