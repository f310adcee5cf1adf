"""Shared by the benchmarks that run each case of a feature in a fresh child process
against one private ``redis-server`` (``bench_compliance.py``, ``bench_flowcontrol.py``):
the child runner, the interleaved repetitions and the Markdown table of medians. A
child prints one JSON line: ``rate``, ``enqueue``, ``commands``, ``redis_cpu_us`` and
``worker_cpu_us`` (``_drain.measured_drain`` plus the timed ``add_jobs``)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

__all__ = ["ROOT", "child", "interleaved", "table"]


def child(code: str, *args: str) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter (the package and ``bench/`` importable) with
    ``args``; its last output line, as JSON. ``KQ_BENCH_SRC`` names another ``src``
    folder to measure (an earlier commit's, from ``git archive``) in place of this one."""
    src = os.environ.get("KQ_BENCH_SRC") or str(ROOT / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, str(ROOT / "bench")])}
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], check=True, capture_output=True, text=True, env=env
    )
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def interleaved(
    url: str, code: str, cases: Sequence[str], reps: int, jobs: int
) -> dict[str, list[dict[str, Any]]]:
    """Every case ``reps`` times (order rotating each repetition), printing each run."""
    got: dict[str, list[dict[str, Any]]] = {c: [] for c in cases}
    width = max(len(c) for c in cases)
    for rep in range(reps):
        order = [*cases[rep % len(cases) :], *cases[: rep % len(cases)]]
        for case in order:
            r = child(code, url, case, str(jobs))
            got[case].append(r)
            print(
                f"rep {rep + 1} {case:{width}s}: drain {r['rate']:,.0f} jobs/s, enqueue "
                f"{r['enqueue']:,.0f} jobs/s, {r['commands']:.2f} commands/job, "
                f"redis CPU {r['redis_cpu_us']:.1f} us/job, worker CPU "
                f"{r['worker_cpu_us']:.1f} us/job"
            )
    return got


def table(got: dict[str, list[dict[str, Any]]], reps: int, jobs: int) -> None:
    """Print the medians (min–max) of every case, the first case as the base."""
    first = next(iter(got))

    def med(case: str, key: str) -> float:
        return statistics.median(r[key] for r in got[case])

    # Commands per job of the enqueue, where the children count them.
    counted = all("enqueue_commands" in r for rs in got.values() for r in rs)
    print(f"\nmedians of {reps} ({jobs:,} no-op jobs, concurrency 20):")
    print(
        "| case | drain (jobs/s) | vs plain | enqueue (jobs/s) | vs plain | "
        + ("enqueue commands/job | " if counted else "")
        + "commands/job | redis CPU µs/job | worker CPU µs/job |"
    )
    print("|---" * (9 if counted else 8) + "|")
    for case in got:
        rates = [r["rate"] for r in got[case]]
        print(
            f"| {case} | {med(case, 'rate'):,.0f} ({min(rates):,.0f}–{max(rates):,.0f}) | "
            f"{med(case, 'rate') / med(first, 'rate') * 100:.0f} % | "
            f"{med(case, 'enqueue'):,.0f} | "
            f"{med(case, 'enqueue') / med(first, 'enqueue') * 100:.0f} % | "
            + (f"{med(case, 'enqueue_commands'):.2f} | " if counted else "")
            + f"{med(case, 'commands'):.2f} | {med(case, 'redis_cpu_us'):.1f} | "
            f"{med(case, 'worker_cpu_us'):.1f} |"
        )
