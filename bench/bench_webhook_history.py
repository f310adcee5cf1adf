"""Webhook delivery history: Redis memory after N deliveries with the count bound
(``history_max``) and without it, and what the bound costs per delivery.

    .venv/bin/python bench/bench_webhook_history.py                    # 30,000 deliveries
    .venv/bin/python bench/bench_webhook_history.py -n 50000 --history-max 10000 1000
    # against the code before the bound (an earlier commit's src folder):
    git archive <commit> src | tar -x -C /tmp/base
    .venv/bin/python bench/bench_webhook_history.py --baseline-src /tmp/base/src

One private ``redis-server`` (no persistence; ``--port`` to pick its port), flushed before
each case. Each case runs in a fresh process: a receiver on loopback (answers 200), a
queue with ``WebhookManager`` and one guaranteed endpoint; ``-n`` application events
(``send_event``, bodies shaped like a ``job-completed`` event's) go to the outbox first,
then the delivery service is started and timed until every result is recorded. Cases:

  baseline     (with ``--baseline-src``) the code before the bound: the index is cut at
               10,000 entries, every record stays until its 7-day TTL
  max=M        this tree with ``history_max=M``: records past the newest M are deleted
  unbounded    this tree with ``history_max`` above ``-n``: nothing is cut by count
               (age only, as the baseline's records; the index then holds them all)

Figures per case: records left (``wh:d:*``), their memory (``MEMORY USAGE`` summed over
all of them) and per record, the index's memory, ``used_memory`` after the outbox is
trimmed, Redis commands per delivery during the delivery phase (``INFO commandstats``
summed, the scripts' own commands included, the script calls themselves not), the
commands of the trim among them, the scripts' time in Redis per delivery, and
deliveries/s of the phase (one process, noisy). Then the ``webhooks_done`` step alone
(no HTTP, no outbox), once the index is full: its commands and its time per delivery.

Last, the webhook DLQ's bound (``dead_max``): the same step recording ``-n`` dead
deliveries to one endpoint (an endpoint that is down) once its DLQ holds ``--dead-max``
(10,000), with that bound and with none (``dead_max=None``; ``--dead-baseline-src``: also
the code before the bound): commands and script time per dead delivery, the bound's
commands, keys and ``used_memory`` left.

Benchmarks are not tests: nothing here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

QUEUE, HOOK = "orders", "billing"
#: The commands the trim adds (with zadd/zremrangebyrank, which it shares with before).
TRIM_COMMANDS = ("zcard", "zrange", "zscore", "hget", "del")
#: The commands the DLQ's bound adds per dead delivery dropped or per step.
DEAD_COMMANDS = ("zcard", "zrange", "zremrangebyrank", "zrem", "zscore", "hget", "del", "type")


# ---------------------------------------------------------------------------- child
def _commandstats(info: dict[str, Any]) -> tuple[dict[str, int], int]:
    """Calls per command, and the scripts' time (µs, their own commands included)."""
    out, usec = {}, 0
    for key, v in info.items():
        if key.startswith("cmdstat_") and isinstance(v, dict):
            out[key[len("cmdstat_") :]] = int(v["calls"])
            if key.startswith(("cmdstat_eval", "cmdstat_fcall")):
                usec += int(v["usec"])
    return out, usec


#: A real job-completed event's body (what each delivery record stores).
EVENT_BODY = (
    b'{"type":"job-completed","timestamp":"2026-12-06T09:20:09.544+00:00","data":'
    b'{"queue":"orders","job_id":"0000000000000146","job_name":"charge","attempts":1}}'
)


