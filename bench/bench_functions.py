"""What loading the hot scripts as Redis 7 functions would save, per call (issue 18).

A script sent with ``EVALSHA`` defines its fragments' helper functions again on every
call; a function library (``FUNCTION LOAD``) defines them once. ``_lualib.py`` turns a
composed script into such a library (helpers and literal constants defined at load,
the rest run per call) and this script measures, with ``INFO commandstats`` (the
server's own µs per call, calls back to back, ``CONFIG RESETSTAT`` before each case:
run it against a Redis nothing else uses, 7.0 or later):

* for ``enqueue``, ``claim``, ``finish`` and ``extend``: the script's fixed part (its
  fragments' definitions and its per-call setup up to its own first statement, then
  ``return 1``) sent with ``EVALSHA`` and called with ``FCALL``;
* the whole ``enqueue`` of one job both ways.

    .venv/bin/python bench/bench_functions.py [--url redis://127.0.0.1:6379] [--calls 4000]

The libraries it loads are deleted at the end. Nothing here asserts.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _lualib import library
from _scriptparts import fixed_part, one_job_call

from kitium_queue import JobQueue

PREFIX = "kqbf"
SCRIPTS = ("enqueue", "claim", "finish", "extend")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="redis://127.0.0.1:6379")
    p.add_argument("--calls", type=int, default=4000)
    p.add_argument("--reps", type=int, default=7)
    args = p.parse_args(argv)
    r = redis.Redis.from_url(args.url)
    q = JobQueue("functions", redis=args.url, prefix=PREFIX)
    ctx = q.producer.ctx
    keys, job = one_job_call(q)
    head = list(ctx.argv_head())
    cases: dict[str, tuple[str, list[object]]] = {}
    for name in SCRIPTS:
        source = ctx.scripts.get(name).source
        fixed = fixed_part(name, source)
        cases[f"{name}: fixed part"] = (fixed, job if name == "enqueue" else head)
    cases["enqueue: one job"] = (ctx.scripts.get("enqueue").source, job)
    libs: list[str] = []
    calls: dict[str, tuple[str, str, list[object]]] = {}
    for i, (label, (body, argv_)) in enumerate(cases.items()):
        sha = r.script_load(body)
        lib = library(body, f"{PREFIX}_{i}", f"{PREFIX}_{i}_f")
        r.execute_command("FUNCTION", "LOAD", "REPLACE", lib.code)
        libs.append(lib.name)
        calls[label] = (sha, lib.function, argv_)
    got: dict[str, dict[str, list[float]]] = {k: {"evalsha": [], "fcall": []} for k in cases}
    try:
        for _ in range(args.reps):
            for label, (sha, fn, argv_) in calls.items():
                for how in ("evalsha", "fcall"):
                    r.config_resetstat()
                    for _ in range(args.calls):
                        if how == "evalsha":
                            r.evalsha(sha, len(keys), *keys, *argv_)
                        else:
                            r.fcall(fn, len(keys), *keys, *argv_)
                    st = r.info("commandstats")[f"cmdstat_{how}"]
                    got[label][how].append(st["usec_per_call"])
        print("Redis µs per call (median of reps; INFO commandstats):")
        print(f"  {'':28s} {'EVALSHA':>8s} {'FCALL':>8s} {'saved':>8s}")
        for label, v in got.items():
            e, f = statistics.median(v["evalsha"]), statistics.median(v["fcall"])
            print(f"  {label:28s} {e:8.2f} {f:8.2f} {e - f:8.2f}")
    finally:
        for name in libs:
            r.execute_command("FUNCTION", "DELETE", name)
        for key in r.scan_iter(f"{PREFIX}:*", count=10_000):
            r.unlink(key)
        r.close()


if __name__ == "__main__":
    main()
