"""Issue 17: tenants at their concurrency caps under worker SIGKILL and Redis restart.

Three workers (``--tenancy 1``: multi-tenancy on the queue; 4 slots each, lease 1.5 s,
sweep every 250 ms) share a queue between four tenants: ``cap2`` (max_concurrency 2),
``cap3`` (max_concurrency 3, weight 2), ``rated`` (max_concurrency 2, at most 20 starts
per 500 ms) and ``free`` (no cap). Every job runs 10-40 ms; some runs raise (attempts 5,
fixed 20 ms backoff). While the capped tenants are at their caps, the scenario SIGKILLs
busy workers (a replacement is started each time) and once SIGKILLs redis-server and
restarts it from its AOF (``appendfsync always``).

Checks, from the workers' run log (start and end of every run, written outside Redis;
a run cut by a SIGKILL ends at the kill, so Redis held its slot at least that long):

* no capped tenant ever had more runs at once than its cap, nor (sampled every 5 ms)
  more jobs in its set of running jobs in Redis; and each reached its cap, seen in the
  runs or, when a loaded machine kept its runs from overlapping in full, in that set;
* after the restart the state sets match the records and every tenant's parked job is
  in its lane; nothing acknowledged is lost;
* at the end every job completed once (no duplicate recorded completion), and every
  count returned to 0: queued, running, in lanes, tickets, and the usage the registry
  reports.

While the faults run, a thread damages two tenants' counts of unfinished jobs by hand
(``n`` = "garbage") and recounts both at once in small steps (``tn_recount.lua``, 5 keys
each, 40 ms apart), again and again, through the kills and the restart, retrying a step
Redis could not answer, beside the workers' own copies of the quotas (which may finish a
pass). Checked: every pass ends, and right after it, in one atomic read, the count
equals the tenant's jobs marked counted.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Iterable
from typing import Any

from kitium_queue.features.tenancy import TenantRegistry
from kitium_queue.features.tenancy import keys as tk
from kitium_queue.keys import QueueKeys

from ..core import Context, Result, scenario
from ..infra import Run
from ..ledger import merge, snapshot
from ._common import (
    apply_faults,
    closing_checks,
    live_parked_check,
    stats,
    stop_fleet,
    tracebacks,
    wait_final,
)

QUEUE = "tenants"
TENANTS: dict[str, dict[str, Any]] = {
    "cap2": {"quota": {"max_concurrency": 2}},
    "cap3": {"quota": {"max_concurrency": 3}, "weight": 2},
    "rated": {"quota": {"max_concurrency": 2, "rate_limit": {"max": 20, "duration": 500}}},
    "free": {},
}
CAPS = {"cap2": 2, "cap3": 3, "rated": 2}


def _peak(runs: Iterable[Run]) -> tuple[int, float]:
    """Most runs open at once (an end at the same instant as a start closes first), and
    for how long in all (seconds) that many were open."""
    rs = list(runs)
    edges = sorted([(r.start, 1) for r in rs] + [(r.end or r.start, -1) for r in rs],
                   key=lambda e: (e[0], e[1]))
    now = peak = 0
    since, held = 0.0, 0.0
    for t, d in edges:
        if now == peak and peak:
            held += t - since
        now += d
        if now > peak:
            peak, held = now, 0.0
        since = t
    return peak, held


def _tenants(url: str, prefix: str, create: bool) -> dict[str, Any]:
    """Create the tenants, or read their usage (summed over the queues)."""

    async def go() -> dict[str, Any]:
        async with TenantRegistry(redis=url, prefix=prefix) as reg:
            if create:
                for tid, cfg in TENANTS.items():
                    await reg.create_tenant({"tenant_id": tid, **cfg})
                return {}
            return {t: (await reg.get_tenant_usage(t)).as_dict() for t in TENANTS}

    return asyncio.run(go())


#: Tenants whose count is damaged once the workers run, and recounted in small steps.
DAMAGED = ("free", "cap3")

#: In one atomic step: the jobs of tenant ARGV[2] marked counted, and its count n.
_COUNTED = """
local cursor, n = '0', 0
repeat
  local r = redis.call('SCAN', cursor, 'MATCH', ARGV[1], 'COUNT', 1000)
  cursor = r[1]
  for _, k in ipairs(r[2]) do
    local f = redis.pcall('HMGET', k, 'tn', 'tq')
    if type(f) == 'table' and not f.err and f[1] == ARGV[2] and f[2] then n = n + 1 end
  end