async def _child(args: argparse.Namespace) -> None:
    sys.path.insert(0, args.src)
    import redis.asyncio as aioredis
    from chaos.receiver import Receiver

    from kitium_queue import JobQueue
    from kitium_queue.features.webhooks import (
        WebhookConfig,
        WebhookEvent,
        WebhookManager,
        generate_secret,
    )
    from kitium_queue.outbox import Outbox

    rec = await Receiver().start()
    q = JobQueue(QUEUE, redis=args.redis, prefix="kq")
    opts: dict[str, Any] = {"allow_networks": ["127.0.0.0/8"], "run_service": False}
    if args.history_max:
        opts["history_max"] = args.history_max
    m = WebhookManager(q, **opts)
    await m.register_webhook(
        WebhookConfig(url=rec.url, secret=generate_secret(), events=["job-completed"], id=HOOK)
    )
    n = args.n
    for start in range(0, n, 200):
        await asyncio.gather(
            *(
                m.send_event(
                    WebhookEvent(
                        "job-completed",
                        {
                            "queue": QUEUE,
                            "job_id": f"{i:016x}",
                            "job_name": "charge",
                            "attempts": 1,
                        },
                        id=f"evt_{1_700_000_000_000 + i}-0",
                    )
                )
                for i in range(start, min(start + 200, n))
            )
        )
    r = aioredis.Redis.from_url(args.redis)
    await r.config_resetstat()
    t0 = time.perf_counter()
    await m.service.start(q)
    while True:
        s = await m.stats()
        if s["outbox_pending"] == 0 and s["outbox_lag"] == 0:
            break
        await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - t0
    stats, script_usec = _commandstats(await r.info("commandstats"))
    await m.service.stop()
    while await Outbox(q).trim():
        pass
    base = q.keys.extra(f"wh:d:{HOOK}/")
    rec_bytes = records = 0
    async for key in r.scan_iter(match=base + "*", count=1000):
        rec_bytes += await r.memory_usage(key, samples=0) or 0
        records += 1
    idx = q.keys.extra(f"wh:idx:{HOOK}")
    await r.execute_command("MEMORY", "PURGE")
    mem = await r.info("memory")
    scripts = sum(v for k, v in stats.items() if k.startswith(("evalsha", "eval", "fcall")))
    inner = sum(stats.values()) - scripts
    print(
        json.dumps(
            {
                "delivered": len(rec.ids()),
                "records": records,
                "record_bytes": rec_bytes,
                "index_entries": await r.zcard(idx),
                "index_bytes": await r.memory_usage(idx, samples=0) or 0,
                "used_memory": int(mem["used_memory"]),
                "commands": inner,
                "script_calls": scripts,
                "script_usec": script_usec,
                "trim_commands": {c: stats.get(c, 0) for c in TRIM_COMMANDS},
                "elapsed_s": elapsed,
            }
        ),
        flush=True,
    )
    await r.aclose()
    await q.close()
    await rec.stop()


async def _script_child(args: argparse.Namespace) -> None:
    """The ``webhooks_done`` step alone, at steady state: ``-n`` results recorded once
    the index is full (10,000 first), 200 per call, as the delivery service sends them;
    the script's commands and time per delivery."""
    sys.path.insert(0, args.src)
    import redis.asyncio as aioredis

    from kitium_queue import JobQueue
    from kitium_queue.features.webhooks import WebhookManager

    q = JobQueue(QUEUE, redis=args.redis, prefix="kq")
    opts: dict[str, Any] = {"run_service": False}
    if args.history_max:
        opts["history_max"] = args.history_max
    WebhookManager(q, **opts)
    body = EVENT_BODY
    r = aioredis.Redis.from_url(args.redis)

    async def record(first: int, count: int) -> None:
        for start in range(first, first + count, 200):
            rows: list[Any] = []
            for i in range(start, min(start + 200, first + count)):
                hist = f"[[{1_796_548_810_943 + i},1,200,null,23]]"
                rows += [f"{HOOK}/evt_{1_700_000_000_000 + i}-0", "ok", 1, 0, hist, 200, ""]
                rows += [7 * 86_400, body, "job-completed", "guaranteed", "", 8]
            await q.ctx.run("webhooks_done", ("webhooks", 0, *rows))

    await record(0, 10_000)  # the index full (either bound)
    await r.config_resetstat()
    await record(10_000, args.n)
    stats, usec = _commandstats(await r.info("commandstats"))
    scripts = sum(v for k, v in stats.items() if k.startswith(("evalsha", "eval", "fcall")))
    print(
        json.dumps(
            {
                "commands": sum(stats.values()) - scripts,
                "trim_commands": {c: stats.get(c, 0) for c in TRIM_COMMANDS},
                "script_usec": usec,
                "records": await r.dbsize(),
            }
        ),
        flush=True,
    )
    await r.aclose()
    await q.close()


