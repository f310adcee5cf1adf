"""FIFO message groups at scale: many single-job groups beside one very long group.

    .venv/bin/python bench/bench_groups_scale.py                     # 100,000 + 100,000
    .venv/bin/python bench/bench_groups_scale.py --singles 1000 --big 1000
    .venv/bin/python bench/bench_groups_scale.py --window 20 --profile /tmp/groups.prof

One private ``redis-server``; the queue is filled with ``add_jobs`` (batches of 1,000,
untimed): first ``--big`` jobs of one group (its first job holds the turn in wait, the
others wait in the group's line), then ``--singles`` groups of one job each
(``--order singles-first`` swaps them). One worker (concurrency ``--concurrency``,
default settings otherwise) in this process then runs no-op jobs for ``--window``
seconds, or until the queue is drained.

Printed, over the window: jobs/s, scripts/s (``EVALSHA``/``FCALL`` the server ran),
Redis commands per job, jobs per claim (and how many claims came back with none),
the claims' ``wake_in`` answers, the worker process's CPU per job, redis-server's CPU
per job, and the time the worker's pump lanes spent in their idle wait (``_idle``) and
the waker in its blocking wait, and the scripts SLOWLOG caught over 2 ms.
``--timeline`` prints jobs and claims per second, ``--commands`` the Redis commands per
job by name, ``--delay-ms`` adds every job delayed (due together), ``--profile FILE``
runs the window under cProfile, ``--src DIR`` measures another source tree.
``--heal`` first measures, on the filled queue, one whole walk of the groups heal
(``heal_groups``: seconds, script calls, Redis commands, the longest call by SLOWLOG)
and, where the source has it, one step of the workers' paced walk (``HealWalk``).
Benchmarks are not tests: nothing here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
# --src DIR: the package source to measure (e.g. another revision exported with git
# archive); read before kitium_queue is imported.
sys.path.insert(
    0,
    sys.argv[sys.argv.index("--src") + 1]
    if "--src" in sys.argv
    else str(Path(__file__).resolve().parents[1] / "src"),
)

from _redis import RedisServer
from kitium_queue import JobQueue
from kitium_queue.features.groups import FIFOQueueManager
from kitium_queue.worker import _JOBS, _WAKE_IN, Worker


class Probe:
    """Counts claims and the time spent waiting, by wrapping three Worker methods."""

    def __init__(self) -> None:
        self.claims: list[tuple[int, int]] = []  # (asked, got)
        self.at: list[float] = []  # when each claim's reply was handled
        self.wake_in: list[int] = []
        self.idle_s = 0.0
        self.block_s = 0.0
        self.on = False

    def install(self) -> None:
        probe = self
        claimed, idle, wait_claim = Worker._claimed, Worker._idle, Worker._wait_and_claim

        def _claimed(self: Worker, reply: Any, asked: int, *rest: Any) -> Any:
            if probe.on and not isinstance(reply, Exception):
                probe.claims.append((asked, len(reply) - _JOBS))
                probe.at.append(time.perf_counter())
                probe.wake_in.append(int(reply[_WAKE_IN]))
            return claimed(self, reply, asked, *rest)

        async def _idle(self: Worker, free: int, idle_for: float | None) -> None:
            t = time.perf_counter()
            try:
                await idle(self, free, idle_for)
            finally:
                if probe.on:
                    probe.idle_s += time.perf_counter() - t

        async def _wait_and_claim(self: Worker, asked: int) -> Exception | None:
            t = time.perf_counter()
            try:
                return await wait_claim(self, asked)
            finally:
                if probe.on:
                    probe.block_s += time.perf_counter() - t

        Worker._claimed = _claimed  # type: ignore[method-assign]
        Worker._idle = _idle  # type: ignore[method-assign]
        Worker._wait_and_claim = _wait_and_claim  # type: ignore[method-assign]


def _script_shas(q: Any) -> dict[str, str]:
    """Script name -> SHA1 of the queue's loaded scripts (best effort)."""
    out: dict[str, str] = {}
    for name, script in getattr(q.scripts, "_compiled", {}).items():
        sha = getattr(script, "sha", None)
        if isinstance(sha, str):
            out[name] = sha
    return out


