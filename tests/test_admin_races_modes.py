"""Operator calls racing workers in the other run modes: a seeded, bounded race probe.

``tests/test_admin_races.py`` races operator calls against ``async def`` processors;
this file does the same for plain ``def`` processors (threads), process mode (children
with hard timeouts) and batch processors (``process_batch``), with FIFO groups and
concurrency caps (per key and queue-wide). Per configuration (a few seconds each), two
in-process workers and one worker process (``run_worker``: stopped with SIGTERM once,
restarted, then killed with SIGKILL) drain jobs whose processor completes, raises
(retried), raises ``RetryLater`` or ``NonRetryableError``, runs past its ``timeout``,
and writes progress and log lines. Two operator loops fire ``cancel_job`` /
``remove_job`` / ``retry_job`` / ``promote_job`` / ``promote_delayed`` / ``bulk_retry``
/ ``replay_dlq`` / ``recover_stalled`` at running, just-ended, any and unknown ids; a
third pauses and resumes the queue and drains it (``drain``, also while paused). At the
end, with the workers still running and jobs active, ``clear(force=True)``.

Checked (the state view during the run too):

* every job id in one state set, the one its record names; no record in no set
  (``test_fuzz.state_view``); ``get_stats`` counts the sets;
* operator calls raise only ``KitiumQueueError`` subclasses, the per-job calls only
  ``JobNotFoundError`` / ``JobStateError`` / ``JobActiveError`` naming the job; what
  ``retry_job`` / ``bulk_retry`` / ``replay_dlq`` reported moving equals the stream's
  ``job-waiting from=retry`` events; the ``queue-drained`` events count what ``drain``
  returned, which is the number of jobs gone without a removal;
* a job not removed or drained ends completed or dead-lettered; a removed or drained job
  has no record and is never claimed after the call returned; a job ``cancel_job``
  answered ``"cancelling"`` for is never claimed again without an operator's retry; no
  job completed twice (nor two of its recorded runs returned) without an operator's
  re-run or a stall; no two runs of a job overlap without a stall, a run ending when the
  engine took its outcome (a thread or a batch may run on past its timeout or cancel, as
  documented); in process mode a child never runs on past its run's outcome;
* no claim between a ``pause()`` and the next ``resume()``;
* FIFO groups: at most ``group_concurrency`` runs of a group at once, a job never
  starts before the job added before it in its group gave its turn back, and no turn,
  count or line is left at the end; concurrency caps: never more running jobs of a key
  (or of the queue) than the cap, in Redis and in the processors, and no slot left;
* ``clear(force=True)`` racing the workers leaves no job, no state set and no key but
  the documented ones (id and lease counters, presence, leader leases), no job is
  claimed after it returned, and the workers' stop writes nothing back.

Defects the probe led to are deterministic tests at the end: ``drain()`` removing a FIFO
group's line before its turn holder (the holder's release handed the turn to a job the
call had passed), ``clear(force=True)`` dropping parked jobs before it releases the running
ones (likewise for a group's turn or a concurrency place), an async batch cancelled once
none of its jobs waits for it (a job handed back at a stop ran twice at once), and the
flow-control heal counting the jobs a release let out lately (``cc-out:<key>``) against
the cap (it let one more out and warned of a removed cap).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from kitium_queue import (
    FIFOQueueManager,
    JobQueue,
    NonRetryableError,
    RetryLater,
)
from kitium_queue.outcomes import CANCELLED
from test_admin_races import final_view, pick_id, recorded

pytestmark = [pytest.mark.redis_only, pytest.mark.timeout(90)]

FINAL = ("completed", "failed", "dlq")
PER_JOB_ERRORS = ("JobNotFoundError", "JobStateError", "JobActiveError")
OUTCOME_EVENTS = (
    "job-completed",
    "job-retrying",
    "job-failed",
    "job-dlq",
    "job-delayed",
    "job-released",
    "job-stalled",
    "job-removed",
)
RELEASES = ("job-completed", "job-dlq", "job-failed", "job-removed")
CAP_KEYS = ("ck0", "ck1", "ck2")
CAP = 2
LOCK_MS = 1000
GROUPS = 5

# ---------------------------------------------------------------- processors
# Module-level: process-mode children and the worker process import them by name. A
# run logs start/end lines; its number is a Redis counter per job, so a plan of
# outcomes survives RetryLater and runs in other processes. A start line carries the
# lease token of the run's claim where the processor gets one (not in process mode):
# tokens follow the Redis clock in units of 10 us, so it tells which claim the run is
# of, however late the run logs its start.
_LOCAL = threading.Lock()
_CLIENTS: dict[str, Any] = {}
_FDS: dict[str, int] = {}


def _log(path: str, kind: str, jid: str, n: int, what: str, token: str = "-") -> None:
    with _LOCAL:
        fd = _FDS.get(path)
        if fd is None:
            fd = _FDS[path] = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    line = f"{kind} {jid} {os.getpid()} {time.time():.6f} {n} {what} {token}\n"
    os.write(fd, line.encode())


def _claimed(token: str, start: float) -> float | None:
    """The time of the claim a lease token was issued by (s), when it is one: a token
    that does not read as a time shortly before the run's start is not used."""
    if not token.isdigit():
        return None
    at = int(token) / 100_000
    return at if start - 60 < at <= start + 0.001 else None


