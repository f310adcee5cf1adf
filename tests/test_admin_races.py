"""Operator calls racing live workers: a seeded, bounded race probe.

Per seed (a few seconds each), two in-process workers and one worker process (SIGKILLed
part way) drain about a thousand jobs with a random mix of documented options
(priorities, delays, LIFO, FIFO groups, idempotency keys, chosen ids, timeouts), whose
processor completes, raises (retried, 2-3 attempts), raises ``RetryLater``,
``NonRetryableError``, runs past its timeout, and writes progress and log lines. Two
operator loops fire random calls at random ids -- running ones, ones whose run just
ended, any, unknown ones: ``retry_job``, ``remove_job``, ``cancel_job``,
``promote_job``, ``promote_delayed``, ``bulk_retry``, ``replay_dlq``, ``pause`` /
``resume``, ``recover_stalled``, ``get_job_status``, ``get_jobs_by_status``,
``get_stats``, ``get_dlq_jobs``, ``orphans.find_orphans(repair=True)``, and repeated
``add_job`` calls with the same ``idempotency_key`` / ``job_id``.

Checked once every worker has quiesced (and the state view during the run too):

* every job id in exactly one state set, the one its record names; active jobs leased;
  no record in no set (``test_fuzz.state_view``); ``get_stats`` counts the sets;
* every job not removed by an operator is completed or dead-lettered; a removed job has
  no record and no run starts after its removal;
* no job completed twice unless ``retry_job`` / ``bulk_retry`` / ``replay_dlq`` moved it
  back (runs counted in the processor against the stream's ``job-waiting from=retry``
  events, whose number equals what the calls reported); no two runs of one job overlap
  without a stall between them;
* operator calls raise only ``KitiumQueueError`` subclasses, and the per-job calls only
  ``JobNotFoundError`` / ``JobStateError`` / ``JobActiveError`` naming the job;
  ``find_orphans`` finds nothing to repair while workers run; repeated adds return the
  first job's id; FIFO groups end with no turn held and nothing counted;
* a job ``cancel_job`` answered ``"cancelling"`` for never runs again without an
  operator's retry, even when its run ended (raised, ``RetryLater``, timed out, handed
  back) before a lease renewal told its worker; and a repeated ``add_job`` with a
  removed job's ``job_id`` writes nothing (each also as a deterministic test, below).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from kitium_queue import JobQueue, KitiumQueueError, RetryLater
from kitium_queue.orphans import find_orphans
from test_fuzz import state_view

pytestmark = [pytest.mark.redis_only, pytest.mark.timeout(120)]

SEEDS = (3, 8)  # odd: FIFO groups on
RUN_S = 5.0
JOBS = 1200
LOCK_MS = 1000
QUIESCE_S = 30.0
FINAL = ("completed", "failed", "dlq")
PER_JOB_ERRORS = ("JobNotFoundError", "JobStateError", "JobActiveError")


# One processor for the in-process workers and the worker process (exec'd from source
# in both): its plan of outcomes is indexed by a Redis counter of its runs, so it
# survives RetryLater (no attempt spent) and a run in another process.
WORKER_SOURCE = """
import asyncio, os, time
import redis.asyncio as aioredis
from kitium_queue import JobQueue, NonRetryableError, RetryLater

ACTIVE = {}
RECENT = []
STATE = {}


def make_queue(url, prefix, concurrency, groups, log_path):
    if "fd" not in STATE:
        STATE["fd"] = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        STATE["url"], STATE["prefix"] = url, prefix
    q = JobQueue(
        "races", redis=url, prefix=prefix, events_max_len=1_000_000,
        settings={"lock_duration": @LOCK@, "max_stalled_interval": 300},
        worker={"concurrency": concurrency, "shutdown_timeout": 200},
        retry={"max_attempts": 3, "backoff_type": "fixed", "backoff_delay": 20},
    )
    if groups:
        from kitium_queue import FIFOQueueManager
        FIFOQueueManager(q)
    q.process("work", work)
    return q