async def _heal(q: Any, client: Any) -> None:
    """One whole heal walk, then one step of the workers' paced walk (when the source
    has one), each with its script calls, commands and longest call (SLOWLOG)."""
    from kitium_queue.features.groups import heal

    async def measure(what: str, run: Any) -> None:
        # Over 0.2 ms only: Redis logs the commands a script runs too, which would push
        # the script calls themselves out of the log.
        await client.config_set("slowlog-log-slower-than", 200)
        await client.config_set("slowlog-max-len", 100_000)
        await client.slowlog_reset()
        s0, c0, _ = await _server(client)
        t0 = time.perf_counter()
        await run()
        took = time.perf_counter() - t0
        s1, c1, _ = await _server(client)
        sha = _script_shas(q).get("group_heal", "")
        calls = [
            int(e["duration"])
            for e in await client.slowlog_get(100_000)
            if sha and sha.encode() in e["command"]
        ]
        print(
            f"  heal, {what}: {took * 1000:,.0f} ms, {s1 - s0:,} script calls, "
            f"{c1 - c0:,} commands; group_heal calls over 0.2 ms by SLOWLOG: "
            f"{len(calls)}, longest {max(calls, default=0) / 1000:.2f} ms, "
            f"sum {sum(calls) / 1000:,.0f} ms",
            flush=True,
        )

    await measure("whole walk (heal_groups)", lambda: heal.heal_groups(q))
    walk_cls = getattr(heal, "HealWalk", None)
    if walk_cls is not None:
        walk = walk_cls(q)
        await measure("one step of the workers' paced walk", walk.step)
        steps = 1
        while walk.cursor:
            await walk.step()
            steps += 1
        print(f"  heal, paced walk: a pass took {steps} steps of {heal.TICK_S:g} s", flush=True)
    await client.config_set("slowlog-max-len", 128)


def _own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _server(client: Any) -> tuple[int, int, float]:
    """(scripts run, commands run, CPU seconds) of redis-server so far."""
    stats = await client.info("commandstats")
    cpu = await client.info("cpu")
    scripts = sum(v["calls"] for k, v in stats.items() if k[8:] in ("evalsha", "eval", "fcall"))
    commands = sum(v["calls"] for k, v in stats.items() if k.startswith("cmdstat_"))
    return scripts, commands, float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