def _begin(job: Any) -> tuple[int, str, float]:
    d = job.data
    with _LOCAL:
        client = _CLIENTS.get(d["u"])
        if client is None:
            client = _CLIENTS[d["u"]] = redis.Redis.from_url(d["u"])
    n = int(client.incr(d["p"] + ":probe-runs:" + job.id))
    plan = d["plan"]
    action = plan[n - 1] if n <= len(plan) else "ok"
    _log(d["l"], "start", job.id, n, action, getattr(job, "lease_token", "") or "-")
    return n, action, d["ms"] / 1000 + (0.4 if action == "slow" else 0)


def _outcome(job: Any, n: int, action: str) -> Any:
    if action == "raise":
        return ValueError("planned failure")
    if action == "later":
        return RetryLater(job.data["ms"] % 100, "planned retry-later")
    if action == "nonretry":
        return NonRetryableError("planned non-retryable")
    return {"run": n}


def work(job: Any) -> Any:
    """Plain processor: a thread, or a process-mode child."""
    n, action, sleep_s = _begin(job)
    outcome = "exc"
    try:
        time.sleep(sleep_s)
        if job.data["ms"] % 3 == 0:
            job.update_progress_sync(50)
            job.log_sync(f"run {n}")
        out = _outcome(job, n, action)
        if isinstance(out, BaseException):
            raise out
        outcome = "ok"
        return out
    finally:
        _log(job.data["l"], "end", job.id, n, outcome)


def work_batch(jobs: list[Any]) -> list[Any]:
    """Plain batch processor (a thread): one outcome per job."""
    runs = [_begin(j)[:2] for j in jobs]
    time.sleep(max(j.data["ms"] for j in jobs) / 1000 + (0.4 if "slow" in dict(runs) else 0))
    reply = []
    for j, (n, action) in zip(jobs, runs, strict=True):
        out = _outcome(j, n, action)
        reply.append(out)
        _log(j.data["l"], "end", j.id, n, "exc" if isinstance(out, BaseException) else "ok")
    return reply


def make_queue(url: str, prefix: str, conf: dict[str, Any], concurrency: int) -> JobQueue:
    """The queue as every process of a run declares it."""
    q = JobQueue(
        "modes",
        redis=url,
        prefix=prefix,
        events_max_len=1_000_000,
        settings={"lock_duration": LOCK_MS, "max_stalled_interval": 300},
        worker={"concurrency": concurrency, "shutdown_timeout": conf["shutdown"]},
        retry={"max_attempts": 3, "backoff_type": "fixed", "backoff_delay": 20},
    )
    if conf["groups"]:
        FIFOQueueManager(q)
    if conf["caps"]:
        q.set_concurrency_limit("ck*", CAP)
        if conf.get("global_cap"):
            q.set_global_concurrency(conf["global_cap"])
    if conf["mode"] == "batch":
        q.process_batch("work", work_batch, size=3, max_wait=50)
    else:
        q.process("work", work, mode="process" if conf["mode"] == "process" else "auto")
    return q


WORKER_MAIN = """
import asyncio, json, sys
sys.path.insert(0, sys.argv[1])
import test_admin_races_modes as m
async def main():
    q = m.make_queue(sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), int(sys.argv[5]))
    await q.start()
    print("ready", flush=True)
    await q.run_worker()
asyncio.run(main())
"""

CONFIGS = {
    "threads-groups-caps": (
        3,
        {"mode": "thread", "groups": True, "caps": True, "global_cap": 7, "shutdown": 0},
    ),
    "batches-groups": (5, {"mode": "batch", "groups": True, "caps": False, "shutdown": 200}),
    "process-caps": (8, {"mode": "process", "groups": False, "caps": True, "shutdown": 200}),
}
RUN_S = 2.5  # at least; the signals fall within it (0.6 s after each other at most)
# Up to this much longer when the operator calls have not yet met a running job or
# drained the queue (the test asks that they did): on a loaded machine process-mode
# children take seconds to start, and a run of 3.5 s once had no cancel_job answer
# "cancelling".
COVER_S = 10.0
# Worker log lines a run of this probe is expected to write (failures it plans).
EXPECTED_LOGS = (
    "failed for good after",
    "dead-lettered on recovery",
    "was removed while it ran",
    "found missing",
    "exceeds worker.concurrency",
    # The flow heal's warning: a walk that races the operator calls (a clear, a drain)
    # may still find a key stranded for a moment.
    "nothing left to release",
)


class _Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if record.levelno >= logging.ERROR and not any(x in msg for x in EXPECTED_LOGS):
            self.lines.append(f"{record.levelname}: {msg[:300]}")


@dataclass
class Found:
    problems: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


Events = dict[str, list[tuple[str, float, dict[str, str]]]]


