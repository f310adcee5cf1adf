"""Payload encryption: its cost per job, and drain rate against the plain queue, one run.

    .venv/bin/python bench/bench_encryption.py                 # 20,000 jobs, 3 reps
    .venv/bin/python bench/bench_encryption.py --jobs 50000 --reps 5

1. Overhead per job (µs), in process, no Redis: what the producer and the worker add
   for one typical 1 KB payload: seal (serialize + encrypt + envelope) and open
   (envelope + decrypt + parse) of the data, and the same for a small result.
   Then a failing job: sealing its reason and traceback (``seal_failures``, on by
   default) for an encrypted job, against a plain failing job on the same queue (the
   failure-text filter passes its texts through); and a progress value and a log line
   (``seal_progress_and_logs``), sealed and passed through.
2. Drain rate (jobs/s): ``--jobs`` jobs with a 1 KB payload added with ``add_jobs``
   (batches of 1000), then drained by one worker (concurrency 20) in a fresh child
   process against one private ``redis-server``; cases ``plain``, ``gcm`` and ``cbc``
   interleaved per repetition, so load on the machine hits all of them alike. Also the
   enqueue rate of each case. ``--failing``: jobs whose one run raises instead (cases
   ``plain-fail`` and ``gcm-fail``): what sealing their failure texts costs a drain;
   ``--texts``: jobs whose run reports progress and logs a line three times each
   (``plain-texts``, ``gcm-texts``): what sealing those costs.

Prints every figure and each case against ``plain`` (medians).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _redis import RedisServer

ROOT = Path(__file__).resolve().parents[1]
PAYLOAD = {
    "order": "A-1029",
    "customer": {"name": "x" * 40, "email": "a@b.c"},
    "lines": [{"sku": f"SKU-{i:04d}", "qty": i, "note": "y" * 20} for i in range(16)],
}

_CHILD = r"""
import asyncio, json, sys, time
from kitium_queue import JobQueue

async def main(url, name, jobs, case, payload):
    q = JobQueue(name, redis=url, worker={"concurrency": 20})
    failing = case.endswith("-fail")  # every run raises: its reason and traceback stored
    texts = case.endswith("-texts")  # every run reports progress and logs 3 times each
    case = case.removesuffix("-fail").removesuffix("-texts")
    opts = {"attempts": 1} if failing else {}
    if case != "plain":
        from kitium_queue.features.encryption import EncryptionManager, KeyConfig, generate_key
        alg = "aes-256-gcm" if case == "gcm" else "aes-256-cbc"
        EncryptionManager(q, keys=[KeyConfig("k1", generate_key(), alg)], run_rotation=False)
        opts = {**opts, "encrypted": True}
    t0 = time.perf_counter()
    for start in range(0, jobs, 1000):
        await q.add_jobs([("w", {**payload, "i": i}, opts)
                          for i in range(start, min(jobs, start + 1000))])
    enq = jobs / (time.perf_counter() - t0)
    done = asyncio.Event()
    count = 0

    async def w(job):
        nonlocal count
        count += 1
        if count == jobs:
            done.set()
        for step in range(3) if texts else ():
            await job.update_progress({"pct": step * 33, "order": job.data["order"]})
            await job.log(f"step {step} of order {job.data['order']}")
        if failing:
            raise ValueError(f"bad amount {job.data['i']} for order {job.data['order']}")
        return {"ok": True, "i": job.data["i"]}

    q.process("w", w)
    t0 = time.perf_counter()
    await q.start()
    await done.wait()
    wall = time.perf_counter() - t0
    await q.clear(force=True)
    await q.close()
    print(json.dumps({"rate": jobs / wall, "enqueue": enq}))

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4],
                 json.loads(sys.argv[5])))