async def _dead_child(args: argparse.Namespace) -> None:
    """The ``webhooks_done`` step recording dead deliveries to one endpoint, 200 a call,
    once its DLQ holds ``--dead-max`` (``--history-max`` 0: no bound): commands, time,
    what is left."""
    sys.path.insert(0, args.src)
    import redis.asyncio as aioredis

    from kitium_queue import JobQueue
    from kitium_queue.features.webhooks import WebhookManager

    q = JobQueue(QUEUE, redis=args.redis, prefix="kq")
    # -1: the code before the bound (no dead_max option)
    opts = {} if args.history_max == -1 else {"dead_max": args.history_max or None}
    WebhookManager(q, run_service=False, **opts)
    body = EVENT_BODY
    r = aioredis.Redis.from_url(args.redis)

    async def record(first: int, count: int) -> None:
        for start in range(first, first + count, 200):
            rows: list[Any] = []
            for i in range(start, min(start + 200, first + count)):
                hist = "".join(
                    f'[{1_796_548_810_943 + i + a},{a + 1},500,"HTTP 500",4],' for a in range(8)
                )
                rows += [f"{HOOK}/evt_{1_700_000_000_000 + i}-0", "dead", 9, 0, f"[{hist[:-1]}]"]
                rows += [500, "HTTP 500", 7 * 86_400, body, "job-completed", "guaranteed", "", 8]
            await q.ctx.run("webhooks_done", ("webhooks", 0, *rows))

    await record(0, args.dead_fill)  # the DLQ full (either way)
    await r.config_resetstat()
    await record(args.dead_fill, args.n)
    stats, usec = _commandstats(await r.info("commandstats"))
    scripts = sum(v for k, v in stats.items() if k.startswith(("evalsha", "eval", "fcall")))
    await r.execute_command("MEMORY", "PURGE")
    print(
        json.dumps(
            {
                "commands": sum(stats.values()) - scripts,
                "dead_commands": {c: stats.get(c, 0) for c in DEAD_COMMANDS},
                "script_usec": usec,
                "keys": await r.dbsize(),
                "dlq": await r.zcard(q.keys.extra("wh:dlq")),
                "used_memory": int((await r.info("memory"))["used_memory"]),
            }
        ),
        flush=True,
    )
    await r.aclose()
    await q.close()


# ---------------------------------------------------------------------------- parent
def _history_cases(
    url: str, n: int, cases: list[tuple[str, str, int | None]], results: dict[str, Any]
) -> None:
    """The delivery phase, then ``webhooks_done`` alone, of each history case."""
    print(
        f"{'case':<12} {'records':>8} {'rec MB':>9} {'B/rec':>7} {'idx MB':>8} "
        f"{'used MB':>9} {'cmd/dlv':>8} {'trim':>6} {'µs/dlv':>7} {'dlv/s':>7}"
    )
    for name, src, hmax in cases:
        results[name] = _case(url, src, n, hmax)
        print(_row(name, n, results[name]), flush=True)
    print(
        "rec MB: the records' MEMORY USAGE summed; used MB: used_memory after the run "
        "(outbox trimmed); cmd/dlv: Redis commands per delivery in the delivery phase "
        f"(scripts' own included); trim: of them {', '.join(TRIM_COMMANDS)} (the "
        "trim's, and a few of the claim loop's); µs/dlv: the scripts' time in Redis"
    )
    print(f"\nwebhooks_done alone, {n:,} results once the index is full (200 a call):")
    print(f"{'case':<12} {'cmd/dlv':>8} {'trim':>6} {'µs/dlv':>7}  {'left':>7}")
    for name, src, hmax in cases:
        got = _case(url, src, n, hmax, "script")
        results[f"script {name}"] = got
        trim = sum(got["trim_commands"].values())
        print(
            f"{name:<12} {got['commands'] / n:>8.2f} {trim / n:>6.2f} "
            f"{got['script_usec'] / n:>7.2f}  {got['records']:>7,}",
            flush=True,
        )


def _case(
    redis_url: str,
    src: str,
    n: int,
    history_max: int | None,
    mode: str = "child",
    dead_fill: int = 10_000,
) -> dict[str, Any]:
    import redis

    redis.Redis.from_url(redis_url).flushall()
    cmd = [sys.executable, __file__, f"--{mode}", "--redis", redis_url, "--src", src]
    cmd += ["-n", str(n), "--dead-fill", str(dead_fill)]
    if history_max:
        cmd += ["--history-max", str(history_max)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=3600)
    got: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return got