class ModeRaces:
    def __init__(self, seed: int, conf: dict[str, Any], url: str, tmp: Path) -> None:
        self.seed, self.conf, self.url = seed, conf, url
        self.rnd = random.Random(seed)
        self.prefix = f"kqt-modes-{seed}-{uuid.uuid4().hex[:8]}"
        self.log_path = str(tmp / "runs.log")
        self.err_path = tmp / "worker.err"
        self.ids: list[str] = []
        self.spec: dict[str, dict[str, Any]] = {}
        self.removed: dict[str, float] = {}
        self.cancelled: dict[str, float] = {}
        self.calls: list[dict[str, Any]] = []
        self.drains: list[dict[str, Any]] = []
        self.found = Found()
        self.stop = False
        self.active: list[str] = []
        self.recent: list[str] = []
        self.sub: subprocess.Popen[bytes] | None = None

    def queue(self, concurrency: int) -> JobQueue:
        return make_queue(self.url, self.prefix, self.conf, concurrency)

    # ------------------------------------------------------------------ the run
    async def run(self) -> Found:
        logger = logging.getLogger("kitium_queue")
        captured, level = _Captured(), logger.level
        logger.addHandler(captured)
        logger.setLevel(logging.WARNING)
        self.client = aioredis.Redis.from_url(self.url)
        self.ops = self.queue(1)
        workers: list[JobQueue] = []
        errf = self.err_path.open("wb")
        try:
            if self.conf["groups"]:
                await FIFOQueueManager(self.ops).set_group(
                    {"group_id": "g0", "group_concurrency": 2}
                )
            await self.start_sub(errf)
            workers = [self.queue(self.rnd.randint(4, 8)) for _ in range(2)]
            for w in workers:
                await w.start()
            tasks = [
                asyncio.create_task(c)
                for c in (
                    self.produce(),
                    self.admin(0),
                    self.admin(1),
                    self.rare(),
                    self.watch(),
                    self.track(),
                    self.signals(errf),
                )
            ]
            await asyncio.sleep(RUN_S)
            deadline = time.monotonic() + COVER_S
            while not self.covered() and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            self.stop = True
            await asyncio.gather(*tasks)
            await self.ops.resume()
            await self.quiesce()
            await self.check()
            await self.clear_phase()
            for w in workers:
                await w.close()
            workers = []
            await asyncio.sleep(0.3)
            left = await self.keys_left()
            wrote = sorted(set(left) - set(self.after_clear) - {"workers"})
            # A worker's own key, and leader elections: the eviction watch campaigns
            # 6-30 s after its worker starts (evictwatch.EvictionService.start), which may
            # fall after the clear; its lease and term counter hold no job state.
            if [k for k in wrote if not k.startswith(("worker:", "leader:"))]:
                self.found.problems.append(f"after clear(force) the workers wrote {wrote}")
        finally:
            logger.removeHandler(captured)
            logger.setLevel(level)
            if self.sub is not None and self.sub.poll() is None:
                self.sub.kill()
                self.sub.wait()
            for w in workers:
                await w.close()
            await self.ops.close()
            errf.close()
            keys = [k async for k in self.client.scan_iter(match=f"{self.prefix}*", count=2000)]
            for i in range(0, len(keys), 1000):
                await self.client.unlink(*keys[i : i + 1000])
            await self.client.aclose()
        self.found.problems += captured.lines
        self.found.summary["calls"] = Counter(
            f"{c['op']}:{c.get('exc') or (c['res'] if isinstance(c['res'], str) else 'ok')}"
            for c in self.calls
        )
        err = self.err_path.read_text(errors="replace")
        if "Traceback" in err:
            self.found.problems.append(f"worker process stderr: {err[-1500:]}")
        return self.found

    def covered(self) -> bool:
        """Whether a cancel_job met a running job and a drain ran."""
        said = [(c["op"], c.get("res")) for c in self.calls]
        return ("cancel_job", "cancelling") in said and any(op == "drain" for op, _ in said)

    async def start_sub(self, errf: Any) -> None:
        here = str(Path(__file__).resolve().parent)
        conf, conc = json.dumps(self.conf), str(self.rnd.randint(3, 6))
        self.sub = subprocess.Popen(
            [sys.executable, "-c", WORKER_MAIN, here, self.url, self.prefix, conf, conc],
            stdout=subprocess.PIPE,
            stderr=errf,
        )
        assert self.sub.stdout is not None
        ready = await asyncio.wait_for(asyncio.to_thread(self.sub.stdout.readline), 60)
        assert ready.strip() == b"ready", f"worker process did not start: {ready!r}"
        await asyncio.sleep(0.2)  # run_worker's signal handlers in place

    async def signals(self, errf: Any) -> None:
        """SIGTERM (a graceful stop) at a seeded time, a new worker process, SIGKILL."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            await asyncio.sleep(self.rnd.uniform(0.6, RUN_S / 2 - 0.6))
            assert self.sub is not None
            self.sub.send_signal(sig)
            await asyncio.wait_for(asyncio.to_thread(self.sub.wait), 30)
            if sig == signal.SIGTERM:
                if self.sub.returncode != 0:
                    self.found.problems.append(f"SIGTERM: worker exit code {self.sub.returncode}")
                await self.start_sub(errf)

    async def track(self) -> None:
        k = self.ops.keys
        while not self.stop:
            self.active = [b.decode() for b in await self.client.zrange(k.active, 0, -1)]
            recent = []
            for s in (k.completed, k.dlq, k.delayed):
                recent += [b.decode() for b in await self.client.zrevrange(s, 0, 5)]
            self.recent = recent
            await asyncio.sleep(0.02)

    async def produce(self) -> None:
        rnd = random.Random(self.seed * 7 + 1)
        n = 0
        while not self.stop and n < 600:
            batch = [self.job(rnd, n + i) for i in range(rnd.randint(10, 30))]
            n += len(batch)
            ids = await self.ops.add_jobs([("work", d, o) for d, o in batch])
            for jid, (_, o) in zip(ids, batch, strict=True):
                self.ids.append(jid)
                self.spec[jid] = o
            await asyncio.sleep(rnd.uniform(0.05, 0.2))

    def job(self, rnd: random.Random, n: int) -> tuple[dict[str, Any], dict[str, Any]]:
        o: dict[str, Any] = {"remove_on_complete": False, "attempts": rnd.choice([2, 3])}
        o["backoff"] = {"type": "fixed", "delay": rnd.choice([0, 20, 60])}
        if self.conf["groups"] and rnd.random() < 0.35:
            o["message_group_id"] = f"g{rnd.randint(0, GROUPS - 1)}"
        else:
            if rnd.random() < 0.3:
                o["priority"] = rnd.randint(0, 10)
            if rnd.random() < 0.2:
                o["delay"] = rnd.randint(1, 1200)
        if self.conf["caps"] and rnd.random() < 0.35:
            o["concurrency_key"] = rnd.choice(CAP_KEYS)
        if rnd.random() < (0.06 if self.conf["mode"] == "process" else 0.2):
            o["timeout"] = rnd.choice([150, 300, 1000])
        acts, weights = ("ok", "raise", "later", "slow", "nonretry"), (45, 25, 15, 10, 5)
        plan = [rnd.choices(acts, weights)[0] for _ in range(rnd.randint(0, 4))]
        data = {"plan": plan, "ms": rnd.randint(0, 60), "u": self.url, "p": self.prefix}
        data["l"] = self.log_path
        return data, o

    def pick(self, rnd: random.Random, running: bool = False) -> str:
        return pick_id(rnd, list(self.active), list(self.recent), list(self.ids), running)

    async def call(self, op: str, fn: Any, **args: Any) -> dict[str, Any]:
        return await recorded(self.calls, self.found.problems, op, fn, **args)

    async def admin(self, k: int) -> None:
        rnd = random.Random(self.seed * 1000 + k)
        q = self.ops
        ops = {
            "retry_job": 10,
            "remove_job": 8,
            "cancel_job": 14,
            "promote_job": 6,
            "promote_delayed": 2,
            "bulk_retry": 3,
            "replay_dlq": 3,
            "recover_stalled": 2,
            "get_job_status": 3,
        }
        names, weights = list(ops), list(ops.values())
        # A process-mode child takes a second or more to start: cancel them less often.
        pace = 0.25 if self.conf["mode"] == "process" else 0.015
        while not self.stop:
            await asyncio.sleep(rnd.uniform(0, pace))
            op = rnd.choices(names, weights)[0]
            if op in ("cancel_job", "retry_job", "remove_job", "promote_job", "get_job_status"):
                jid = self.pick(rnd, op == "cancel_job" and rnd.random() < 0.6)
                rec = await self.call(op, getattr(q, op), job_id=jid)
                res = rec.get("res")
                if (op, res) in (("remove_job", True), ("cancel_job", "removed")):
                    self.removed.setdefault(jid, rec["t1"])
                elif (op, res) == ("cancel_job", "cancelling"):
                    self.cancelled.setdefault(jid, rec["t1"])
            elif op == "bulk_retry":
                status = rnd.choice(["failed", "dlq", "completed"])
                await self.call(op, q.bulk_retry, status=status, limit=rnd.randint(0, 10))
            elif op in ("promote_delayed", "replay_dlq", "recover_stalled"):
                await self.call(op, getattr(q, op), limit=rnd.randint(0, 50))

    async def rare(self) -> None:
        """In turn, at seeded times: pause/resume; a drain; pause, drain, resume."""
        rnd = random.Random(self.seed * 97 + 3)
        q = self.ops
        for step in itertools.cycle(("drain", "pause", "both")):
            await asyncio.sleep(rnd.uniform(0.3, 0.9))
            if self.stop:
                return
            if step != "drain":
                await self.call("pause", q.pause)
            if step != "pause":
                self.drains.append(await self.call("drain", q.drain, delayed=rnd.random() < 0.5))
            if step != "drain":
                await asyncio.sleep(rnd.uniform(0.02, 0.3))
                await self.call("resume", q.resume)

    async def watch(self) -> None:
        keys = self.ops.keys
        from test_fuzz import state_view

        while not self.stop:
            await asyncio.sleep(0.25)
            view = await state_view(self.client, keys)
            bad = [p for p in view.problems() if "st='pending'" not in p]
            if bad:
                self.found.problems.append(f"state during the run: {bad[:5]}")
            if self.conf["caps"]:
                for ck in CAP_KEYS:
                    if (n := await self.client.scard(keys.extra(f"cc:{ck}"))) > CAP:
                        self.found.problems.append(f"cc:{ck} counts {n} running (cap {CAP})")
                cap = self.conf.get("global_cap")
                if cap and (n := await self.client.zcard(keys.active)) > cap:
                    self.found.problems.append(f"{n} jobs active (queue-wide cap {cap})")

    async def quiesce(self) -> None:
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            s = await self.ops.get_stats()
            if s.waiting + s.active + s.delayed + s.pending == 0:
                await asyncio.sleep(0.5)
                s = await self.ops.get_stats()
                if s.waiting + s.active + s.delayed + s.pending == 0:
                    await asyncio.sleep(0.5)  # threads past their timeout log their ends
                    return
            await asyncio.sleep(0.1)
        s = await self.ops.get_stats()
        self.found.problems.append(f"the queue did not quiesce in 45 s: {s.to_dict()}")

    # ------------------------------------------------------------------ reading
    async def read_events(self) -> Events:
        events: Events = defaultdict(list)
        self.queue_events: list[tuple[str, dict[str, str]]] = []
        self.added: dict[str, int] = {}
        raw = await self.client.xrange(self.ops.keys.events, "-", "+")
        for i, (eid, f) in enumerate(raw):
            fd = {k.decode(): v.decode("utf-8", "replace") for k, v in f.items()}
            ts, e, jid = int(eid.split(b"-")[0]) / 1000, fd.get("e", ""), fd.get("id", "")
            if not jid:
                self.queue_events.append((e, fd))
                continue
            events[jid].append((e, ts, fd))
            if e == "job-added":
                self.added.setdefault(jid, i)
        return events

    def read_runs(self) -> dict[str, list[dict[str, Any]]]:
        runs: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
        if os.path.exists(self.log_path):
            for line in Path(self.log_path).read_text().splitlines():
                kind, jid, pid, t, n, what, token = line.split()
                r = runs[jid].setdefault(int(n), {"n": int(n), "end": None, "out": None})
                if kind == "start":
                    r.update(start=float(t), pid=int(pid), claimed=_claimed(token, float(t)))
                else:
                    r.update(end=float(t), out=what)
        return {j: sorted(rs.values(), key=lambda r: r.get("start", 0)) for j, rs in runs.items()}

    @staticmethod
    def engine_end(
        r: dict[str, Any], evs: list[tuple[str, float, dict[str, str]]]
    ) -> tuple[float, bool]:
        """When the engine took the run as ended: the first outcome event after its
        claim, or its logged end; and whether that outcome is the engine's own end of
        the run (its timeout, a ``cancel_job``), which ignores what the run returns
        whenever it returns. The engine decides such an end before the event is
        written: a thread past its timeout may log its end between the two (seen 4-10
        ms on a loaded machine).

        The claim is the first ``job-started`` from the time of the run's lease token
        (its event's id, in ms, is taken a moment later in the same script: seen up to
        5 ms), or else the last one before the run logged its start. A thread of a
        batch may log its start 100-250 ms after its claim on a loaded machine: by then
        the job may have been cancelled, requeued and claimed again, and that later
        claim is not this run's."""
        end = r["end"] if r["end"] is not None else float("inf")
        claim = None
        for i, (e, ts, _) in enumerate(evs):
            if e != "job-started":
                continue
            if r.get("claimed") is None:
                if ts <= r["start"] + 0.0005:
                    claim = i
            elif ts > r["claimed"] - 0.001:
                claim = i
                break
        if claim is not None:
            for e, ts, f in evs[claim + 1 :]:
                if e in OUTCOME_EVENTS:
                    reason = f.get("reason", "")
                    return min(end, ts), "exceeded its timeout" in reason or CANCELLED in reason
        return end, False

    # ------------------------------------------------------------------ checks
    async def check(self) -> None:
        P = self.found.problems
        view = await final_view(self.client, self.ops, P)
        events, runs = await self.read_events(), self.read_runs()
        for jid, rs in runs.items():
            for r in rs:
                r.setdefault("start", r["end"])
                r.setdefault("claimed", None)
                r["lend"], r["cut"] = self.engine_end(r, events.get(jid, []))
        self.check_calls(events)
        drained = [j for j in self.ids if view.state(j) is None and j not in self.removed]
        for jid in self.ids:
            self.check_job(jid, view.state(jid), events.get(jid, []), runs.get(jid, []))
        self.check_drains(drained, events)
        self.check_pauses(events)
        if self.conf["mode"] == "process":
            for jid, rs in runs.items():
                for a, b in itertools.pairwise(rs):
                    if a["end"] is not None and a["end"] > b["start"] + 0.003:
                        P.append(f"process mode: job {jid} run {a['n']} ran on past run {b['n']}")
                P.extend(
                    f"process mode: job {jid} run {r['n']} ended {r['end'] - r['lend']:.3f} s "
                    "after its outcome"
                    for r in rs
                    if r["end"] is not None and r["end"] > r["lend"] + 0.3
                )
        if self.conf["groups"]:
            await self.check_groups(events, runs, set(drained))
        if self.conf["caps"]:
            await self.check_caps(runs)
        self.found.summary.update(
            jobs=len(self.ids), runs=sum(len(r) for r in runs.values()), drained=len(drained)
        )

    def check_calls(self, events: Events) -> None:
        P = self.found.problems
        moved = 0
        for c in self.calls:
            jid = c["args"].get("job_id")
            if "exc" in c and (jid is None or c["exc"] not in PER_JOB_ERRORS):
                P.append(f"{c['op']}({c['args']}) raised {c['exc']}: {c['msg']:.200}")
            elif "exc" in c and jid not in c["msg"]:
                P.append(f"{c['op']}({jid}): the message does not name the job: {c['msg']}")
            if c["op"] == "retry_job" and "res" in c:
                moved += 1
            elif c["op"] in ("bulk_retry", "replay_dlq") and "res" in c:
                moved += c["res"]
        requeued = sum(
            1
            for evs in events.values()
            for e, _, f in evs
            if (e, f.get("from")) == ("job-waiting", "retry")
        )
        if moved != requeued:
            P.append(f"operator calls reported {moved} jobs moved back, the stream {requeued}")

    def check_job(
        self,
        jid: str,
        st: str | None,
        evs: list[tuple[str, float, dict[str, str]]],
        runs: list[dict[str, Any]],
    ) -> None:
        P = self.found.problems
        names = [e for e, _, _ in evs]
        claims = [ts for e, ts, _ in evs if e == "job-started"]
        if jid in self.removed:
            late = [
                round(t - self.removed[jid], 3) for t in claims if t > self.removed[jid] + 0.002
            ]
            if st is not None or late:
                P.append(f"removed job {jid}: record {st}, claimed after its removal {late[:3]}")
            return
        if st is not None and st not in FINAL:
            P.append(f"job {jid} ends {st}; events {names[-10:]}")
        requeues = [ts for e, ts, f in evs if (e, f.get("from")) == ("job-waiting", "retry")]
        stalls = names.count("job-stalled")
        if names.count("job-completed") > 1 + len(requeues):
            P.append(f"job {jid} completed {names.count('job-completed')} times: {names}")
        recorded_oks = sum(
            1
            for r in runs
            if r["out"] == "ok"
            and not r["cut"]
            and r["end"] is not None
            and r["end"] <= r["lend"] + 0.003
        )
        if recorded_oks > 1 + len(requeues) + stalls:
            P.append(f"job {jid}: {recorded_oks} runs returned, {len(requeues)} re-runs: {names}")
        # In the order of their claims (a run may log its start after a later claim's).
        claimed = sorted(runs, key=lambda r: r["start"] if r["claimed"] is None else r["claimed"])
        for a, b in itertools.pairwise(claimed):
            if b["start"] < a["lend"] - 0.003 and not stalls:
                P.append(f"job {jid}: runs {a['n']} and {b['n']} overlapped: {names[-8:]}")
        t_c = self.cancelled.get(jid)
        if t_c is not None:
            back = min([t for t in requeues if t >= t_c - 0.002], default=float("inf"))
            late = [t for t in claims if t_c + 0.002 < t < back]
            if late:
                P.append(
                    f"job {jid}: claimed {late[0] - t_c:.3f} s after cancel_job said "
                    f"'cancelling', without a re-run: {names[-10:]}"
                )

    def check_drains(self, drained: list[str], events: Events) -> None:
        P = self.found.problems
        said = sum(int(f.get("count", 0)) for e, f in self.queue_events if e == "queue-drained")
        reported = sum(c.get("res") or 0 for c in self.drains)
        if not said == reported == len(drained):
            P.append(f"drain returned {reported}, its events say {said}, {len(drained)} jobs gone")
        ends = sorted(c["t1"] for c in self.drains)
        for jid in drained:
            evs = events.get(jid, [])
            last = max((ts for _, ts, _ in evs), default=0.0)
            after = [t for t in ends if t >= last - 0.002]
            claims = [ts for e, ts, _ in evs if e == "job-started"]
            if not after or any(t > after[0] + 0.002 for t in claims):
                P.append(
                    f"drained job {jid} was claimed after the drain: {[e for e, _, _ in evs][-6:]}"
                )

    def check_pauses(self, events: Events) -> None:
        seq = sorted(
            (c["t0"], c["t1"], c["op"]) for c in self.calls if c["op"] in ("pause", "resume")
        )
        windows, start = [], None
        for t0, t1, op in seq:
            if op == "pause" and start is None:
                start = t1
            elif op == "resume" and start is not None:
                windows.append((start, t0))
                start = None
        for jid, evs in events.items():
            for e, ts, _ in evs:
                if e == "job-started" and any(a + 0.002 < ts < b - 0.002 for a, b in windows):
                    self.found.problems.append(f"job {jid} claimed while the queue was paused")

    async def check_groups(self, events: Events, runs: dict[str, Any], drained: set[str]) -> None:
        P, c, keys = self.found.problems, self.client, self.ops.keys
        if await c.hlen(keys.extra("grp-of")):
            P.append(f"groups: turns still owned: {await c.hgetall(keys.extra('grp-of'))}")
        for g in range(GROUPS):
            held = await c.scard(keys.extra(f"grp-run:g{g}"))
            n = await c.hget(keys.extra(f"grp:g{g}"), "n")
            line = await c.zcard(keys.extra(f"parked:g:g{g}"))
            if held or n not in (None, b"0") or line:
                P.append(f"groups: g{g} ends with {held} turns held, n={n}, {line} in line")
        members: dict[str, list[tuple[int, str]]] = defaultdict(list)
        for jid in self.ids:
            g = self.spec[jid].get("message_group_id")
            if g is not None and jid in self.added:
                members[g].append((self.added[jid], jid))
        for g, pairs in members.items():
            order = [j for _, j in sorted(pairs)]
            turns = 2 if g == "g0" else 1
            spans = sorted((r["start"], r["lend"], j) for j in order for r in runs.get(j, []))
            for i, (s, _, j) in enumerate(spans):
                holders = {j2 for _, e2, j2 in spans[:i] if e2 > s + 0.003 and j2 != j}
                if len(holders) >= turns:
                    P.append(f"group {g}: {j} started while {sorted(holders)} held its turns")
            if turns > 1:
                continue
            for a, b in itertools.pairwise(order):
                if a in drained or not runs.get(b):
                    continue
                rel = [ts for e, ts, _ in events.get(a, []) if e in RELEASES]
                rel += [self.removed[a]] if a in self.removed else []
                if not rel or min(rel) > runs[b][0]["start"] + 0.003:
                    P.append(
                        f"group {g}: {b} started before {a}, added before it, gave its turn back"
                    )

    async def check_caps(self, runs: dict[str, list[dict[str, Any]]]) -> None:
        P, c, keys = self.found.problems, self.client, self.ops.keys
        for ck in CAP_KEYS:
            if n := await c.scard(keys.extra(f"cc:{ck}")):
                P.append(f"cc:{ck} ends counting {n} running jobs")
        if await c.hlen(keys.extra("cc-of")):
            P.append(f"cc-of ends with {await c.hgetall(keys.extra('cc-of'))}")
        points: dict[str, list[tuple[float, int]]] = defaultdict(list)
        for jid, rs in runs.items():
            ck = self.spec.get(jid, {}).get("concurrency_key")
            for r in rs:
                if r["lend"] != float("inf"):
                    span = [(r["start"] + 0.003, 1), (r["lend"], -1)]
                    points["*"] += span
                    if ck:
                        points[ck] += span
        for key, pts in points.items():
            peak = max(itertools.accumulate(d for _, d in sorted(pts)))
            cap = self.conf.get("global_cap") if key == "*" else CAP
            if cap and peak > cap:
                P.append(f"{peak} runs of {key} at once (cap {cap})")

    # ------------------------------------------------------------------ clear(force)
    async def clear_phase(self) -> None:
        P = self.found.problems
        rnd = random.Random(self.seed * 13 + 7)
        batch = []
        for i in range(40):
            d, o = self.job(rnd, 10_000 + i)
            d["plan"], d["ms"] = [rnd.choice(["slow", "ok", "raise"])], rnd.randint(20, 200)
            o.pop("delay", None)
            batch.append((d, o))
        await self.ops.add_jobs([("work", d, o) for d, o in batch])
        for _ in range(200):
            if await self.client.zcard(self.ops.keys.active) >= 2:
                break
            await asyncio.sleep(0.02)
        active = await self.client.zcard(self.ops.keys.active)
        rec = await self.call("clear", self.ops.clear, force=True)
        await asyncio.sleep(LOCK_MS / 1000 + 0.5)  # every worker renewed its leases since
        from test_fuzz import state_view

        view = await state_view(self.client, self.ops.keys)
        if view.where or view.records:
            P.append(f"clear(force) with {active} active left {list(view.records.items())[:5]}")
        self.after_clear = [
            k for k in await self.keys_left() if not k.startswith(("worker:", "workers"))
        ]
        # cc-out:<key>: jobs a release let out lately (flowcontrol.LET_OUT_MS), expiring.
        kept = ("id", "lease", "leader:", "cc-out:")
        unexpected = [k for k in self.after_clear if not k.startswith(kept)]
        # clear() keeps a group's settings (g0's group_concurrency, set above): its hash,
        # holding nothing else, and its entry in the groups index.
        settings = {b"paused", b"conc", b"max", b"rlm", b"rld"}
        base = self.ops.keys.base
        for k in [k for k in unexpected if k.startswith("grp:")]:
            if set(await self.client.hkeys(base + k)) <= settings:
                unexpected = [u for u in unexpected if u not in (k, "groups")]
        if unexpected:
            P.append(f"clear(force) left keys {unexpected[:10]}")
        grace = LOCK_MS / 1000 + 0.3  # a run claimed before may start until its renewal
        late = [
            (j, round(r["start"] - rec["t1"], 3))
            for j, rs in self.read_runs().items()
            for r in rs
            if r.get("start", 0) > rec["t1"] + grace
        ]
        if late:
            P.append(f"runs started after clear(force) returned: {late[:5]}")
        self.found.summary["active at clear"] = active

    async def keys_left(self) -> list[str]:
        base = self.ops.keys.base
        found = [k.decode() async for k in self.client.scan_iter(match=base + "*", count=1000)]
        return sorted(k[len(base) :] for k in found)