def log(kind, jid, extra):
    line = "%s %s %d %.6f %s\\n" % (kind, jid, os.getpid(), time.time(), extra)
    os.write(STATE["fd"], line.encode())


async def work(job):
    client = STATE.get("client")
    if client is None:
        client = STATE["client"] = aioredis.Redis.from_url(STATE["url"])
    n = int(await client.incr(STATE["prefix"] + ":probe-runs:" + job.id))
    plan = job.data.get("plan", [])
    action = plan[n - 1] if n <= len(plan) else "ok"
    ms = int(job.data.get("ms", 0))
    ACTIVE[job.id] = time.monotonic()
    log("start", job.id, "%d %s" % (n, action))
    outcome = "exc"
    try:
        await asyncio.sleep(ms / 1000 + (0.4 if action == "slow" else 0))
        if ms % 3 == 0:
            await job.update_progress(50)
            await job.log("run %d" % n)
        if action == "raise":
            raise ValueError("planned failure")
        if action == "later":
            raise RetryLater(ms % 100, "planned retry-later")
        if action == "nonretry":
            raise NonRetryableError("planned non-retryable")
        outcome = "ok"
        return {"run": n}
    except asyncio.CancelledError:
        outcome = "cancelled"
        raise
    finally:
        ACTIVE.pop(job.id, None)
        RECENT.append(job.id)
        del RECENT[:-50]
        log("end", job.id, "%d %s" % (n, outcome))
