"""Helpers shared by the scenarios: waiting for the end of a run, the closing checks."""

from __future__ import annotations

import random
import statistics
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis

from kitium_queue import SyncJobQueue
from kitium_queue.keys import QueueKeys

from ..core import Context, Result
from ..infra import Fleet, Timeout, wait_for
from ..ledger import Check, Ledger, Snapshot, check, duplicates, snapshot, stream

FINAL = ("completed", "dlq", "failed")
T = TypeVar("T")


def _default_job(rnd: random.Random, n: int) -> tuple[str, Any, dict[str, Any]]:
    # A unique job_id: after a Redis rollback an id can never name a different job.
    return ("work", {"ms": rnd.randint(10, 60)}, {"job_id": f"p{n}", "remove_on_complete": False})


class Producer(threading.Thread):
    """Adds a batch of jobs every ``period`` s and records the acknowledged ids."""

    def __init__(self, queue: SyncJobQueue, ledger: Ledger, *, batch: int = 10,
                 period: float = 0.05, seed: int = 5,
                 job: Callable[[random.Random, int], tuple[str, Any, dict[str, Any]]]
                 | None = None) -> None:
        super().__init__(name="chaos-producer", daemon=True)
        self.queue = queue
        self.ledger = ledger
        self.batch = batch
        self.period = period
        self.rnd = random.Random(seed)
        self.stop_event = threading.Event()
        self.n = 0
        self.failures = 0
        self.errors: set[str] = set()
        self.job = job or _default_job

    def run(self) -> None:
        while not self.stop_event.is_set():
            jobs = []
            for _ in range(self.batch):
                self.n += 1
                jobs.append(self.job(self.rnd, self.n))
            try:
                ids = self.queue.add_jobs(jobs)
            except Exception as exc:
                self.failures += 1
                self.errors.add(type(exc).__name__)
                self.refused(jobs, exc)
            else:
                self.ledger.record(ids, tag="load")
            self.stop_event.wait(self.period)

    def refused(self, jobs: list[tuple[str, Any, dict[str, Any]]], exc: Exception) -> None:
        """Called with the jobs of a call that raised (a subclass keeps what it needs)."""

    def stop(self) -> None:
        self.stop_event.set()
        if self.is_alive():
            self.join(timeout=30)


def all_final(client: redis.Redis, keys: QueueKeys, ids: Iterable[str]) -> bool:
    ids = list(ids)
    if not ids:
        return True
    pipe = client.pipeline(transaction=False)
    for jid in ids:
        pipe.hget(keys.job(jid), "st")
    return all(st is not None and st.decode() in FINAL for st in pipe.execute())


def wait_final(
    ctx: Context,
    client: redis.Redis,
    keys: QueueKeys,
    timeout: float,
    *,
    ids: Iterable[str] | None = None,
    fleet: Fleet | None = None,
    keep_alive: int = 0,
) -> float:
    """Poll until every (ledger) id is finished; with ``fleet``/``keep_alive``, restart
    dead workers meanwhile (a process manager). Returns the seconds it took."""
    want = list(ids) if ids is not None else ctx.ledger.ids()
    t0 = time.monotonic()
    deadline = t0 + timeout
    while True:
        if fleet is not None and keep_alive:
            while len(fleet.live()) < keep_alive:
                fleet.start()
        try:
            if all_final(client, keys, want):
                return time.monotonic() - t0
        except redis.ConnectionError:
            pass
        if time.monotonic() > deadline:
            pending = [j for j in want if _state(client, keys, j) not in FINAL]
            raise Timeout(
                f"{len(pending)} job(s) not finished after {timeout:.0f} s, e.g. "
                f"{[(j, _state(client, keys, j)) for j in pending[:5]]}"
            )
        time.sleep(0.05)


def _state(client: redis.Redis, keys: QueueKeys, jid: str) -> str | None:
    st = client.hget(keys.job(jid), "st")
    return st.decode() if st else None