@pytest.mark.parametrize("config", list(CONFIGS))
async def test_operator_calls_racing_threads_children_and_batches_keep_every_invariant(
    config: str, redis_url: str, tmp_path: Path
) -> None:
    seed, conf = CONFIGS[config]
    found = await ModeRaces(seed, conf, redis_url, tmp_path).run()
    assert not found.problems, f"{config}: {found.problems[:10]}\n{found.summary}"
    calls = found.summary["calls"]
    assert found.summary["runs"] and calls["clear:ok"], found.summary
    drains = sum(n for k, n in calls.items() if k.startswith("drain:"))
    assert calls["cancel_job:cancelling"] and drains, found.summary


# ---------------------------------------------------------------- deterministic cases


def _late_batches(q: JobQueue, script: str, pause_s: float) -> None:
    """The admin loop's next batch call of ``script`` comes ``pause_s`` late (a busy
    client, a slow network): workers run meanwhile, as they may between any two calls."""
    run = q.ctx.run

    async def late(name: str, args: Any = ()) -> Any:
        out = await run(name, args)
        if name == script and int(out):
            await asyncio.sleep(pause_s)
        return out

    q.ctx.run = late  # type: ignore[method-assign]


async def test_drain_removes_a_groups_line_when_its_turn_holder_waits_out_a_backoff(
    redis_url: str, prefix: str
) -> None:
    q = JobQueue("drain-group", redis=redis_url, prefix=prefix, worker={"concurrency": 4})
    FIFOQueueManager(q)
    started: list[int] = []

    @q.process("w")
    async def w(job: Any) -> None:
        started.append(job.data["n"])
        if job.data["n"] == 0:
            raise ValueError("retried after 5 s")

    try:
        for n in range(4):
            await q.add_job("w", {"n": n}, message_group_id="g", attempts=2, backoff=5000)
        await q.start()
        for _ in range(300):
            if (await q.get_stats()).delayed == 1:
                break
            await asyncio.sleep(0.01)
        _late_batches(q, "drain", 0.3)
        drained = await q.drain(delayed=True)
        await asyncio.sleep(0.2)
        assert (started, drained) == ([0], 4), "a job of the drained group's line ran"
    finally:
        await q.close()


