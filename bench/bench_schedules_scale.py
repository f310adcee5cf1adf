"""Schedules at scale: 100,000 schedules on one queue, Redis' longest command per phase.

    .venv/bin/python bench/bench_schedules_scale.py                 # private redis-server
    .venv/bin/python bench/bench_schedules_scale.py --schedules 20000 --redis redis://...

1. **Declare** ``--schedules`` interval schedules (``--concurrency`` at a time), half of
   them every 60 s and half every 3,600 s, so all are due at once at a whole hour.
2. **Admin calls**, each alone: declare a new one, re-declare one unchanged, update,
   pause, resume, get, remove one, ``get_schedules()`` (every schedule, paged), and
   ``overdue_ms``.
3. **Scheduler rounds** with Redis' clock replaced by the next whole hour (every
   schedule due): ``Scheduler.run_due`` until none is due; each round's time.

For each phase: SLOWLOG's longest command (execution time inside Redis, microseconds;
every command over ``--slower-than``, default 0, is logged; over 200 µs while
declaring), per command and script, and the wall time. Nothing asserts; the target is
no command over 50 ms. Prints a table; ``--json`` also writes the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from _redis import RedisServer
from kitium_queue import JobQueue
from kitium_queue.features.scheduler import Scheduler, overdue_ms

HOUR = 3_600_000


class Slowlog:
    """The commands Redis ran since ``reset`` (every one over ``slower_than_us``)."""

    def __init__(self, r: aioredis.Redis, slower_than_us: int, names: dict[str, str]) -> None:
        self.r = r
        self.slower_than_us = slower_than_us
        self.names = names  # script sha -> script name

    async def setup(self) -> None:
        await self.r.config_set("slowlog-log-slower-than", self.slower_than_us)
        await self.r.config_set("slowlog-max-len", 500_000)

    async def reset(self, slower_than_us: int | None = None) -> None:
        got = self.slower_than_us if slower_than_us is None else slower_than_us
        await self.r.config_set("slowlog-log-slower-than", got)
        await self.r.slowlog_reset()

    def _name(self, cmd: Any) -> str:
        parts = _text(cmd).split()
        if parts and parts[0].upper() == "EVALSHA" and len(parts) > 1:
            return self.names.get(parts[1], "script " + parts[1][:8])
        return parts[0].upper() if parts else "?"

    async def collect(self, into: dict[str, list[int]] | None = None) -> dict[str, list[int]]:
        """Durations (µs) of the logged commands by command (script name), added to
        ``into``; the bench's own SLOWLOG and CONFIG calls are left out."""
        per: dict[str, list[int]] = {} if into is None else into
        for e in await self.r.slowlog_get(500_000):
            name = self._name(e["command"])
            if name not in ("SLOWLOG", "CONFIG"):
                per.setdefault(name, []).append(int(e["duration"]))
        return per


def _summary(per: dict[str, list[int]]) -> dict[str, Any]:
    """The longest command, how many took over 1 ms / 10 ms, and per command: count,
    median and longest (µs)."""
    every = [d for ds in per.values() for d in ds]
    top = max(per, key=lambda k: max(per[k])) if per else "-"
    return {
        "max_cmd_ms": max(every, default=0) / 1000,
        "max_cmd": top,
        "over_1ms": sum(1 for d in every if d >= 1000),
        "over_10ms": sum(1 for d in every if d >= 10_000),
        "per_command": {
            k: {"n": len(v), "p50_us": int(statistics.median(v)), "max_us": max(v)}
            for k, v in sorted(per.items())
        },
    }


def _text(cmd: Any) -> str:
    return cmd.decode(errors="replace") if isinstance(cmd, bytes) else str(cmd)