"""


def overhead(n: int) -> dict[str, float]:
    """µs per job of sealing and opening the data (1 KB) and the result, per algorithm."""
    from kitium_queue import JobQueue
    from kitium_queue.features.encryption import EncryptionManager, KeyConfig, generate_key
    from kitium_queue.features.encryption.crypto import Binding

    out: dict[str, float] = {}
    for alg in ("aes-256-gcm", "aes-256-cbc"):
        q = JobQueue(f"b-{alg}", redis="memory://bench")
        m = EncryptionManager(q, keys=[KeyConfig("k1", generate_key(), alg)], run_rotation=False)
        ser, ring = q.serializer, m.ring
        data_b = Binding("job", q.name, "0f8fad5b-d9cb-469f-a165-70867728950e", "w", "data")
        res_b = Binding("job", q.name, "0f8fad5b-d9cb-469f-a165-70867728950e", "w", "result")
        result = {"ok": True, "i": 1}
        stored = ser.dumps(ring.seal(ser.dumps(PAYLOAD), "k1", data_b))
        t0 = time.perf_counter()
        for _ in range(n):
            env = ring.seal(ser.dumps(PAYLOAD), "k1", data_b)  # producer
            raw = ser.dumps(env)
            ser.loads(ring.open(ser.loads(raw), data_b))  # worker: data
            ring.seal(ser.dumps(result), "k1", res_b)  # worker: result
        enc = (time.perf_counter() - t0) / n * 1e6
        t0 = time.perf_counter()
        for _ in range(n):  # the same without encryption: serialize, store, parse
            raw = ser.dumps(PAYLOAD)
            ser.loads(raw)
            ser.dumps(result)
        plain = (time.perf_counter() - t0) / n * 1e6
        out[alg] = enc - plain
        out[f"{alg} stored bytes"] = len(stored)
    out["plain stored bytes"] = len(q.serializer.dumps(PAYLOAD))
    return out


def failure_overhead(n: int) -> dict[str, float]:
    """µs per failed run of storing its reason and traceback: sealed (an encrypted job)
    and passed through (a plain job on a queue with the manager), and the stored sizes."""
    from types import SimpleNamespace

    from kitium_queue import JobQueue
    from kitium_queue.features.encryption import EncryptionManager, KeyConfig, generate_key
    from kitium_queue.features.encryption.crypto import Binding
    from kitium_queue.features.encryption.failures import FailureSeal
    from kitium_queue.limits import MAX_ERROR_CHARS, wire_text
    from kitium_queue.outcomes import describe, traceback_text

    q = JobQueue("b-fail", redis="memory://bench")
    m = EncryptionManager(q, keys=[KeyConfig("k1", generate_key())], run_rotation=False)
    jid = "0f8fad5b-d9cb-469f-a165-70867728950e"
    env = m.ring.seal(q.serializer.dumps(PAYLOAD), "k1", Binding("job", q.name, jid, "w", "data"))
    try:
        raise ValueError(f"bad amount 12.50 for card {'4' * 16} (order A-1029)")
    except ValueError as exc:
        err = exc
    reason, tb = wire_text(describe(err), MAX_ERROR_CHARS), traceback_text(err)
    seal = FailureSeal(m)
    out: dict[str, float] = {"reason bytes": len(reason), "traceback bytes": len(tb)}
    for case, opts in (("encrypted", {"encrypted": True}), ("plain", {})):
        job = SimpleNamespace(id=jid, name="w", options=opts, data=env)
        t0 = time.perf_counter()
        for _ in range(n):
            got = seal(job, err, reason, tb)
        out[case] = (time.perf_counter() - t0) / n * 1e6
        out[f"{case} stored bytes"] = len(got[0]) + len(got[1])
    return out


def text_overhead(n: int) -> dict[str, float]:
    """µs per progress value and per log line of sealing them for an encrypted job
    (``seal_progress_and_logs``, on by default), and what a plain job on the same queue
    pays (the job-text filter passes its values through); stored sizes."""
    from types import SimpleNamespace

    import orjson

    from kitium_queue import JobQueue
    from kitium_queue.features.encryption import EncryptionManager, KeyConfig, generate_key
    from kitium_queue.features.encryption.crypto import Binding
    from kitium_queue.features.encryption.progresslogs import ProgressLogSeal

    q = JobQueue("b-texts", redis="memory://bench")
    m = EncryptionManager(q, keys=[KeyConfig("k1", generate_key())], run_rotation=False)
    seal = ProgressLogSeal(m)
    jid = "0f8fad5b-d9cb-469f-a165-70867728950e"
    env = m.ring.seal(q.serializer.dumps(PAYLOAD), "k1", Binding("job", q.name, jid, "w", "data"))
    values = {
        "progress": orjson.dumps({"pct": 50, "step": "charging", "order": "A-1029"}),
        "log": b"charging card ending 1111 for order A-1029 (attempt 1)",
    }
    out: dict[str, float] = {}
    for kind, raw in values.items():
        out[f"{kind} bytes"] = len(raw)
        for case, opts in (("encrypted", {"encrypted": True}), ("plain", {})):
            job = SimpleNamespace(id=jid, name="w", options=opts, data=env)
            t0 = time.perf_counter()
            for _ in range(n):
                got = seal(job, kind, raw)
            out[f"{kind} {case}"] = (time.perf_counter() - t0) / n * 1e6
            out[f"{kind} {case} stored bytes"] = len(got)
    return out


def drain(url: str, case: str, jobs: int, rep: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _CHILD,
            url,
            f"bench-{case}-{rep}",
            str(jobs),
            case,
            json.dumps(PAYLOAD),
        ],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=20_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--micro", type=int, default=20_000, help="iterations of part 1")
    ap.add_argument(
        "--texts",
        action="store_true",
        help="drain jobs whose every run reports progress and writes a log line 3 times "
        "each instead (plain-texts, gcm-texts: the cost of sealing them)",
    )
    ap.add_argument(
        "--failing",
        action="store_true",
        help="drain jobs whose every run fails instead (plain-fail, gcm-fail: the cost "
        "of sealing failure texts)",
    )
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    costs = overhead(args.micro)
    print(f"payload: {costs['plain stored bytes']} B as JSON")
    for alg in ("aes-256-gcm", "aes-256-cbc"):
        print(
            f"overhead {alg}: {costs[alg]:.1f} us/job (seal data + open data + seal result, "
            f"over plain serialization); stored {costs[f'{alg} stored bytes']} B"
        )
    fails = failure_overhead(args.micro)
    print(
        f"failing job: sealing reason + traceback ({fails['reason bytes']:.0f} + "
        f"{fails['traceback bytes']:.0f} B): {fails['encrypted']:.1f} us/failure, stored "
        f"{fails['encrypted stored bytes']:.0f} B; a plain failing job: "
        f"{fails['plain']:.2f} us, stored {fails['plain stored bytes']:.0f} B"
    )
    texts = text_overhead(args.micro)
    for kind in ("progress", "log"):
        print(
            f"{kind} ({texts[f'{kind} bytes']:.0f} B): sealing "
            f"{texts[f'{kind} encrypted']:.1f} us, stored "
            f"{texts[f'{kind} encrypted stored bytes']:.0f} B; a plain job "
            f"{texts[f'{kind} plain']:.2f} us"
        )
    cases: tuple[str, ...] = ("plain", "gcm", "cbc")
    if args.failing or args.texts:
        cases = ("plain-fail", "gcm-fail") if args.failing else ("plain-texts", "gcm-texts")
    rates: dict[str, list[float]] = {c: [] for c in cases}
    enq: dict[str, list[float]] = {c: [] for c in cases}
    with RedisServer() as server:
        for rep in range(args.reps):
            for case in cases:
                got = drain(server.url, case, args.jobs, rep)
                rates[case].append(got["rate"])
                enq[case].append(got["enqueue"])
                print(
                    f"rep {rep + 1} {case:5s}: drain {got['rate']:,.0f} jobs/s, "
                    f"enqueue {got['enqueue']:,.0f} jobs/s"
                )
    base = statistics.median(rates[cases[0]])
    base_enq = statistics.median(enq[cases[0]])
    for case in cases:
        med = statistics.median(rates[case])
        med_enq = statistics.median(enq[case])
        print(
            f"{case:5s}: drain median {med:,.0f} jobs/s ({min(rates[case]):,.0f}-"
            f"{max(rates[case]):,.0f}), {med / base * 100:.0f}% of {cases[0]}; enqueue median "
            f"{med_enq:,.0f} jobs/s, {med_enq / base_enq * 100:.0f}% of {cases[0]}"
        )


if __name__ == "__main__":
    main()