def _row(name: str, n: int, r: dict[str, Any]) -> str:
    per = r["record_bytes"] / r["records"] if r["records"] else 0
    trim = sum(r["trim_commands"].values())
    return (
        f"{name:<12} {r['records']:>8,} {r['record_bytes'] / 1e6:>9.2f} {per:>7.0f} "
        f"{r['index_bytes'] / 1e6:>8.2f} {r['used_memory'] / 1e6:>9.2f} "
        f"{r['commands'] / n:>8.2f} {trim / n:>6.2f} {r['script_usec'] / n:>7.1f} "
        f"{n / r['elapsed_s']:>7,.0f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=30_000, help="deliveries per case")
    ap.add_argument("--history-max", type=int, nargs="*", help="cases (default: 10000)")
    ap.add_argument("--baseline-src", help="a src folder of the code before the bound")
    ap.add_argument("--port", type=int, default=0, help="the private redis-server's port")
    ap.add_argument("--json", help="write the figures to this file")
    ap.add_argument("--dead-max", type=int, default=10_000, help="the DLQ bound's case")
    ap.add_argument("--dead-baseline-src", help="a src folder of the code before the DLQ bound")
    ap.add_argument("--dead-only", action="store_true", help="the DLQ bound's cases only")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--script", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--dead", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--dead-fill", type=int, default=10_000, help=argparse.SUPPRESS)
    ap.add_argument("--redis", help=argparse.SUPPRESS)
    ap.add_argument("--src", default=str(ROOT / "src"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child or args.script or args.dead:
        args.history_max = args.history_max[0] if args.history_max else None
        child = _dead_child if args.dead else _script_child if args.script else _child
        asyncio.run(child(args))
        return

    from _redis import RedisServer

    server = RedisServer(port=args.port) if args.port else RedisServer()
    server.start()
    n = args.n
    cases: list[tuple[str, str, int | None]] = []
    if args.baseline_src:
        cases.append(("baseline", args.baseline_src, None))
    cases += [(f"max={m:,}", str(ROOT / "src"), m) for m in args.history_max or [10_000]]
    # Above every case's deliveries (the script part records 10,000 more first).
    cases.append(("unbounded", str(ROOT / "src"), n + 10_000))
    results: dict[str, Any] = {}
    try:
        print(f"{n:,} deliveries to one endpoint, redis-server on port {server.port}")
        if not args.dead_only:
            _history_cases(server.url, n, cases, results)
        dm = args.dead_max
        print(
            f"\nwebhooks_done alone, {n:,} dead deliveries to one endpoint once its DLQ "
            f"holds {dm:,} (200 a call):"
        )
        print(
            f"{'case':<16} {'cmd/dead':>8} {'bound':>6} {'µs/dead':>8} {'dlq':>8} {'keys':>8} "
            f"{'used MB':>8}"
        )
        dead_cases = [(f"dead_max={dm:,}", str(ROOT / "src"), dm), ("dead_max=None", "", 0)]
        if args.dead_baseline_src:
            dead_cases.append(("before", args.dead_baseline_src, -1))
        for name, src, dmax in dead_cases:
            got = _case(server.url, src or str(ROOT / "src"), n, dmax or None, "dead", dm)
            results[f"dead {name}"] = got
            bound = sum(got["dead_commands"].values())
            print(
                f"{name:<16} {got['commands'] / n:>8.2f} {bound / n:>6.2f} "
                f"{got['script_usec'] / n:>8.2f} {got['dlq']:>8,} {got['keys']:>8,} "
                f"{got['used_memory'] / 1e6:>8.1f}",
                flush=True,
            )
    finally:
        server.close()
    print("left: keys in Redis after the run (the records and the index)")
    print(f"bound: of cmd/dead, {', '.join(DEAD_COMMANDS)} (the bound's, and the history trim's)")
    if args.json:
        Path(args.json).write_text(json.dumps({"n": n, "cases": results}, indent=2))


if __name__ == "__main__":
    main()