def retrying(fn: Callable[[], T], timeout: float) -> T:
    """``fn()``, retried on connection errors until ``timeout`` (Redis coming back)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except (redis.ConnectionError, redis.TimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def stats(values: Iterable[float], digits: int = 3) -> dict[str, Any]:
    v = sorted(values)
    if not v:
        return {"n": 0}
    return {
        "n": len(v),
        "min": round(v[0], digits),
        "median": round(statistics.median(v), digits),
        "max": round(v[-1], digits),
    }


def closing_checks(
    ctx: Context,
    res: Result,
    client: redis.Redis,
    keys: QueueKeys,
    fleet: Fleet | None,
    *,
    label: str = "final",
    ignore: Iterable[str] = (),
    ids: Iterable[str] | None = None,
    ledger: Ledger | None = None,
) -> tuple[Snapshot, dict[str, Any]]:
    """Final ledger + consistency check and the duplicate figures (stored in ``res``).
    ``ledger``: the enqueues of this queue (default: the scenario's ledger)."""
    snap = snapshot(client, keys)
    res.checker(label, check(snap, ledger or ctx.ledger, final=True, ignore=ignore))
    events = stream(client, keys.events)
    lines = fleet.lines() if fleet is not None else []
    dup = duplicates(events, lines, ids)
    res.figures.setdefault("duplicates", {})[label] = dup
    res.expect(
        f"{label}: no job recorded as completed twice",
        dup["duplicate_recorded_completions"] == 0,
        dup["duplicate_recorded_examples"],
    )
    res.expect(
        f"{label}: no completed job claimed again",
        dup["claims_after_completion"] == 0,
        dup["claims_after_completion_examples"],
    )
    return snap, dup


def stop_fleet(res: Result, fleet: Fleet, *, label: str = "workers",
               allow_self_deaths: bool = False) -> None:
    """SIGTERM every live worker: each must exit 0; unless ``allow_self_deaths``, none
    may have died without being killed by the scenario."""
    self_died = [f"{p.name} (exit {p.popen.returncode})" for p in fleet.procs
                 if not p.alive() and not p.stopped_by_scenario]
    live = fleet.live()
    codes = fleet.stop_all()
    if not allow_self_deaths:
        res.expect(f"{label}: no worker exited on its own", not self_died, self_died)
    bad = {p.name: codes[p.name] for p in live if codes[p.name] != 0}
    res.expect(f"{label}: exit code 0 after SIGTERM", not bad, bad)


def tracebacks(fleet: Fleet) -> list[str]:
    """Unexpected tracebacks in worker stderr (a crash of a loop or task)."""
    out = []
    for p in fleet.procs:
        text = p.stderr()
        for marker in ("Traceback (most recent call last)", "Task exception was never retrieved"):
            if marker in text:
                i = text.index(marker)
                out.append(f"{p.name}: {text[max(0, i - 300) : i + 1500]}")
                break
    return out


@dataclass
class Faults:
    """What ``apply_faults`` did: SIGKILL times per pid, the live checks after each
    restart, the Redis downtimes, and how many running jobs the kills interrupted."""

    killed: dict[int, float] = field(default_factory=dict)
    live_checks: list[Any] = field(default_factory=list)
    downtimes: list[float] = field(default_factory=list)
    interrupted: int = 0


def apply_faults(
    ctx: Context, res: Result, srv: Any, client: redis.Redis, keys: QueueKeys, fleet: Fleet,
    faults: list[str], step: int, rnd: random.Random, live_check: Callable[[], Any],
    *, progress_timeout: float = 60, wait_ready: bool = True,
) -> Faults:
    """Each of ``faults`` once ``step`` more jobs completed: ``kill`` SIGKILLs a busy
    worker (a replacement is started, and waited for unless ``wait_ready`` is false: on
    a loaded machine a worker takes seconds to start, while which a short queue may
    drain before its next fault), ``restart`` SIGKILLs redis-server and restarts it,
    then runs ``live_check`` and expects every worker to have survived."""
    out = Faults()
    for k, fault in enumerate(faults):
        target = step * (k + 1)
        retrying(lambda t=target: wait_for(
            lambda: client.zcard(keys.completed) >= t, progress_timeout,
            what="progress before the fault"), 20)
        if fault == "kill":
            # Up to 60 s: on a loaded machine every live worker may still be starting.
            busy = wait_for(lambda: [w for w in fleet.live() if w.running_jobs()], 60,
                            what="a busy worker to kill")
            victim = rnd.choice(busy)
            out.interrupted += len(victim.running_jobs())
            out.killed[victim.pid] = victim.kill()
            replacement = fleet.start()
            if wait_ready:
                replacement.wait_ready()
        else:
            for w in fleet.live():  # a worker's start is not a restart's subject
                w.wait_ready()
            t_kill = time.time()
            srv.kill()
            time.sleep(ctx.pick(0.5, rnd.uniform(0.3, 1.5)))
            srv.restart()
            out.downtimes.append(time.time() - t_kill)
            out.live_checks.append(retrying(live_check, 10))
            dead = [w.name for w in fleet.procs if not w.alive() and w.pid not in out.killed]
            res.expect(f"restart {k + 1}: every worker survived the outage", not dead, dead)
    return out


# Pending (parked) jobs among ARGV whose record names a blocker they are not parked
# behind: a parked job must be in the set of the blocker its record names.
_NOT_IN_BLOCKER_LUA = """
local out = {}
for i = 1, #ARGV do
  local f = redis.call('HMGET', KEYS[1] .. 'job:' .. ARGV[i], 'st', 'pk')
  if f[1] == 'pending' and not (f[2] and redis.call('ZSCORE', KEYS[1] .. 'parked:' .. f[2],
      ARGV[i])) then
    out[#out + 1] = ARGV[i]
  end
end
return out
"""


def live_parked_check(client: redis.Redis, keys: QueueKeys, ledger: Ledger) -> Check:
    """The ledger/consistency check while workers run, for a queue whose features park
    jobs: a parked job (``st`` pending) is in no state set, so instead each must be in
    the set of its blocker (read atomically per call; a job that left it meanwhile is
    covered by the final check)."""
    snap = snapshot(client, keys)
    pending = [j for j in snap.jobs if snap.state(j) == "pending"]
    res = check(snap, ledger, final=False, ignore=pending)
    for i in range(0, len(pending), 500):
        for jid in client.eval(_NOT_IN_BLOCKER_LUA, 1, keys.base, *pending[i:i + 500]):
            res.add("pending_not_in_blocker", jid.decode())
    return res