async def run(url: str, args: argparse.Namespace) -> dict[str, float]:
    q = JobQueue("gscale", redis=url, worker={"concurrency": args.concurrency})
    FIFOQueueManager(q)
    client = await q.client()
    extra = {"delay": args.delay_ms} if args.delay_ms else {}
    big = [("noop", {}, {"message_group_id": "big", **extra}) for _ in range(args.big)]
    singles = [("noop", {}, {"message_group_id": f"s{i}", **extra}) for i in range(args.singles)]
    specs = singles + big if args.order == "singles-first" else big + singles
    t0 = time.perf_counter()
    for start in range(0, len(specs), 1000):
        await q.add_jobs(specs[start : start + 1000])
    print(f"filled {len(specs):,} jobs in {time.perf_counter() - t0:.1f} s", flush=True)
    if args.heal:
        await _heal(q, client)
    total = len(specs)
    done = asyncio.Event()
    count = [0]

    ticks: list[float] = []

    async def noop(job: Any) -> None:
        count[0] += 1
        if probe.on:
            ticks.append(time.perf_counter())
        if count[0] == total:
            done.set()

    q.process("noop", noop)
    probe = Probe()
    probe.install()
    await client.config_set("slowlog-log-slower-than", 2000)
    await client.slowlog_reset()
    s0, c0, r0 = await _server(client)
    stats0 = await client.info("commandstats")
    cpu0, t0 = _own_cpu(), time.perf_counter()
    probe.on = True
    prof = cProfile.Profile() if args.profile else None
    if prof:
        prof.enable()
    await q.start()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), args.window)
    if prof:
        prof.disable()
        prof.dump_stats(args.profile)
    probe.on = False
    elapsed, cpu = time.perf_counter() - t0, _own_cpu() - cpu0
    jobs = count[0]
    s1, c1, r1 = await _server(client)
    if args.commands:
        stats1 = await client.info("commandstats")
        per = {
            k[8:]: (v["calls"] - stats0.get(k, {}).get("calls", 0)) / max(count[0], 1)
            for k, v in stats1.items()
        }
        top = sorted(per.items(), key=lambda kv: -kv[1])[:20]
        print("  commands per job: " + ", ".join(f"{k} {v:.2f}" for k, v in top if v > 0))
    slow = await client.slowlog_get(128)
    await q.close()
    names = {sha: name for name, sha in _script_shas(q).items()}
    worst: dict[str, list[int]] = {}
    for e in slow:
        cmd = e["command"].split()
        key = names.get(cmd[1].decode(), cmd[1].decode()[:12]) if len(cmd) > 1 else "?"
        worst.setdefault(f"{cmd[0].decode().lower()} {key}", []).append(int(e["duration"]))
    for k, v in sorted(worst.items(), key=lambda kv: -max(kv[1])):
        print(f"  slowlog (>2 ms, last 128): {k}: {len(v)} entries, worst {max(v) / 1000:.1f} ms")
    got = [g for _, g in probe.claims]
    if args.timeline:
        print("  second   jobs  claims  jobs/claim  empty claims")
        for sec in range(int(elapsed) + 1):
            lo, hi = t0 + sec, t0 + sec + 1
            n = sum(1 for t in ticks if lo <= t < hi)
            cs = [g for (_, g), t in zip(probe.claims, probe.at, strict=True) if lo <= t < hi]
            print(
                f"  {sec:6d} {n:6d} {len(cs):7d} "
                f"{(sum(cs) / len(cs) if cs else 0):11.2f} {cs.count(0):13d}"
            )
    wakes = [w for w in probe.wake_in if w >= 0]
    return {
        "jobs": jobs,
        "seconds": elapsed,
        "jobs_per_s": jobs / elapsed,
        "scripts_per_s": (s1 - s0 - 0) / elapsed,
        "commands_per_job": (c1 - c0) / max(jobs, 1),
        "claims": len(got),
        "jobs_per_claim": statistics.mean(got) if got else 0.0,
        "empty_claims": sum(1 for g in got if g == 0),
        "asked_per_claim": statistics.mean(a for a, _ in probe.claims) if got else 0.0,
        "wake_in_median_ms": statistics.median(wakes) if wakes else -1,
        "wake_in_max_ms": max(wakes) if wakes else -1,
        "worker_cpu_us_per_job": cpu / max(jobs, 1) * 1e6,
        "redis_cpu_us_per_job": (r1 - r0) / max(jobs, 1) * 1e6,
        "worker_cpu_share": cpu / elapsed,
        "lane_idle_s": probe.idle_s,
        "waker_block_s": probe.block_s,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--singles", type=int, default=100_000, help="groups of one job")
    ap.add_argument("--big", type=int, default=100_000, help="jobs of the one long group")
    ap.add_argument("--order", choices=("big-first", "singles-first"), default="big-first")
    ap.add_argument("--concurrency", type=int, default=20)
    ap.add_argument("--window", type=float, default=30.0, help="seconds measured at most")
    ap.add_argument("--src", default=None, help="the package source to measure")
    ap.add_argument("--port", type=int, default=None, help="the redis-server's port")
    ap.add_argument(
        "--delay-ms",
        type=int,
        default=0,
        help="add every job with this delay (due all at about the same time)",
    )
    ap.add_argument("--heal", action="store_true", help="measure the groups heal first")
    ap.add_argument("--commands", action="store_true", help="print commands per job by name")
    ap.add_argument("--timeline", action="store_true", help="print figures per second")
    ap.add_argument("--profile", default=None, help="write a cProfile of the window here")
    args = ap.parse_args()
    with RedisServer(port=args.port) as srv:
        r = asyncio.run(run(srv.url, args))
    print(
        f"{args.singles:,} single-job groups + one group of {args.big:,} jobs "
        f"({args.order}), worker concurrency {args.concurrency}"
    )
    print(
        f"  {r['jobs']:,} jobs in {r['seconds']:.1f} s: {r['jobs_per_s']:,.0f} jobs/s, "
        f"{r['scripts_per_s']:,.0f} scripts/s, {r['commands_per_job']:.1f} commands/job"
    )
    print(
        f"  claims: {r['claims']:,}, {r['jobs_per_claim']:.2f} jobs per claim "
        f"(asked {r['asked_per_claim']:.1f}), {r['empty_claims']:,} empty; wake_in "
        f"median {r['wake_in_median_ms']} ms, max {r['wake_in_max_ms']} ms"
    )
    print(
        f"  CPU per job: worker {r['worker_cpu_us_per_job']:.0f} µs "
        f"({r['worker_cpu_share'] * 100:.0f} % of a core), redis "
        f"{r['redis_cpu_us_per_job']:.0f} µs"
    )
    print(
        f"  waiting: pump lanes idle {r['lane_idle_s']:.1f} s (summed over lanes), "
        f"waker blocked {r['waker_block_s']:.1f} s"
    )


if __name__ == "__main__":
    main()
