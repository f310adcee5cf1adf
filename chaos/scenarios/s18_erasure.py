"""Item 15: erasure by subject racing workers that get SIGKILLed, and a Redis restart.

Workers (``--compliance 1``: ``ComplianceManager`` on the queue; 4 slots, lease 2 s,
sweep every 250 ms) run 20-150 ms jobs of 8 (long: 24) subjects, each job's data
holding its subject's marker; some runs fail (three attempts, then the DLQ). A producer
adds jobs all along. Half of the subjects are erased one after the other while the
others keep flowing: before each erasure the producer stops adding that subject's jobs,
then ``erase_subject`` runs while workers hold some of its jobs; right after it a busy
worker is SIGKILLed (a replacement starts), leaving leases of erased and kept jobs to
expire; half way, redis-server is SIGKILLed and restarted from its AOF (``always``).

Checks:

* after the run, a raw read of the whole keyspace (every key by type, and its ``DUMP``
  with RDB compression off) holds no erased subject's marker: no record, log, result,
  DLQ entry, index or event survived, and nothing came back through the recovery of a
  killed worker's leases;
* no run of an erased job started after its erasure returned (1 s margin for a run
  claimed just before it), and none of them is in any state set;
* every job of the kept subjects acknowledged by the producer finished (completed or,
  for the seeded failures, dead-lettered) with its data intact: nothing lost, no
  duplicate completion (the ledger).
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from typing import Any

from kitium_queue import JobQueue, SyncJobQueue
from kitium_queue.keys import QueueKeys

from ..core import Context, Result, scenario
from ..infra import runs_by_job
from ..ledger import Ledger
from ._common import closing_checks, retrying, stats, stop_fleet, tracebacks, wait_final

QUEUE = "erasure"


class SubjectProducer(threading.Thread):
    """Adds batches of jobs of the open subjects; ``close(subject)`` returns once no job
    of that subject can be added any more."""

    def __init__(
        self,
        queue: SyncJobQueue,
        ledger: Ledger,
        markers: dict[str, str],
        victims: set[str],
        seed: int = 15,
        pause: float = 0.03,
    ) -> None:
        super().__init__(name="erasure-producer", daemon=True)
        self.queue, self.ledger, self.markers, self.victims = queue, ledger, markers, victims
        self.rnd = random.Random(seed)
        self.open = set(markers)
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.by_subject: dict[str, list[str]] = {s: [] for s in markers}
        self.n = 0
        self.failures = 0
        self.pause = pause

    def run(self) -> None:
        while not self.stop_event.is_set():
            with self.lock:
                subjects = sorted(self.open)
                jobs = []
                for _ in range(10):
                    self.n += 1
                    s = self.rnd.choice(subjects)
                    fail = self.rnd.random() < 0.05
                    data = {
                        "ms": self.rnd.randint(20, 150),
                        "m": self.markers[s],
                        "fail_on": [1, 2, 3] if fail else [],
                    }
                    jobs.append(
                        (
                            "work",
                            data,
                            {
                                "job_id": f"p{self.n}",
                                "subject_id": s,
                                "attempts": 3,
                                "backoff": {"type": "fixed", "delay": 20},
                                "remove_on_complete": False,
                            },
                        )
                    )
                try:
                    ids = self.queue.add_jobs(jobs)
                except Exception:
                    self.failures += 1
                else:
                    for jid, (_, data, opts) in zip(ids, jobs, strict=True):
                        s = opts["subject_id"]
                        self.by_subject[s].append(jid)
                        if s not in self.victims:
                            expect = "dlq" if data["fail_on"] else "completed"
                            self.ledger.record([jid], expect=expect, tag=s)
            self.stop_event.wait(self.pause)

    def close(self, subject: str) -> None:
        with self.lock:
            self.open.discard(subject)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=30)


def _erase(url: str, prefix: str, subject: str) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        q = JobQueue(QUEUE, redis=url, prefix=prefix, advanced={"compliance": {"enabled": True}})
        try:
            report = await q.advanced.compliance.erase_subject(subject)
            return report.to_dict()
        finally:
            await q.close()

    return asyncio.run(go())


def _keyspace_blobs(client: Any, prefix: str) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        kind = client.type(key).decode()
        parts: list[bytes] = [key]
        if kind == "string":
            parts.append(client.get(key) or b"")
        elif kind == "hash":
            for k, v in client.hgetall(key).items():
                parts += [k, v]
        elif kind == "list":
            parts += client.lrange(key, 0, -1)
        elif kind == "set":
            parts += list(client.smembers(key))
        elif kind == "zset":
            parts += client.zrange(key, 0, -1)
        elif kind == "stream":
            for eid, fields in client.xrange(key):
                parts.append(eid)
                for k, v in fields.items():
                    parts += [k, v]
        parts.append(client.dump(key) or b"")
        out[key] = b"\n".join(parts)
    return out


@scenario("erasure", 15, "erasure by subject racing workers SIGKILLed and a Redis restart")
def run(ctx: Context, res: Result) -> None:
    lease_ms, sweep_ms = 2000, 250
    n_subjects = ctx.pick(8, 24)
    rnd = random.Random(15)
    srv = ctx.redis(appendfsync="always")
    prefix = ctx.prefix()
    keys = QueueKeys(QUEUE, prefix)
    client = ctx.client(srv.url)
    markers = {
        f"subject-{i:02d}": f"MARK{i:02d}x{uuid.uuid4().hex[:10]}" for i in range(n_subjects)
    }
    victims = [f"subject-{i:02d}" for i in range(0, n_subjects, 2)]
    fleet = ctx.fleet(
        srv.url,
        QUEUE,
        prefix,
        compliance=1,
        concurrency=4,
        lock_duration=lease_ms,
        stalled_interval=sweep_ms,
        max_stalled=1000,
    )
    for w in [fleet.start() for _ in range(3)]:
        w.wait_ready()
    producer_q = ctx.producer(srv.url, QUEUE, prefix, advanced={"compliance": {"enabled": True}})
    # Short form: a batch of 10 every 80 ms, about what the fleet runs (less to drain).
    pause = ctx.pick(0.08, 0.03)
    producer = SubjectProducer(producer_q, ctx.ledger, markers, set(victims), pause=pause)
    producer.start()
    erased_at: dict[str, float] = {}
    reports: list[dict[str, Any]] = []
    killed = restarts = interrupted = 0
    restart_at = len(victims) // 2
    try:
        for k, subject in enumerate(victims):
            time.sleep(rnd.uniform(0.4, 0.9))
            producer.close(subject)
            t0 = time.monotonic()
            reports.append(retrying(lambda s=subject: _erase(srv.url, prefix, s), 30))
            erased_at[subject] = time.time()
            reports[-1]["took_s"] = round(time.monotonic() - t0, 3)
            busy = [w for w in fleet.live() if w.running_jobs()] or fleet.live()
            if busy:
                victim = rnd.choice(busy)
                interrupted += len(victim.running_jobs())
                victim.kill()
                killed += 1
                fleet.start().wait_ready()
            if k == restart_at:
                srv.kill()
                time.sleep(0.5)
                srv.restart()
                restarts += 1
    finally:
        producer.stop()
    took = wait_final(ctx, client, keys, ctx.pick(120, 400), fleet=fleet, keep_alive=3)
    time.sleep(lease_ms / 1000 + 0.5)  # let every abandoned or expired lease play out
    closing_checks(ctx, res, client, keys, fleet)

    old = client.config_get("rdbcompression")["rdbcompression"]
    client.config_set("rdbcompression", "no")
    try:
        blobs = _keyspace_blobs(client, prefix)
    finally:
        client.config_set("rdbcompression", old)
    traces = {
        s: sorted(k.decode() for k, b in blobs.items() if markers[s].encode() in b) for s in victims
    }
    res.expect(
        "no trace of an erased subject anywhere (records, logs, sets, events, DUMP)",
        not any(traces.values()),
        {s: t[:5] for s, t in traces.items() if t},
    )
    kept = [s for s in markers if s not in victims]
    res.expect(
        "the kept subjects' data is still there",
        all(any(markers[s].encode() in b for b in blobs.values()) for s in kept),
    )
    runs = runs_by_job(fleet.lines())
    late = []
    for s in victims:
        for jid in producer.by_subject[s]:
            for r in runs.get(jid, []):
                if r.start > erased_at[s] + 1.0:
                    late.append((jid, s, round(r.start - erased_at[s], 3)))
    res.expect("no erased job started after its erasure", not late, late[:5])
    leftover = [
        jid for s in victims for jid in producer.by_subject[s] if client.exists(keys.job(jid))
    ]
    res.expect("no erased job record exists", not leftover, leftover[:5])
    erased_jobs = sum(r["jobs"] for r in reports)
    acked = sum(len(producer.by_subject[s]) for s in victims)
    res.expect(
        "every acknowledged job of an erased subject was erased",
        erased_jobs >= acked,
        f"{erased_jobs} erased, {acked} acknowledged",
    )
    res.figures.update(
        {
            "subjects": n_subjects,
            "erasures": len(victims),
            "jobs_added": producer.n,
            "jobs_erased": erased_jobs,
            "erased_while_active": sum(r["active"] for r in reports),
            "events_scrubbed": sum(r["events"] for r in reports),
            "erasure_s": stats(r["took_s"] for r in reports),
            "kills": killed,
            "interrupted_runs": interrupted,
            "restarts": restarts,
            "producer_failures": producer.failures,
            "drain_after_last_fault_s": round(took, 2),
        }
    )
    res.expect(
        "the faults happened: a worker SIGKILLed after each erasure, runs interrupted, "
        "Redis restarted",
        killed == len(victims) and interrupted > 0 and restarts == 1,
        {"kills": killed, "interrupted_runs": interrupted, "restarts": restarts},
    )
    tb = tracebacks(fleet)
    res.expect("no traceback in worker logs", not tb, tb[:2])
    stop_fleet(res, fleet)
