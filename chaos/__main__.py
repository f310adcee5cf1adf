"""Command line: run the chaos scenarios, print a summary table, write the JSON report.

    .venv/bin/python -m chaos                      # every scenario, short form
    .venv/bin/python -m chaos --long               # every scenario, long form
    .venv/bin/python -m chaos --only sigkill       # one scenario (repeatable)
    .venv/bin/python -m chaos --report chaos/results.json

The report keeps one entry per scenario and form (short/long); a run updates only the
entries it ran, so ``--only`` reruns refresh a single row.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from . import NAMES
from .core import Result, run_scenario

DEFAULT_REPORT = Path(__file__).resolve().with_name("results.json")


def _headline(r: Result) -> str:
    f = r.figures
    keys = {
        "sigkill": ("kills", "restart_delay_s.max", "extra_runs"),
        "crash-steps": ("extra_successful_runs",),
        "sigterm": ("terminations", "handback_delay_s.max", "extra_runs"),
        "freeze": ("freezes", "abandon_after_wake_s.max", "relet_after_stop_s.max"),
        "redis-restart": ("restarts", "resume_after_restart_s.max", "everysec_lost_enqueues"),
        "network": ("faults", "reruns_total"),
        "clock-skew": ("skews_s", "stalls_during_renewal", "relet_early"),
        "poison": ("fuzzed_payloads", "fuzzed_fields"),
        "groups": ("jobs", "kills", "restarts", "interrupted_jobs"),
        "slow-redis": ("spikes", "completions_per_s", "stalled", "extra_runs"),
        "replica-acks": ("rounds", "lost_acknowledged_without", "lost_acknowledged_with"),
        "erasure": ("erasures", "jobs_erased", "erased_while_active", "kills", "restarts"),
        "redis-full": ("refused_adds", "resume_after_s.max"),
        "regions": ("crash_rto_workers_s", "crash_rpo_jobs", "partition_stranded",
                    "completed_twice"),
    }.get(r.name, ())
    parts = []
    for k in keys:
        v: Any = f
        for part in k.split("."):
            v = v.get(part) if isinstance(v, dict) else None
        if v is not None:
            parts.append(f"{k}={v}")
    return ", ".join(parts)


def _table(results: list[Result]) -> str:
    rows = [("#", "scenario", "mode", "result", "time", "checks", "figures")]
    for r in results:
        ok = sum(1 for c in r.checks if c["ok"])
        rows.append((
            str(r.item), r.name, r.mode, "PASS" if r.passed else "FAIL",
            f"{r.duration_s:.1f}s", f"{ok}/{len(r.checks)}", _headline(r),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    out = []
    for row in rows:
        cells = "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False))
        out.append(f"{cells}  {row[-1]}")
    return "\n".join(out)


def _write_report(path: Path, results: list[Result]) -> None:
    try:
        report = json.loads(path.read_text())
        if not isinstance(report, dict) or "scenarios" not in report:
            raise ValueError
    except (OSError, ValueError):
        report = {"scenarios": {}}
    report["about"] = (
        "kitium-queue fault suite (issue 4, items 1-8). One entry per scenario and form; "
        "each has pass/fail, the figures measured, every check, the ledger/consistency "
        "checks and the command that reruns it."
    )
    report["machine"] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    for r in results:
        entry = r.to_dict()
        entry["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        report["scenarios"].setdefault(r.name, {})[r.mode] = entry
    report["scenarios"] = dict(sorted(report["scenarios"].items(),
                                      key=lambda kv: NAMES.index(kv[0])
                                      if kv[0] in NAMES else 99))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m chaos", description=__doc__.splitlines()[0])
    p.add_argument("--long", action="store_true", help="long form (more faults, more jobs)")
    p.add_argument("--only", action="append", choices=NAMES, metavar="NAME",
                   help=f"run only this scenario (repeatable): {', '.join(NAMES)}")
    p.add_argument("--report", type=Path, default=DEFAULT_REPORT,
                   help="JSON report to update (default: chaos/results.json)")
    p.add_argument("--keep", action="store_true", help="keep work directories (logs)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    results = []
    for name in args.only or NAMES:
        print(f"== {name} ({'long' if args.long else 'short'}) ...", flush=True)
        r = run_scenario(name, long=args.long, keep=args.keep)
        results.append(r)
        print(f"   {'PASS' if r.passed else 'FAIL'} in {r.duration_s:.1f} s  {_headline(r)}",
              flush=True)
        for c in r.checks:
            if not c["ok"]:
                print(f"   failed check: {c['check']}: {c['detail']}", flush=True)
        if r.error:
            print("   error: " + r.error, flush=True)
    _write_report(args.report, results)
    print()
    print(_table(results))
    print(f"\nreport: {args.report}")
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
