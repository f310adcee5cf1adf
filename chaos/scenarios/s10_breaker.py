"""Issue 15: a circuit breaker that holds jobs, under worker SIGKILL and Redis restart.

Two workers (``--breakers``, lease 2 s) serve ``dep`` jobs bound to breaker ``dep``
(threshold 50 % of at least 10, open 1.5 s, 2 probes) and unbound ``work`` jobs; the
dependency's health is a Redis key the scenario flips. Redis runs with
``appendfsync always``.

1. The dependency is down: the breaker opens; later ``dep`` jobs are held (parked,
   ``pending``, no attempt spent) while ``work`` jobs run.
2. A worker is SIGKILLed while the breaker is open (a replacement starts): the held
   jobs stay held, none lost.
3. The dependency hangs and the breaker is forced to half-open: the probes start and
   hang; every worker running a probe is SIGKILLed, the dependency comes back, and
   Redis is SIGKILLed and restarted from its AOF. Replacements start.
4. The probes' leases expire, recovery gives their places back, the probes run again
   and succeed, the breaker closes and every held job completes with one attempt.

Checks: the breaker never stays half-open (it closes within a bound after the faults),
at most ``probes`` bound jobs run between the forced half-open and the faults, every
held job was ``pending`` with 0 attempts while held and completes, and the ledger's
final check (nothing lost, no duplicate completion).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from kitium_queue import CircuitBreakerManager, JobQueue
from kitium_queue.keys import QueueKeys

from ..core import Context, Result, scenario
from ..infra import Timeout, wait_for
from ._common import closing_checks, retrying, stop_fleet, tracebacks, wait_final

QUEUE = "breaker"
PROBES = 2


def _with_manager(url: str, prefix: str,
                  fn: Callable[[CircuitBreakerManager], Awaitable[Any]]) -> Any:
    async def go() -> Any:
        q = JobQueue(QUEUE, redis=url, prefix=prefix)
        try:
            return await fn(CircuitBreakerManager(q, events=False))
        finally:
            await q.close()

    return asyncio.run(go())


@scenario("breaker", 15, "Circuit breaker holding jobs: worker SIGKILL during a probe, "
                         "Redis restart")
def run(ctx: Context, res: Result) -> None:
    lease_ms = 2000
    n_held = ctx.pick(300, 3000)
    srv = ctx.redis(appendfsync="always")
    client = ctx.client(srv.url)
    prefix = ctx.prefix()
    keys = QueueKeys(QUEUE, prefix)
    cb_key = keys.extra("cb:b:dep")
    dep_key = f"{prefix}:dep"
    ledger = ctx.ledger

    def state() -> str:
        raw = retrying(lambda: client.hget(cb_key, "st"), 15)
        return raw.decode() if raw else "missing"

    _with_manager(srv.url, prefix, lambda m: m.create_breaker({
        "id": "dep", "job_name": "dep", "timeout": 1500, "half_open_probes": PROBES,
        "probe_timeout": 600_000, "failure_threshold": {"percentage": 50, "min_requests": 10},
    }))
    client.set(dep_key, "down")
    fleet = ctx.fleet(srv.url, QUEUE, prefix, concurrency=4, lock_duration=lease_ms,
                      stalled_interval=200, max_stalled=10, breakers=1)
    for w in (fleet.start(), fleet.start()):
        w.wait_ready()
    producer = ctx.producer(srv.url, QUEUE, prefix)
    keep = {"remove_on_complete": False}  # the checks read every record at the end

    # 1. Open under failures; held jobs wait while other jobs run.
    first = ledger.record(producer.add_jobs([("dep", {}, keep) for _ in range(40)]), expect="final",
                          tag="first")
    wait_for(lambda: state() == "open", 20, what="the breaker to open")
    held = ledger.record(producer.add_jobs([("dep", {"i": i}, keep) for i in range(n_held)]),
                         tag="held")
    work = ledger.record(producer.add_jobs([("work", {}, keep) for _ in range(100)]), tag="work")
    wait_final(ctx, client, keys, 30, ids=work)

    def held_ok() -> tuple[int, int]:
        pipe = client.pipeline(transaction=False)
        for jid in held:
            pipe.hmget(keys.job(jid), "st", "a")
        rows = retrying(pipe.execute, 15)
        pending = sum(1 for st, _ in rows if st == b"pending")
        spent = sum(1 for _, a in rows if int(a or 0) > 0)
        return pending, spent

    # The "work" jobs all completed meanwhile (wait_final above).
    pending, spent = held_ok()
    res.expect("while open: every held job pending, no attempt spent",
               (pending, spent) == (n_held, 0), {"pending": pending, "attempts_spent": spent})

    # 2. SIGKILL a worker while open.
    fleet.live()[0].kill()
    fleet.start().wait_ready()
    time.sleep(0.5)
    pending, spent = held_ok()
    res.expect("after a worker SIGKILL while open: held jobs still pending, no attempt",
               (pending, spent) == (n_held, 0), {"pending": pending, "attempts_spent": spent})

    # 3. Probes start and hang; their workers are SIGKILLed; Redis restarts.
    client.set(dep_key, "hang")
    _with_manager(srv.url, prefix, lambda m: m.force_open("dep", 300))
    # Counted from here: a half-open phase of the breaker's own 1.5 s timeout may have
    # admitted its probes just before force_open started a new cycle.
    t_half = time.time()
    try:
        wait_for(lambda: _probe_starts(fleet, first + held, t_half) >= PROBES, 20,
                 what="the probes to start")
    except Timeout:
        res.expect("the probes started", False, {"state": state()})
        raise
    time.sleep(0.5)  # more claims and timer rounds: still only the probes
    probe_runs = _probe_starts(fleet, first + held, t_half)
    res.expect(f"half-open: at most {PROBES} bound jobs ran", probe_runs == PROBES,
               {"bound_runs": probe_runs})
    # Read as a user reads it (get_state): the move from open to half-open is made by
    # the first claim, call or read after the timeout, and the stored field may still say
    # open when no claim came since (e.g. the probes were admitted by the breaker's own
    # timeout ending just before force_open, and the workers sit idle).
    seen = str(_with_manager(srv.url, prefix, lambda m: m.get_state("dep")))
    res.expect("half-open while the probes hang", seen == "half-open", {"state": seen})
    bound = set(first + held)
    probe_pids = {ln.pid for ln in fleet.lines()
                  if ln.event == "start" and ln.t >= t_half and ln.job_id in bound}
    killed = 0
    for w in fleet.live():
        if w.pid in probe_pids:
            w.kill()
            killed += 1
    client.set(dep_key, "up")
    srv.kill()
    time.sleep(0.5)
    srv.restart()
    t_back = time.time()
    while len(fleet.live()) < 2:
        fleet.start().wait_ready()

    # 4. It closes and everything drains.
    try:
        wait_for(lambda: state() == "closed", 30, what="the breaker to close")
        closed_after = time.time() - t_back
    except Timeout:
        closed_after = float("inf")
    res.expect("the breaker closed after the probe's worker died and Redis restarted",
               closed_after < 30, {"state": state()})
    drain_s = wait_final(ctx, client, keys, ctx.pick(60, 180), ids=ledger.ids())
    done = [st for st in retrying(lambda: [client.hget(keys.job(j), "st") for j in held], 15)]
    res.expect("every held job completed", all(st == b"completed" for st in done),
               {"not_completed": sum(1 for st in done if st != b"completed")})
    res.figures.update({
        "held_jobs": n_held, "first_phase_jobs": len(first), "probe_workers_killed": killed,
        "closed_after_restart_s": round(closed_after, 3), "drain_s": round(drain_s, 3),
        "probe_runs_while_half_open": probe_runs,
    })
    res.expect("no traceback in worker stderr", not tracebacks(fleet), tracebacks(fleet)[:2])
    closing_checks(ctx, res, client, keys, fleet)
    stop_fleet(res, fleet, allow_self_deaths=False)


def _probe_starts(fleet: Any, held: list[str], since: float) -> int:
    ids = set(held)
    return sum(1 for ln in fleet.lines()
               if ln.event == "start" and ln.t >= since and ln.job_id in ids)