""".replace("@LOCK@", str(LOCK_MS))

SUBPROCESS_MAIN = """
import asyncio, sys
ns = {}
exec(sys.argv[1], ns)
async def main():
    url, prefix, conc, groups, log_path = sys.argv[2:7]
    q = ns["make_queue"](url, prefix, int(conc), groups == "1", log_path)
    await q.start()
    print("ready", flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
"""


@dataclass
class Outcome:
    """What one seeded run found."""

    seed: int
    problems: list[str] = field(default_factory=list)
    cancel_lost: list[str] = field(default_factory=list)
    readded: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


async def final_view(client: Any, q: JobQueue, problems: list[str]) -> Any:
    """The queue's state view once workers are quiet; its problems, and ``get_stats``
    not counting the sets, added to ``problems``."""
    view = await state_view(client, q.keys)
    problems.extend(f"final state: {p}" for p in view.problems())
    stats = await q.get_stats()
    sizes = {
        s: sum(1 for w in view.where.values() if s in w)
        for s in ("wait", "active", "delayed", *FINAL)
    }
    got = {
        "wait": stats.waiting,
        "active": stats.active,
        "delayed": stats.delayed,
        "completed": stats.completed,
        "failed": stats.failed,
        "dlq": stats.dlq,
    }
    if got != sizes or stats.pending:
        problems.append(f"get_stats {got} (pending {stats.pending}) != the sets {sizes}")
    return view


def pick_id(
    rnd: random.Random, active: list[str], recent: list[str], ids: list[str], running: bool
) -> str:
    """A job id for an operator call: running now (always when ``running``), just
    finished, any, or unknown."""
    r = rnd.random()
    if (r < 0.3 or running) and active:
        return rnd.choice(active)
    if r < 0.55 and recent:
        return rnd.choice(recent)
    if r < 0.97 and ids:
        return rnd.choice(ids)
    return f"nope-{rnd.randint(0, 99)}"


async def recorded(
    calls: list[dict[str, Any]], problems: list[str], op: str, fn: Any, **args: Any
) -> dict[str, Any]:
    """Call an operator method; record its arguments, result or error and times in
    ``calls``. A ``KitiumQueueError`` is an answer; any other exception is a finding
    (added to ``problems``)."""
    rec: dict[str, Any] = {"op": op, "args": args, "t0": time.time()}
    try:
        rec["res"] = await fn(**args)
    except KitiumQueueError as exc:
        rec["exc"], rec["msg"] = type(exc).__name__, str(exc)
    except Exception as exc:  # anything else is a finding
        rec["exc"], rec["msg"] = type(exc).__name__, str(exc)
        problems.append(f"{op}({args}) raised {type(exc).__name__}: {exc!s:.300}")
    rec["t1"] = time.time()
    calls.append(rec)
    return rec


class RaceProbe:
    def __init__(self, seed: int, url: str, log_path: Path) -> None:
        self.seed = seed
        self.url = url
        self.rnd = random.Random(seed)
        self.prefix = f"kqt-races-{seed}-{uuid.uuid4().hex[:8]}"
        self.log_path = str(log_path)
        self.groups = seed % 2 == 1
        self.ns: dict[str, Any] = {}
        exec(WORKER_SOURCE, self.ns)
        self.ids: list[str] = []
        self.spec: dict[str, dict[str, Any]] = {}
        self.dups: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        self.removed: dict[str, float] = {}
        self.calls: list[dict[str, Any]] = []
        self.out = Outcome(seed)
        self.stop = False

    def queue(self, concurrency: int) -> JobQueue:
        q: JobQueue = self.ns["make_queue"](
            self.url, self.prefix, concurrency, self.groups, self.log_path
        )
        return q

    # ------------------------------------------------------------------ the run
    async def run(self) -> Outcome:
        self.client = aioredis.Redis.from_url(self.url)
        sub = subprocess.Popen(
            [
                sys.executable,
                "-c",
                SUBPROCESS_MAIN,
                WORKER_SOURCE,
                self.url,
                self.prefix,
                str(self.rnd.randint(5, 15)),
                "1" if self.groups else "0",
                self.log_path,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        workers: list[JobQueue] = []
        self.ops = self.queue(1)
        try:
            assert sub.stdout is not None
            ready = await asyncio.wait_for(asyncio.to_thread(sub.stdout.readline), 60)
            assert ready.strip() == b"ready", f"worker process did not start: {ready!r}"
            workers = [self.queue(self.rnd.randint(5, 20)) for _ in range(2)]
            for w in workers:
                await w.start()
            tasks = [
                asyncio.create_task(self.produce()),
                asyncio.create_task(self.admin(0)),
                asyncio.create_task(self.admin(1)),
                asyncio.create_task(self.watch()),
                asyncio.create_task(self.kill(sub)),
            ]
            await asyncio.sleep(RUN_S)
            self.stop = True
            await asyncio.gather(*tasks)
            await self.ops.resume()
            await self.quiesce()
            for w in workers:
                await w.close()
            workers = []
            await self.check()
        finally:
            if sub.poll() is None:
                sub.kill()
                sub.wait()
            for w in workers:
                await w.close()
            await self.ops.close()
            keys = [k async for k in self.client.scan_iter(match=f"{self.prefix}*", count=2000)]
            for i in range(0, len(keys), 1000):
                await self.client.unlink(*keys[i : i + 1000])
            await self.client.aclose()
        return self.out

    async def kill(self, sub: subprocess.Popen[bytes]) -> None:
        await asyncio.sleep(self.rnd.uniform(1.0, RUN_S - 1.5))
        sub.send_signal(signal.SIGKILL)
        await asyncio.to_thread(sub.wait)
        self.killed_pid = sub.pid

    async def produce(self) -> None:
        rnd = random.Random(self.seed * 7 + 1)
        n = 0
        while n < JOBS and not self.stop:
            batch = []
            for _ in range(rnd.randint(20, 80)):
                batch.append(self.job(rnd, n))
                n += 1
            got = await asyncio.gather(*(self.ops.add_job("work", d, **o) for d, o in batch))
            for jid, (d, o) in zip(got, batch, strict=True):
                if jid in self.spec:
                    self.out.problems.append(f"add_job of a new job returned existing id {jid}")
                    continue
                self.ids.append(jid)
                self.spec[jid] = o
                if "job_id" in o or "idempotency_key" in o:
                    self.dups.append((jid, d, o))
            await asyncio.sleep(rnd.uniform(0.02, 0.1))

    def job(self, rnd: random.Random, n: int) -> tuple[dict[str, Any], dict[str, Any]]:
        o: dict[str, Any] = {"remove_on_complete": False, "attempts": rnd.choice([2, 3])}
        o["backoff"] = {"type": "fixed", "delay": rnd.choice([0, 20, 60])}
        if rnd.random() < 0.4:
            o["priority"] = rnd.randint(0, 10)
        if rnd.random() < 0.25:
            o["delay"] = rnd.randint(1, 1200)
        if rnd.random() < 0.1:
            o["lifo"] = True
        if self.groups and rnd.random() < 0.3:
            o["message_group_id"] = f"g{rnd.randint(0, 9)}"
        if rnd.random() < 0.15:
            o["idempotency_key"] = f"ik-{self.seed}-{n}"
        if rnd.random() < 0.2:
            o["job_id"] = f"j-{self.seed}-{n}"
        if rnd.random() < 0.2:
            o["timeout"] = rnd.choice([150, 300, 1000])
        acts, weights = ("ok", "raise", "later", "slow", "nonretry"), (45, 25, 15, 10, 5)
        plan = [rnd.choices(acts, weights)[0] for _ in range(rnd.randint(0, 4))]
        return {"plan": plan, "ms": rnd.randint(0, 40), "n": n}, o

    def pick(self, rnd: random.Random, running_first: bool = False) -> str:
        active, recent = list(self.ns["ACTIVE"]), self.ns["RECENT"][-20:]
        return pick_id(rnd, active, recent, self.ids, running_first)

    async def call(self, op: str, fn: Any, **args: Any) -> dict[str, Any]:
        return await recorded(self.calls, self.out.problems, op, fn, **args)

    async def admin(self, k: int) -> None:
        rnd = random.Random(self.seed * 1000 + k)
        q = self.ops
        weighted = (
            ("retry_job", 10),
            ("remove_job", 8),
            ("cancel_job", 12),
            ("promote_job", 6),
            ("promote_delayed", 3),
            ("bulk_retry", 3),
            ("replay_dlq", 3),
            ("pause", 1),
            ("recover_stalled", 3),
            ("get_job_status", 5),
            ("get_jobs_by_status", 3),
            ("get_stats", 3),
            ("get_dlq_jobs", 1),
            ("find_orphans", 1 - k),
            ("dup_add", 5),
        )
        names, weights = zip(*weighted, strict=True)
        while not self.stop:
            await asyncio.sleep(rnd.uniform(0, 0.01))
            op = rnd.choices(names, weights)[0]
            if op == "cancel_job":
                await self.call(op, q.cancel_job, job_id=self.pick(rnd, rnd.random() < 0.5))
            elif op in ("retry_job", "remove_job", "promote_job", "get_job_status"):
                rec = await self.call(op, getattr(q, op), job_id=self.pick(rnd))
                if op == "remove_job" and rec.get("res") is True:
                    self.removed.setdefault(rec["args"]["job_id"], rec["t1"])
            elif op == "promote_delayed":
                await self.call(op, q.promote_delayed, limit=rnd.randint(0, 50))
            elif op == "bulk_retry":
                status = rnd.choice(["failed", "dlq", "completed"])
                await self.call(op, q.bulk_retry, status=status, limit=rnd.randint(0, 10))
            elif op == "replay_dlq":
                await self.call(op, q.replay_dlq, limit=rnd.randint(0, 10))
            elif op == "recover_stalled":
                await self.call(op, q.recover_stalled, limit=rnd.randint(0, 100))
            elif op == "get_jobs_by_status":
                st = rnd.choice(["waiting", "active", "delayed", *FINAL, "pending"])
                await self.call(op, q.get_jobs_by_status, status=st, limit=rnd.randint(0, 30))
            elif op in ("get_stats", "get_dlq_jobs"):
                await self.call(op, getattr(q, op))
            elif op == "pause":
                await self.call("pause", q.pause)
                await asyncio.sleep(rnd.uniform(0.02, 0.2))
                await self.call("resume", q.resume)
            elif op == "find_orphans":
                rec = await self.call(op, lambda: find_orphans(q, repair=True))
                rep = rec.get("res")
                if rep is not None and (rep.orphans or rep.unknown or rep.damaged):
                    self.out.problems.append(f"find_orphans during the run: {rep.to_dict()}")
            elif op == "dup_add":
                await self.dup_add(rnd)

    async def dup_add(self, rnd: random.Random) -> None:
        gone = [d for d in self.dups if d[0] in self.removed and "job_id" in d[2]]
        jid, d, o = rnd.choice(gone) if gone and rnd.random() < 0.4 else rnd.choice(self.dups)
        rec = await self.call("dup_add", self.ops.add_job, job_name="work", data=d, **o)
        if "res" in rec and rec["res"] != jid:
            self.out.problems.append(f"a repeated add of {jid} ({o}) returned {rec['res']}")

    async def watch(self) -> None:
        while not self.stop:
            await asyncio.sleep(0.5)
            view = await state_view(self.client, self.ops.keys)
            # Parked (pending) jobs sit in their blocker's set, outside the state sets.
            problems = [p for p in view.problems() if "st='pending'" not in p]
            if problems:
                self.out.problems.append(f"state during the run: {problems[:5]}")

    async def quiesce(self) -> None:
        deadline = time.monotonic() + QUIESCE_S
        while time.monotonic() < deadline:
            s = await self.ops.get_stats()
            if s.waiting + s.active + s.delayed + s.pending == 0 and not self.ns["ACTIVE"]:
                await asyncio.sleep(0.3)
                s = await self.ops.get_stats()
                if s.waiting + s.active + s.delayed + s.pending == 0:
                    return
            await asyncio.sleep(0.1)
        s = await self.ops.get_stats()
        self.out.problems.append(f"the queue did not quiesce in {QUIESCE_S} s: {s.to_dict()}")

    # ------------------------------------------------------------------ checks
    async def check(self) -> None:
        P = self.out.problems
        keys = self.ops.keys
        view = await final_view(self.client, self.ops, P)

        events: dict[str, list[tuple[str, dict[str, str]]]] = defaultdict(list)
        for _, f in await self.client.xrange(keys.events, "-", "+"):
            fd = {k.decode(): v.decode("utf-8", "replace") for k, v in f.items()}
            events[fd.get("id", "")].append((fd.get("e", ""), fd))
        runs: dict[str, list[tuple[str, int, float, int, str]]] = defaultdict(list)
        for line in Path(self.log_path).read_text().splitlines():
            kind, jid, pid, t, n, what = line.split()
            runs[jid].append((kind, int(pid), float(t), int(n), what))

        self.check_calls(events)
        for jid in self.ids:
            self.check_job(jid, view.state(jid), events.get(jid, []), runs.get(jid, []))
        if self.groups:
            await self.check_groups()
        self.out.summary = {
            "jobs": len(self.ids),
            "calls": Counter(c["op"] for c in self.calls),
            "errors": Counter(f"{c['op']}:{c['exc']}" for c in self.calls if "exc" in c),
            "events": Counter(e for evs in events.values() for e, _ in evs),
        }

    def check_calls(self, events: dict[str, list[tuple[str, dict[str, str]]]]) -> None:
        P = self.out.problems
        moved = 0
        for c in self.calls:
            jid = c["args"].get("job_id")
            if "exc" in c and jid is not None:
                if c["exc"] not in PER_JOB_ERRORS:
                    P.append(f"{c['op']}({jid}) raised {c['exc']}: {c['msg']:.200}")
                elif jid not in c["msg"]:
                    P.append(f"{c['op']}({jid}): the message does not name the job: {c['msg']}")
            if "res" in c:
                if c["op"] == "retry_job":
                    moved += 1
                elif c["op"] in ("bulk_retry", "replay_dlq"):
                    moved += c["res"]
                elif c["op"] == "cancel_job" and c["res"] == "removed":
                    self.removed.setdefault(jid, c["t1"])
        requeued = sum(
            1
            for evs in events.values()
            for e, f in evs
            if e == "job-waiting" and f.get("from") == "retry"
        )
        if moved != requeued:
            P.append(f"operator calls reported {moved} jobs moved back, the stream {requeued}")

    def check_job(
        self,
        jid: str,
        st: str | None,
        evs: list[tuple[str, dict[str, str]]],
        runs: list[tuple[str, int, float, int, str]],
    ) -> None:
        P = self.out.problems
        names = [e for e, _ in evs]
        if jid in self.removed:
            gone_at = names.index("job-removed") if "job-removed" in names else len(names)
            if "job-added" in names[gone_at + 1 :]:
                self.out.readded.append(f"{jid}: {names[-6:]}")
                return
            late = [r for r in runs if r[0] == "start" and r[2] > self.removed[jid]]
            if st is not None or late:
                P.append(f"removed job {jid}: record {st}, runs after its removal {late[:2]}")
            return
        if st not in FINAL:
            P.append(f"job {jid} ends {st}; events {names[-10:]}")
        requeues = sum(1 for e, f in evs if e == "job-waiting" and f.get("from") == "retry")
        stalls = names.count("job-stalled")
        if names.count("job-completed") > 1 + requeues:
            P.append(
                f"job {jid} completed {names.count('job-completed')} times, {requeues} "
                f"operator requeues: {names}"
            )
        oks = sum(1 for r in runs if r[0] == "end" and r[4] == "ok")
        if oks > 1 + requeues + stalls:
            P.append(f"job {jid}: {oks} runs returned, {requeues} requeues, {stalls} stalls")
        spans = {}
        for kind, pid, t, n, _ in runs:
            spans.setdefault(n, [pid, t, float("inf")])
            if kind == "end":
                spans[n][2] = t
        ordered = sorted(spans.values(), key=lambda s: s[1])
        for a, b in itertools.pairwise(ordered):
            # A run its process died in never ends here (inf): a later run is no overlap
            # when recovery ended the first (a stall, or a cancel dead-lettered) and an
            # operator requeued the job.
            if b[1] < a[2] and stalls == 0 and not (a[2] == float("inf") and requeues):
                P.append(f"job {jid}: two runs overlapped without a stall: {a} {b}")
        if "job-cancelling" in names:
            first = names.index("job-cancelling")
            for e in names[first + 1 :]:
                if e in ("job-completed", "job-dlq", "job-failed", "job-waiting"):
                    break
                if e in ("job-retrying", "job-delayed", "job-released", "job-stalled"):
                    self.out.cancel_lost.append(f"{jid}: {names[first : first + 6]}")
                    break

    async def check_groups(self) -> None:
        c, keys = self.client, self.ops.keys
        if await c.hlen(keys.extra("grp-of")):
            self.out.problems.append(
                f"groups: turns still owned: {await c.hgetall(keys.extra('grp-of'))}"
            )
        for g in range(10):
            held = await c.scard(keys.extra(f"grp-run:g{g}"))
            n = await c.hget(keys.extra(f"grp:g{g}"), "n")
            line = await c.zcard(keys.extra(f"parked:g:g{g}"))
            if held or n not in (None, b"0") or line:
                self.out.problems.append(
                    f"groups: g{g} ends with {held} turns held, n={n}, {line} in line"
                )


@pytest.fixture(scope="module", params=SEEDS, ids=[f"seed{s}" for s in SEEDS])
def raced(
    request: pytest.FixtureRequest, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Outcome:
    seed = request.param
    log_path = tmp_path_factory.mktemp(f"races{seed}") / "runs.log"
    return asyncio.run(RaceProbe(seed, redis_url, log_path).run())


def test_operator_calls_racing_workers_keep_every_invariant(raced: Outcome) -> None:
    assert not raced.problems, f"seed {raced.seed}: {raced.problems[:10]}\n{raced.summary}"
    calls = raced.summary["calls"]
    assert calls["cancel_job"] and calls["retry_job"] and calls["find_orphans"], raced.summary


def test_a_job_cancel_job_flagged_never_runs_again_under_races(raced: Outcome) -> None:
    assert not raced.cancel_lost, f"seed {raced.seed}: {raced.cancel_lost[:5]}"


def test_a_removed_jobs_job_id_is_not_added_again_under_races(raced: Outcome) -> None:
    assert not raced.readded, f"seed {raced.seed}: {raced.readded[:5]}"


# ---------------------------------------------------------------- deterministic cases


@pytest.mark.parametrize("ending", ["raise", "retry_later", "timeout"])
async def test_cancel_job_of_a_running_job_holds_when_its_run_ends_first(
    redis_url: str, prefix: str, ending: str
) -> None:
    q = JobQueue(
        "cancel-race", redis=redis_url, prefix=prefix, settings={"lock_duration": 30_000}
    )  # next renewal in 15 s
    runs: list[int] = []
    go = asyncio.Event()
    failed: list[Any] = []
    q.on("job-failed", failed.append)

    @q.process("w")
    async def w(job: Any) -> str:
        runs.append(job.attempts)
        if len(runs) == 1:
            await go.wait()
            if ending == "raise":
                raise ValueError("failed after the cancel")
            if ending == "retry_later":
                raise RetryLater(10)
            await asyncio.sleep(30)
        return "ran again"

    try:
        jid = await q.add_job(
            "w", {}, attempts=3, backoff=0, timeout=500 if ending == "timeout" else 0
        )
        await q.start()
        while not runs:
            await asyncio.sleep(0.01)
        assert await q.cancel_job(jid) == "cancelling"
        go.set()
        info = None
        for _ in range(500):
            info = await q.get_job_status(jid)
            if info is not None and info.status in FINAL:
                break
            await asyncio.sleep(0.01)
        assert info is not None
        assert (len(runs), info.status) == (1, "dlq"), (runs, info.status, info.failed_reason)
        assert info.failed_reason == "cancelled by cancel_job()", info.failed_reason
        # In process too: the event carries the cancel, not the run's own error.
        for _ in range(100):
            if failed:
                break
            await asyncio.sleep(0.01)
        assert [str(ev.error) for ev in failed] == ["cancelled by cancel_job()"], failed
    finally:
        await q.close()


async def test_a_job_id_suppresses_a_repeated_add_after_the_job_was_removed(
    redis_url: str, prefix: str
) -> None:
    q = JobQueue("jobid-race", redis=redis_url, prefix=prefix)
    try:
        first = await q.add_job("w", {"n": 1}, job_id="order-1")
        assert await q.remove_job(first) is True
        again = await q.add_job("w", {"n": 2}, job_id="order-1")
        assert again == first
        assert await q.get_job_status(again) is None, "the repeated add wrote a new job"
    finally:
        await q.close()


async def test_a_job_ids_window_ends_clear_frees_it_and_a_damaged_index_refuses_first(
    redis_url: str, prefix: str
) -> None:
    """A chosen id trimmed by retention stays taken for the window, is free again when
    the window ends or after ``clear()``; a ``jids`` key of another type refuses a call
    with a chosen id before anything is written, and calls without one go on."""
    from kitium_queue import DamagedKeyError

    q = JobQueue("jobid-window", redis=redis_url, prefix=prefix, idempotency_ttl=300)
    c = aioredis.from_url(redis_url)
    try:
        q.process("w", lambda job: "done")
        first = await q.add_job("w", {}, job_id="pay-7", remove_on_complete=True)
        await q.start()
        for _ in range(500):
            if await q.get_job_status(first) is None:
                break
            await asyncio.sleep(0.01)
        assert await q.get_job_status(first) is None, "retention removed the completed job"
        await q.close()
        assert await q.add_job("w", {}, job_id="pay-7") == "pay-7"
        assert await q.get_job_status("pay-7") is None, "the window holds the id"
        await asyncio.sleep(0.4)  # the window (300 ms) ended
        assert await q.add_job("w", {"n": 2}, job_id="pay-7") == "pay-7"
        info = await q.get_job_status("pay-7")
        assert info is not None and info.data == {"n": 2}
        await q.clear()
        assert await q.add_job("w", {"n": 3}, job_id="pay-7") == "pay-7"
        info = await q.get_job_status("pay-7")
        assert info is not None and info.data == {"n": 3}, "clear() frees chosen ids"
        await q.clear()
        await c.set(q.keys.extra("jids"), "not a zset")
        before = await c.dbsize()
        with pytest.raises(DamagedKeyError, match="jids"):
            await q.add_job("w", {}, job_id="other")
        assert await c.dbsize() == before
        assert await q.add_job("w", {})  # no chosen id: not concerned
    finally:
        await q.close()
        await c.aclose()


async def test_ids_made_by_features_or_without_a_window_hold_none_and_the_set_expires(
    redis_url: str, prefix: str
) -> None:
    """Ids a feature makes (tracing: a UUID per job) and ``job_id_window=False`` put
    nothing in ``jids`` (a window per generated id cost ~140 bytes per job for a day),
    and such an id may be added again at once after removal; ``jids`` itself expires
    with its last window, also when no chosen id is added again."""
    from kitium_queue.features.tracing import OpenTelemetryTracing

    q = JobQueue("jobid-made", redis=redis_url, prefix=prefix, idempotency_ttl=400)
    OpenTelemetryTracing(q)
    c = aioredis.from_url(redis_url)
    jids = q.keys.extra("jids")
    try:
        made = [await q.add_job("w", {"i": i}) for i in range(20)]
        assert len(set(made)) == 20 and not await c.exists(jids)
        mine = await q.add_job("w", {}, job_id="mine-1", job_id_window=False)
        assert await q.remove_job(mine)
        assert await q.add_job("w", {"again": True}, job_id="mine-1", job_id_window=False)
        info = await q.get_job_status("mine-1")
        assert info is not None and info.data == {"again": True}
        await q.add_job("w", {}, job_id="held-1")
        assert 0 < await c.pttl(jids) <= 400
    finally:
        await q.clear(force=True)
        await q.close()
        await c.aclose()


async def test_erasure_ends_the_chosen_ids_window(redis_url: str, prefix: str) -> None:
    """``erase_subject`` promises nothing of the job is left: its chosen id's window
    goes too, and the id may be added again."""
    q = JobQueue(
        "jobid-erased", redis=redis_url, prefix=prefix, advanced={"compliance": {"enabled": True}}
    )
    c = aioredis.from_url(redis_url)
    try:
        jid = await q.add_job("sync", {"n": 1}, job_id="acct-17:sync", subject_id="customer-17")
        await q.advanced.compliance.erase_subject("customer-17")
        assert await c.zscore(q.keys.extra("jids"), jid) is None
        assert await q.add_job("sync", {"n": 2}, job_id=jid, subject_id="customer-17") == jid
        info = await q.get_job_status(jid)
        assert info is not None and info.data == {"n": 2}
    finally:
        await q.clear(force=True)
        await q.close()
        await c.aclose()
