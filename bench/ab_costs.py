"""Redis time and commands per job of a no-op drain, per script: CPU, not wall-clock.

    .venv/bin/python bench/ab_costs.py                  # 20,000 jobs, 3 repetitions
    .venv/bin/python bench/ab_costs.py --jobs 50000 --reps 5
    .venv/bin/python bench/ab_costs.py --base HEAD~1    # also the engine at a revision

For each engine (the work tree, and ``--base`` exported from git when given), against
one private ``redis-server``, interleaved per repetition:

* **drain**: one worker (concurrency 20, default settings) drains ``--jobs`` no-op jobs
  added with ``add_jobs``; printed per job: redis-server CPU (``INFO cpu``), the time
  Redis counted in scripts (``INFO commandstats``, EVALSHA), every command it ran (the
  scripts' inner commands included), round trips (script calls and plain commands from
  the worker), and this process's CPU (the worker);
* **phases**: the same jobs claimed ten at a time by calling ``claim`` directly, then
  recorded as completed ten at a time with ``finish`` (what the worker sends, without
  the worker): the Redis µs and commands per job of each script alone, and which
  commands they run.

CPU time per job moves far less than jobs/s when other work shares the machine, so
compare engines by these figures; ``bench/ab_drain.py`` compares their rates.
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

from ab_drain import export_src

from _redis import RedisServer

ROOT = Path(__file__).resolve().parents[1]

_CHILD = r"""
import asyncio, json, sys
import redis.asyncio as aioredis
from kitium_queue import JobQueue
from _drain import measured_drain

def cmdstats(info):
    return {k[8:]: (int(v["calls"]), int(v["usec"])) for k, v in info.items()
            if k.startswith("cmdstat_")}

def delta(a, b):
    out = {}
    for k, (n, u) in b.items():
        n0, u0 = a.get(k, (0, 0))
        if n - n0:
            out[k] = (n - n0, u - u0)
    return out

async def fill(q, jobs):
    for start in range(0, jobs, 1000):
        await q.add_jobs([("noop", None) for _ in range(min(1000, jobs - start))])

async def drain(url, name, jobs):
    q = JobQueue(name, redis=url, worker={"concurrency": 20, "scheduler": False})
    await fill(q, jobs)
    client = aioredis.Redis.from_url(url)
    s0 = cmdstats(await client.info("commandstats"))
    m = await measured_drain(q, jobs)  # closes q: its last outcomes are recorded
    s1 = cmdstats(await client.info("commandstats"))
    left = JobQueue(name, redis=url)
    await left.clear(force=True)
    await left.close()
    await client.aclose()
    return {"rate": m["rate"], "py": m["worker_cpu_us"], "redis": m["redis_cpu_us"],
            "stats": delta(s0, s1)}

async def script_times(client):
    # Each EVALSHA's own duration (SLOWLOG, threshold 0), in us, then a fresh log: a low
    # quantile of these leaves out the calls another process preempted.
    log = await client.slowlog_get(-1)
    await client.slowlog_reset()
    return sorted(e["duration"] for e in log if e["command"].split(b" ")[0].upper() == b"EVALSHA")

async def phases(url, name, jobs):
    q = JobQueue(name, redis=url)
    client = await q.client()
    await fill(q, jobs)
    dlq = "1" if q.dlq.enabled else "0"
    keep = q.policy.keep_completed
    kc, ka = keep.count, keep.age
    out = {}
    per_call = {}
    await client.config_set("slowlog-log-slower-than", 0)
    await client.config_set("slowlog-max-len", 100000)
    await client.slowlog_reset()
    s0 = cmdstats(await client.info("commandstats"))
    claimed = []
    while True:
        call = q.call("claim", [10, 30000, 0, 0, 1, dlq, "bench", 1000])
        (reply,) = await q.scripts.pipeline(client, [call])
        jobs_ = reply[5:]
        if not jobs_:
            break
        tok = reply[2]
        claimed += [(j[0], tok) for j in jobs_]
    s1 = cmdstats(await client.info("commandstats"))
    out["claim"] = delta(s0, s1)
    per_call["claim"] = await script_times(client)
    for i in range(0, len(claimed), 10):
        args = [dlq]
        for jid, tok in claimed[i:i + 10]:
            args += [jid, tok, "C", b"", b"", 0, kc, ka, b""]
        (r,) = await q.scripts.pipeline(client, [q.call("finish", args)])
    s2 = cmdstats(await client.info("commandstats"))
    out["finish"] = delta(s1, s2)
    per_call["finish"] = await script_times(client)
    await client.config_set("slowlog-log-slower-than", 10000)
    await q.clear(force=True)
    await q.close()
    return {"n": len(claimed), "phases": out, "per_call": per_call}