async def _timed(
    slow: Slowlog, rows: list[dict[str, Any]], name: str, coro: Any, slower_than: int | None = None
) -> Any:
    await slow.reset(slower_than)
    t = time.perf_counter()
    out = await coro
    wall = (time.perf_counter() - t) * 1000
    rows.append({"phase": name, "wall_ms": round(wall, 1), **_summary(await slow.collect())})
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    r = aioredis.Redis.from_url(args.redis)
    prefix = f"bss{int(time.time())}:"
    q = JobQueue("scale", redis=args.redis, prefix=prefix, worker={"scheduler": False})
    names = {
        q.scripts.get(n).sha: n
        for n in ("schedule_put", "schedule_due", "schedule_fire", "schedule_pause",
                  "schedule_remove")
    }  # fmt: skip
    slow = Slowlog(r, args.slower_than, names)
    await slow.setup()
    rows: list[dict[str, Any]] = []
    try:
        n = args.schedules

        async def declare_all() -> None:
            sem = asyncio.Semaphore(args.concurrency)

            async def one(i: int) -> None:
                async with sem:
                    every = 60_000 if i % 2 else HOUR
                    await q.schedule_every("tick", {"i": i}, every, schedule_id=f"s{i}")

            await asyncio.gather(*(one(i) for i in range(n)))

        # Over 1M commands: only those over 200 µs are logged (the log keeps 500,000).
        await _timed(slow, rows, f"declare {n:,}", declare_all(), 200)
        await _timed(
            slow, rows, "declare one more", q.schedule_every("t", None, 1000, schedule_id="x")
        )
        await _timed(
            slow,
            rows,
            "re-declare unchanged",
            q.schedule_every("tick", {"i": 1}, 60_000, schedule_id="s1"),
        )
        await _timed(slow, rows, "update_schedule", q.update_schedule("s2", limit=5))
        await _timed(slow, rows, "pause_schedule", q.pause_schedule("s3"))
        await _timed(slow, rows, "resume_schedule", q.resume_schedule("s3"))
        await _timed(slow, rows, "get_schedule", q.get_schedule("s4"))
        await _timed(slow, rows, "remove_schedule", q.remove_schedule("x"))
        listed = await _timed(slow, rows, "get_schedules (all)", q.get_schedules())
        assert len(listed) == n
        await _timed(slow, rows, "overdue_ms", overdue_ms(q))

        # Every schedule due: Redis' clock replaced by the next whole hour.
        sec, _ = await r.time()
        at = (int(sec) * 1000 // HOUR + 1) * HOUR
        sched = Scheduler()
        sched.queue = q
        rounds: list[float] = []
        per: dict[str, list[int]] = {}
        await slow.reset()
        t0 = time.perf_counter()
        while len(rounds) <= n:
            t = time.perf_counter()
            wait = await sched.run_due(at)
            rounds.append((time.perf_counter() - t) * 1000)
            await slow.collect(per)  # each round's commands (the log keeps 500,000)
            await slow.reset()
            if wait != 0:
                break
        rows.append({
            "phase": f"scheduler rounds until none due ({n:,} schedules)",
            "wall_ms": round((time.perf_counter() - t0) * 1000, 1),
            **_summary(per),
        })  # fmt: skip
        fired = sched.fired
        figures = {
            "schedules": n,
            "fired": fired,
            "rounds": len(rounds),
            "round_ms_p50": round(statistics.median(rounds), 1),
            "round_ms_max": round(max(rounds), 1),
            "fired_per_s": round(fired / (sum(rounds) / 1000)),
            "phases": rows,
        }
    finally:
        await q.close()
        cursor = 0
        while True:  # the bench's keys only
            cursor, keys = await r.scan(cursor, match=f"{prefix}*", count=1000)
            if keys:
                await r.unlink(*keys)
            if cursor == 0:
                break
        await r.aclose()
    return figures


def _print(f: dict[str, Any]) -> None:
    print(f"{'phase':<48} {'wall ms':>10} {'longest ms':>11} {'>1ms':>6} {'>10ms':>6}  command")
    for row in f["phases"]:
        print(
            f"{row['phase']:<48} {row['wall_ms']:>10} {row['max_cmd_ms']:>11} "
            f"{row['over_1ms']:>6} {row['over_10ms']:>6}  {row['max_cmd']}"
        )
    print("\nper command, µs (declaring: commands over 200 µs only):")
    for row in f["phases"]:
        if row["phase"].startswith(("declare 1", "declare 2", "scheduler", "get_schedules")):
            for k, v in row["per_command"].items():
                print(f"  {row['phase'][:30]:<30} {k:<16} n={v['n']:<7} p50={v['p50_us']:<6} "
                      f"max={v['max_us']}")  # fmt: skip
    print(
        f"\nrounds: {f['rounds']} (p50 {f['round_ms_p50']} ms, max {f['round_ms_max']} ms); "
        f"{f['fired']:,} ticks fired, {f['fired_per_s']:,}/s by one scheduler"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--redis", default=None, help="a running server (default: a private one)")
    p.add_argument("--schedules", type=int, default=100_000)
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--slower-than", type=int, default=0, help="SLOWLOG threshold, µs")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    srv = None
    if args.redis is None:
        srv = RedisServer().start()
        args.redis = srv.url
    try:
        figures = asyncio.run(run(args))
    finally:
        if srv is not None:
            srv.close()
    _print(figures)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