@pytest.mark.parametrize("blocker", ["group", "cap"])
async def test_clear_force_starts_no_job_parked_behind_a_running_one(
    redis_url: str, prefix: str, blocker: str
) -> None:
    q = JobQueue("clear-parked", redis=redis_url, prefix=prefix, worker={"concurrency": 4})
    if blocker == "group":
        FIFOQueueManager(q)
        opts: dict[str, Any] = {"message_group_id": "g"}
    else:
        q.set_concurrency_limit("k", 1)
        opts = {"concurrency_key": "k"}
    started: list[int] = []
    release = asyncio.Event()  # the running job runs on until the check is done

    @q.process("w")
    async def w(job: Any) -> None:
        started.append(job.data["n"])
        await release.wait()

    try:
        for n in range(3):
            await q.add_job("w", {"n": n}, **opts)
        await q.start()
        for _ in range(300):
            s = await q.get_stats()
            if started and s.pending == 2:
                break
            await asyncio.sleep(0.01)
        _late_batches(q, "clear", 0.3)
        await q.clear(force=True)
        await asyncio.sleep(0.2)
        assert started == [0], "a parked job of the cleared queue started"
    finally:
        release.set()
        await q.close()


async def test_a_job_handed_back_from_a_running_async_batch_does_not_run_twice_at_once(
    redis_url: str, prefix: str
) -> None:
    spans: list[tuple[str, float, float]] = []

    def worker(tag: str) -> JobQueue:
        q = JobQueue(
            "batch-handback",
            redis=redis_url,
            prefix=prefix,
            worker={"concurrency": 2, "shutdown_timeout": 100},
        )

        async def send(jobs: list[Any]) -> list[str]:
            t0 = time.monotonic()
            try:
                await asyncio.sleep(1.0)
            finally:
                spans.append((tag, t0, time.monotonic()))
            return [tag for _ in jobs]

        q.process_batch("send", send, size=2, max_wait=10)
        return q

    a, b = worker("a"), worker("b")
    try:
        await a.add_job("send", {})
        await a.start()
        await asyncio.sleep(0.3)
        await a.close()  # the job is handed back 100 ms into the stop
        await b.start()
        await asyncio.sleep(1.6)
        for (_, _, end), (_, start, _) in itertools.pairwise(sorted(spans, key=lambda s: s[1])):
            assert start >= end, f"the job ran in two batches at once ({end - start:.2f} s)"
    finally:
        await a.close()
        await b.close()


async def test_the_flow_heal_moves_nothing_while_a_released_job_waits(
    redis_url: str, prefix: str
) -> None:
    q = JobQueue("heal-released", redis=redis_url, prefix=prefix, worker={"concurrency": 4})
    q.set_concurrency_limit("k", 1)
    go = asyncio.Event()

    @q.process("w")
    async def w(job: Any) -> None:
        if job.data["n"] == 0:
            await go.wait()

    try:
        for n in range(3):
            await q.add_job("w", {"n": n}, concurrency_key="k")
        await q.start()
        for _ in range(300):
            s = await q.get_stats()
            if s.active == 1 and s.pending == 2:
                break
            await asyncio.sleep(0.01)
        await q.pause()  # the job let out next waits while the queue is paused
        go.set()
        for _ in range(300):
            if (await q.get_stats()).waiting == 1:
                break
            await asyncio.sleep(0.01)
        report = await q.flow.heal()
        assert report.jobs_moved == 0, report
    finally:
        await q.close()