mode, url, name, jobs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
fn = drain if mode == "drain" else phases
print(json.dumps(asyncio.run(fn(url, name, jobs))))
"""


def _run(src: Path, mode: str, url: str, name: str, jobs: int) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join((str(src), str(ROOT / "bench")))}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, mode, url, name, str(jobs)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    if done.returncode:
        sys.exit(f"{mode} run failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


_SCRIPT_CMDS = ("evalsha", "eval", "fcall")


def _summary(d: dict, jobs: int) -> dict[str, float]:
    st = d["stats"]
    scripts = sum(u for c, (n, u) in st.items() if c in _SCRIPT_CMDS)
    trips = sum(n for c, (n, u) in st.items() if c in _SCRIPT_CMDS or c == "bzpopmin")
    inner = sum(n for c, (n, u) in st.items() if c not in _SCRIPT_CMDS and c not in _ADMIN)
    return {
        "rate": d["rate"],
        "worker_us": d["py"],
        "redis_cpu_us": d["redis"],
        "script_us": scripts / jobs,
        "commands": (inner + trips) / jobs,
        "round_trips": trips / jobs,
    }


_ADMIN = (
    "info",
    "config|resetstat",
    "hello",
    "client|setinfo",
    "script|load",
    "flushall",
    "unlink",
    "ping",
    "subscribe",
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--base", help="git revision of a second engine to measure beside the tree")
    ap.add_argument("--jobs", type=int, default=20000)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, RedisServer() as srv:
        engines = {"tree": ROOT / "src"}
        if args.base:
            engines = {"base": export_src(args.base, Path(tmp)), **engines}
        drains: dict[str, list[dict[str, float]]] = {e: [] for e in engines}
        phase_runs: dict[str, list[dict]] = {e: [] for e in engines}
        for rep in range(args.reps):
            for eng, src in engines.items():
                d = _summary(_run(src, "drain", srv.url, f"c-{eng}-{rep}", args.jobs), args.jobs)
                drains[eng].append(d)
                print(
                    f"rep {rep + 1} {eng:4s} drain {d['rate']:7.0f} jobs/s  worker CPU "
                    f"{d['worker_us']:5.1f} us/job  redis CPU {d['redis_cpu_us']:5.1f} us/job  "
                    f"scripts {d['script_us']:5.1f} us/job  commands {d['commands']:5.2f}/job  "
                    f"round trips {d['round_trips']:.3f}/job",
                    flush=True,
                )
                phase_runs[eng].append(_run(src, "phases", srv.url, f"p-{eng}-{rep}", args.jobs))
        print(f"\nmedians of {args.reps} drains of {args.jobs} jobs (concurrency 20):")
        for eng, ds in drains.items():
            med = {k: statistics.median(d[k] for d in ds) for k in ds[0]}
            print(
                f"  {eng:4s} {med['rate']:7.0f} jobs/s  worker {med['worker_us']:5.1f} us/job  "
                f"redis CPU {med['redis_cpu_us']:5.1f}  scripts {med['script_us']:5.1f} us/job  "
                f"commands {med['commands']:5.2f}/job"
            )
        for eng, runs in phase_runs.items():
            n = runs[-1]["n"]
            print(
                f"\n{eng}: per script, claim and finish 10 jobs per call ({n} jobs): Redis "
                f"us/job in the script, lowest (median) of {len(runs)}; its commands, last rep"
            )
            for script, st in runs[-1]["phases"].items():
                each = [_script_us(r["phases"][script]) / r["n"] for r in runs]
                times = sorted(t for r in runs for t in r["per_call"][script])
                q25, q50 = times[len(times) // 4] / 10, times[len(times) // 2] / 10
                calls = {c: k / n for c, (k, u) in st.items() if c not in _SCRIPT_CMDS}
                usec = {c: u / n for c, (k, u) in st.items() if c not in _SCRIPT_CMDS}
                inner = sum(calls.values())
                print(
                    f"  {script:6s} {min(each):5.2f} ({statistics.median(each):5.2f}) us/job; "
                    f"per call of 10 (SLOWLOG) p25 {q25:5.2f} p50 {q50:5.2f} us/job; "
                    f"{inner:5.2f} inner commands/job"
                )
                for c in sorted(calls, key=lambda c: -usec[c]):
                    print(f"      {c:14s} {calls[c]:6.3f}/job {usec[c]:6.2f} us/job")


def _script_us(stats: dict) -> float:
    return sum(u for c, (k, u) in stats.items() if c in _SCRIPT_CMDS)


if __name__ == "__main__":
    main()