until cursor == '0'
return { n, redis.call('HGET', KEYS[1], 'n') or false }
"""


def _recounts(url: str, prefix: str, stop: threading.Event, out: list[Any]) -> None:
    """Until ``stop``: damage the counts of ``DAMAGED`` and recount them at once, in
    steps of 5 keys 40 ms apart, retrying a step Redis could not answer; right after
    each pass, read the count and the jobs marked counted in one atomic step."""
    from kitium_queue import JobQueue
    from kitium_queue.connection import TRANSIENT_ERRORS
    from kitium_queue.features.tenancy.install import TN_RECOUNT, run_script

    async def retried(errors: list[int], call: Any) -> Any:
        while True:
            try:
                return await call()
            except TRANSIENT_ERRORS as exc:
                errors[0] += 1
                if errors[0] > 2000:
                    raise RuntimeError("Redis gone for good") from exc
                await asyncio.sleep(0.05)

    async def one(q: JobQueue, client: Any, t: str) -> dict[str, Any]:
        key, steps, errors = tk.tenant(q.keys, t), 0, [0]
        await retried(errors, lambda: client.hset(key, "n", "garbage"))
        while True:
            reply = await retried(
                errors, lambda: run_script(client, TN_RECOUNT, [key], [t, 5, 1, "chaos"])
            )
            steps += 1
            if reply[0] != b"more":
                break
            await asyncio.sleep(0.04)
        got = await retried(
            errors, lambda: client.eval(_COUNTED, 1, key, q.keys.job("*"), t)
        )
        return {"tenant": t, "status": reply[0].decode(), "steps": steps,
                "retried": errors[0], "marked": int(got[0]),
                "n": got[1].decode() if got[1] else None}

    async def go() -> None:
        q = JobQueue(QUEUE, redis=url, prefix=prefix)
        client = await q.client()
        while not stop.is_set():
            out.extend(await asyncio.gather(*(one(q, client, t) for t in DAMAGED)))
            await asyncio.sleep(0.2)
        await q.close()

    try:
        asyncio.run(go())
    except Exception as exc:  # reported by the scenario's checks
        out.append({"error": f"{type(exc).__name__}: {exc}"})


def _sample_running(url: str, keys: QueueKeys, stop: threading.Event,
                    out: dict[str, int]) -> None:
    """Until ``stop``: every 5 ms, the size of each capped tenant's set of running jobs
    (the slots Redis holds for it, from claim to outcome), keeping the largest seen.
    Calls Redis could not answer (its restart) are skipped."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=2)
    try:
        while not stop.is_set():
            try:
                pipe = client.pipeline(transaction=False)
                for t in CAPS:
                    pipe.scard(tk.running(keys, t))
                for t, n in zip(CAPS, pipe.execute(), strict=True):
                    out[t] = max(out.get(t, 0), int(n))
            except redis.RedisError:
                time.sleep(0.05)
            time.sleep(0.005)
    finally:
        client.close()


def _leftovers(client: Any, keys: QueueKeys) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for t in TENANTS:
        left = {
            "n": int(client.hget(tk.tenant(keys, t), "n") or 0),
            "running": client.scard(tk.running(keys, t)),
            "tickets": client.scard(tk.tickets(keys, t)),
            "lane": client.zcard(tk.lane(keys, t)),
        }
        if any(left.values()):
            out[t] = left
    return out


@scenario("tenancy", 17, "Tenants at their concurrency caps under worker SIGKILL and "
                         "Redis restart")
def run(ctx: Context, res: Result) -> None:
    lease_ms, sweep_ms = 1500, 250
    per_tenant = ctx.pick(100, 600)
    faults = ctx.pick(["kill", "kill", "restart", "kill"], ["kill", "restart"] * 4 + ["kill"])
    rnd = random.Random(17)
    srv = ctx.redis(appendfsync="always")
    prefix = ctx.prefix()
    keys = QueueKeys(QUEUE, prefix)
    client = ctx.client(srv.url)
    _tenants(srv.url, prefix, create=True)
    producer = ctx.producer(srv.url, QUEUE, prefix)
    TenantRegistry.enable(producer.queue)
    fleet = ctx.fleet(srv.url, QUEUE, prefix, tenancy=1, concurrency=4,
                      lock_duration=lease_ms, stalled_interval=sweep_ms, max_stalled=1000)
    workers = [fleet.start() for _ in range(3)]

    tenant_of: dict[str, str] = {}
    jobs = []
    for j in range(per_tenant):
        for t in TENANTS:
            jid = f"{t}-{j}"
            tenant_of[jid] = t
            fail_on = [a for a in range(1, 4) if rnd.random() < 0.1]
            jobs.append(("work", {"ms": rnd.randint(10, 40), "fail_on": fail_on},
                         {"job_id": jid, "tenant_id": t, "attempts": 5,
                          "backoff": {"type": "fixed", "delay": 20},
                          "remove_on_complete": False}))
    for i in range(0, len(jobs), 500):
        ctx.ledger.record(producer.add_jobs(jobs[i:i + 500]), tag="tenant")
    for w in workers:
        w.wait_ready()
    recounts: list[Any] = []
    stop = threading.Event()
    recounter = threading.Thread(target=_recounts, args=(srv.url, prefix, stop, recounts))
    recounter.start()
    held: dict[str, int] = {}
    sampled = threading.Event()
    sampler = threading.Thread(target=_sample_running, args=(srv.url, keys, sampled, held))
    sampler.start()

    done_faults = apply_faults(
        ctx, res, srv, client, keys, fleet, faults, len(jobs) // (2 * len(faults) + 2), rnd,
        lambda: live_parked_check(client, keys, ctx.ledger), wait_ready=False)
    if done_faults.live_checks:
        res.checker("right after each Redis restart", merge(done_faults.live_checks))
    stop.set()
    recounter.join(timeout=300)
    res.expect("every damaged count was recounted, in steps, through the faults",
               not recounter.is_alive() and recounts
               and all(r.get("status") == "ok" for r in recounts), recounts[-4:])
    wrong = [r for r in recounts if str(r.get("marked")) != r.get("n")]
    res.expect("right after each recount, the count equals its tenant's jobs marked counted",
               not wrong, wrong[:4])
    took = wait_final(ctx, client, keys, ctx.pick(120, 400))
    sampled.set()
    sampler.join(timeout=30)
    closing_checks(ctx, res, client, keys, fleet)
    runs = fleet.runs()  # a run cut by a SIGKILL ends at the kill
    widths = {t: _peak(r for jid, rs in runs.items() if tenant_of.get(jid) == t for r in rs)
              for t in TENANTS}
    peaks = {t: w[0] for t, w in widths.items()}
    over = {t: (peaks[t], cap) for t, cap in CAPS.items() if peaks[t] > cap}
    res.expect("no tenant ever ran more jobs at once than its max_concurrency", not over,
               over)
    res.expect("Redis never held more running jobs of a tenant than its max_concurrency",
               all(held.get(t, 0) <= c for t, c in CAPS.items()), held)
    # Reaching the cap is shown by the runs (three processors of cap3 at once) or, when
    # a loaded machine kept the runs of one tenant from overlapping in full, by the
    # slots Redis held for it at once (claim to outcome).
    reached = {t: max(peaks[t], held.get(t, 0)) for t in CAPS}
    res.expect("each capped tenant reached its cap",
               all(reached[t] == c for t, c in CAPS.items()), {"runs": peaks, "held": held})
    res.expect("the uncapped tenant ran wider than the caps", peaks["free"] > 3, peaks)
    snap = snapshot(client, keys)
    done = sum(1 for j in ctx.ledger.ids() if snap.state(j) == "completed")
    res.expect("every job completed", done == len(ctx.ledger), f"{done}/{len(ctx.ledger)}")
    left = _leftovers(client, keys)
    res.expect("every tenant's counts back to 0 (unfinished, running, lane, tickets)",
               not left, left)
    usage = _tenants(srv.url, prefix, create=False)
    busy = {t: u for t, u in usage.items() if u["queued"] or u["active"] or u["held"]}
    res.expect("the registry reports no queued, running or held job", not busy, busy)
    res.expect("every job's completion counted for its tenant",
               sum(u["completed"] for u in usage.values()) == len(ctx.ledger),
               {t: u["completed"] for t, u in usage.items()})
    res.expect("the kills interrupted running jobs", done_faults.interrupted > 0,
               done_faults.interrupted)
    res.figures.update({
        "tenants": list(TENANTS),
        "jobs": len(ctx.ledger),
        "peak_running_per_tenant": peaks,
        "time_at_peak_s": {t: round(w[1], 3) for t, w in widths.items()},
        "peak_held_by_redis": held,
        "caps": CAPS,
        "kills": len(done_faults.killed),
        "restarts": len(done_faults.downtimes),
        "redis_downtime_s": stats(done_faults.downtimes),
        "interrupted_jobs": done_faults.interrupted,
        "runs": sum(len(rs) for rs in runs.values()),
        "drain_after_last_fault_s": round(took, 2),
        "lease_ms": lease_ms,
        "recounts": len(recounts),
        "recount_steps": sum(r.get("steps", 0) for r in recounts),
        "recounts_across_an_outage": sum(1 for r in recounts if r.get("retried")),
    })
    tb = tracebacks(fleet)
    res.expect("no traceback in worker logs", not tb, tb[:2])
    stop_fleet(res, fleet)
