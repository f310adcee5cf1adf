"""A Hypothesis state machine over the Lua transitions, against a real Redis.

Every rule calls one script directly with an injected clock (``now`` = ARGV[2]), exactly as
the library does, and checks the reply against a small Python model of the job lifecycle
(DESIGN.md §2). After every step the invariants compare Redis with the model:

* every job is in exactly one state set, the one its hash field ``st`` names, with the
  score the model predicts (wait rank, lease deadline, due time, finish time); removed
  jobs have no hash and are in no set; no set holds an unknown id;
* active jobs carry their lease token (``lt``), no other job has one;
* attempts are never negative and match the model, as do stall counts;
* a completed job is never claimed again (unless explicitly retried);
* an outcome or renewal sent with a stale, foreign or forged token changes nothing.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from workers.harness import Engine

T0 = 1_700_000_000_000
MAX_STALLED = 1
MAX_JOBS = 12
BAND = 2**36
HALF = 2**35
SETS = ("wait", "active", "delayed", "completed", "failed", "dlq")
SET_OF_STATE = {
    "waiting": "wait",
    "active": "active",
    "delayed": "delayed",
    "completed": "completed",
    "failed": "failed",
    "dlq": "dlq",
}
FINISHED = ("completed", "failed", "dlq")
OUTCOME = {  # strategies for the arguments of one finish outcome
    "kind": st.sampled_from(["C", "R", "F", "D", "H"]),
    "delay": st.sampled_from([0, 700]),
    "keep_count": st.sampled_from([-1, -1, 0, 1]),
    "dlq": st.booleans(),
}


@dataclass
class MJob:
    id: str
    pri: int
    q: int  # signed sequence: negative for LIFO
    state: str
    attempts: int = 0
    stalls: int = 0
    token: int | None = None
    deadline: int | None = None  # lease deadline while active
    due: int | None = None  # while delayed
    finished_at: int | None = None  # while completed / failed / dlq
    cancel: bool = False
    result: str | None = None
    tokens: list[int] = field(default_factory=list)  # every token it was leased under

    @property
    def rank(self) -> int:
        return (65535 - self.pri) * BAND + HALF + self.q

    def score(self) -> float:
        if self.state == "waiting":
            return float(self.rank)
        if self.state == "active":
            assert self.deadline is not None
            return float(self.deadline)
        if self.state == "delayed":
            assert self.due is not None
            return float(self.due)
        assert self.finished_at is not None
        return float(self.finished_at)


class QueueMachine(RuleBasedStateMachine):
    """Model + real Redis, one fresh key prefix per example."""

    url = ""

    def __init__(self) -> None:
        super().__init__()
        self.client = redis.Redis.from_url(self.url)
        self.prefix = f"kqsm{uuid.uuid4().hex[:10]}"
        self.engine = Engine(self.client, "sm", self.prefix)
        self.now = T0
        self.seq = 0
        self.lease_counter = 0
        self.paused = False
        self.jobs: dict[str, MJob] = {}
        self.removed: set[str] = set()
        self.completed_ever: set[str] = set()

    def teardown(self) -> None:
        keys = list(self.client.scan_iter(match=f"{self.prefix}:*", count=1000))
        if keys:
            self.client.delete(*keys)
        self.client.close()

    # ------------------------------------------------------------------ helpers
    def _pick(self, index: int, prefer: str | None = None) -> str | None:
        """A job id by index: among jobs in state ``prefer`` if there are any, else any
        job ever created (removed ones included)."""
        ids = sorted((j.id for j in self.jobs.values() if j.state == prefer), key=int)
        if not ids:
            ids = sorted({*self.jobs, *self.removed}, key=int)
        return ids[index % len(ids)] if ids else None

    def _in(self, state: str) -> list[MJob]:
        return [j for j in self.jobs.values() if j.state == state]

    def _delete(self, job_id: str) -> None:
        del self.jobs[job_id]
        self.removed.add(job_id)
        self.completed_ever.discard(job_id)

    def _snapshot(self) -> dict[str, Any]:
        """All of the queue's keys except the event stream, for no-change checks."""
        out: dict[str, Any] = {}
        # KEYS, not SCAN: one round trip however many keys other tests left on the
        # shared server (SCAN pages through all of them on every snapshot).
        for key in self.client.keys(f"{self.prefix}:*"):
            if key == self.engine.keys.events.encode():
                continue
            kind = self.client.type(key)
            if kind == b"hash":
                out[key] = self.client.hgetall(key)
            elif kind == b"zset":
                out[key] = self.client.zrange(key, 0, -1, withscores=True)
            elif kind == b"string":
                out[key] = self.client.get(key)
            else:
                out[key] = kind
        return out

    def _dead_letter(self, job: MJob, dlq: bool) -> None:
        job.state = "dlq" if dlq else "failed"
        job.finished_at = self.now
        job.token = job.deadline = job.due = None

    def _to_wait(self, job: MJob) -> None:
        job.state = "waiting"
        job.token = job.deadline = job.due = job.finished_at = None

    def _to_delayed(self, job: MJob, due: int) -> None:
        job.state = "delayed"
        job.due = due
        job.token = job.deadline = None

    def _promote(self) -> int:
        due = [j for j in self._in("delayed") if j.due is not None and j.due <= self.now]
        for j in due:
            self._to_wait(j)
        return len(due)

    def _recover(self, dlq: bool) -> tuple[list[str], list[str]]:
        expired = sorted(
            (j for j in self._in("active") if j.deadline is not None and j.deadline <= self.now),
            key=lambda j: (j.deadline, j.id),
        )
        back, dead = [], []
        for j in expired:
            j.stalls += 1
            j.attempts -= 1
            if j.stalls > MAX_STALLED:
                self._dead_letter(j, dlq)  # keeps a cancel flag until retried
                dead.append(j.id)
            elif j.cancel:
                # Flagged by cancel_job() and its holder is gone: cancelled, not re-run.
                j.cancel = False
                self._dead_letter(j, dlq)
                dead.append(j.id)
            else:
                self._to_wait(j)
                back.append(j.id)
        return back, dead

    def _trim(self, state: str, keep_count: int) -> None:
        if keep_count < 0:
            return
        members = sorted(self._in(state), key=lambda j: (j.finished_at, j.id))
        excess = len(members) - keep_count
        for j in members[: max(0, min(excess, 1000))]:
            self._delete(j.id)

    def _requeue(self, job: MJob) -> None:
        job.attempts = job.stalls = 0
        job.cancel = False
        job.result = None
        self._to_wait(job)
        self.completed_ever.discard(job.id)

    # ------------------------------------------------------------------ rules
    @initialize(
        n=st.integers(1, 6), priorities=st.lists(st.sampled_from([0, 1, 5]), min_size=6, max_size=6)
    )
    def seed_jobs(self, n: int, priorities: list[int]) -> None:
        for i in range(n):
            self.enqueue(priorities[i], 0, False)

    @precondition(lambda self: len(self.jobs) < MAX_JOBS)
    @rule(
        priority=st.sampled_from([0, 1, 5]),
        delay=st.sampled_from([0, 0, 400, 2000]),
        lifo=st.booleans(),
    )
    def enqueue(self, priority: int, delay: int, lifo: bool) -> None:
        jid = self.engine.enqueue(self.now, priority=priority, delay=delay, lifo=lifo)
        self.seq += 1
        assert jid == str(self.seq)
        job = MJob(jid, priority, -self.seq if lifo else self.seq, "waiting")
        if delay > 0:
            self._to_delayed(job, self.now + delay)
        self.jobs[jid] = job

    @rule(n=st.integers(1, 3), lease=st.sampled_from([500, 1500]))
    def claim(self, n: int, lease: int) -> None:
        reply = self.engine.claim(self.now, n, lease=lease, max_stalled=MAX_STALLED)
        self._promote()
        back, dead = self._recover(dlq=True)
        assert [b.decode() for b in reply[3]] == back
        assert [b.decode() for b in reply[4]] == dead
        if self.paused:
            assert reply[0] == b"paused" and len(reply) == 5
            return
        picked = sorted(self._in("waiting"), key=lambda j: j.rank)[:n]
        got = [entry[0].decode() for entry in reply[5:]]
        assert got == [j.id for j in picked], (got, [j.id for j in picked])
        assert not set(got) & self.completed_ever, "a completed job was claimed again"
        if not picked:
            assert reply[0] == b"empty" and int(reply[2]) == 0
            return
        assert reply[0] == b"ok"
        # A token is the clock in units of 10 µs, or the last one + 1 when that is not
        # above it (claim.lua: tokens never repeat, even after Redis lost writes).
        self.lease_counter = max(self.lease_counter + 1, self.now * 100)
        assert int(reply[2]) == self.lease_counter
        for j, entry in zip(picked, reply[5:], strict=True):
            j.state = "active"
            j.attempts += 1
            j.token = self.lease_counter
            j.tokens.append(self.lease_counter)
            j.deadline = self.now + lease
            assert int(entry[4]) == j.attempts
            assert int(entry[6]) == j.stalls

    @precondition(lambda self: bool(self._in("active")))
    @rule(index=st.integers(0, 40), **OUTCOME)
    def finish_current(self, index: int, kind: str, delay: int, keep_count: int, dlq: bool) -> None:
        jid = self._pick(index, "active")
        assert jid is not None
        self._finish(jid, self.jobs[jid].token, kind, delay, keep_count, dlq)

    @rule(
        index=st.integers(0, 40),
        prefer=st.sampled_from(["active", "active", None]),
        which=st.sampled_from(["old", "foreign", "forged"]),
        **OUTCOME,
    )
    def finish_stale(
        self,
        index: int,
        prefer: str | None,
        which: str,
        kind: str,
        delay: int,
        keep_count: int,
        dlq: bool,
    ) -> None:
        jid = self._pick(index, prefer)
        if jid is None:
            return
        job = self.jobs.get(jid)
        current = job.token if job is not None else None
        old = [t for t in (job.tokens if job is not None else []) if t != current]
        foreign = [j.token for j in self.jobs.values() if j.token not in (None, current)]
        token: int | str | None
        if which == "old" and old:
            token = old[-1]
        elif which == "foreign" and foreign:
            token = foreign[0]
        elif which == "foreign":
            token = self.lease_counter + 7  # never issued yet
        else:
            token = "forged"
        self._finish(jid, token, kind, delay, keep_count, dlq)

    def _finish(
        self,
        jid: str,
        token: int | str | None,
        kind: str,
        delay: int,
        keep_count: int,
        dlq: bool,
    ) -> None:
        job = self.jobs.get(jid)
        valid = job is not None and job.state == "active" and token == job.token
        before = None if valid else self._snapshot()
        status = self.engine.finish(
            self.now,
            jid,
            token,
            kind,
            payload=f"r{self.now}".encode(),
            delay=delay,
            keep_count=keep_count,
            dlq=dlq,
        )
        if job is None:
            # No record and no active entry: taken out by the queue's own call (clear,
            # erasure), not lost behind its back ('missing' needs the active entry).
            assert status == "removed"
        elif not valid:
            assert status == "lease-lost"
        elif job.cancel and kind in ("R", "D", "H"):
            # cancel_job() flagged the run: anything but a completion fails it for good.
            assert status == "cancelled"
            kind = "F"
        else:
            assert status == "ok"
        if not valid:
            assert self._snapshot() == before, "a stale outcome changed the queue"
            return
        assert job is not None
        job.cancel = False
        job.token = job.deadline = None
        if kind == "C":
            if keep_count == 0:
                self._delete(jid)
            else:
                job.state = "completed"
                job.finished_at = self.now
                job.result = f"r{self.now}"
                self.completed_ever.add(jid)
                self._trim("completed", keep_count)
        elif kind == "R":
            if delay > 0:
                self._to_delayed(job, self.now + delay)
            else:
                self._to_wait(job)
        elif kind == "F":
            self._dead_letter(job, dlq)
            if not dlq:
                if keep_count == 0:
                    self._delete(jid)
                else:
                    self._trim("failed", keep_count)
        elif kind == "D":
            job.attempts -= 1
            if delay > 0:
                self._to_delayed(job, self.now + delay)
            else:
                self._to_wait(job)
        else:  # H
            job.attempts -= 1
            self._to_wait(job)

    @rule(index=st.integers(0, 40), stale=st.booleans(), lease=st.sampled_from([500, 1500]))
    def extend(self, index: int, stale: bool, lease: int) -> None:
        jid = self._pick(index, "active")
        if jid is None:
            return
        job = self.jobs.get(jid)
        if not stale and job is not None and job.token is not None:
            token: int | str = job.token
        else:
            old = [t for t in (job.tokens if job else []) if job is None or t != job.token]
            token = old[-1] if old else "forged"
        valid = job is not None and job.state == "active" and token == job.token
        before = None if valid else self._snapshot()
        lost, cancelled = self.engine.extend(self.now, lease, [(jid, token)])
        if not valid:
            assert (lost, cancelled) == ([jid], [])
            assert self._snapshot() == before, "a stale renewal changed the queue"
            return
        assert job is not None
        assert lost == []
        assert cancelled == ([jid] if job.cancel else [])
        job.deadline = self.now + lease

    @rule(ms=st.integers(0, 2500))
    def advance_time(self, ms: int) -> None:
        self.now += ms

    @rule(dlq=st.booleans())
    def recover(self, dlq: bool) -> None:
        reply = self.engine.recover(self.now, max_stalled=MAX_STALLED, dlq=dlq)
        assert reply == self._recover(dlq)

    @rule()
    def promote(self) -> None:
        moved = self.engine.run("promote", self.now, 1000)
        assert int(moved) == self._promote()

    @rule(index=st.integers(0, 40), prefer=st.sampled_from(["delayed", None]))
    def promote_one(self, index: int, prefer: str | None) -> None:
        """promote_job: one delayed job to wait, due or not; others refused unchanged."""
        jid = self._pick(index, prefer)
        if jid is None:
            return
        job = self.jobs.get(jid)
        if job is None or job.state != "delayed":
            before = self._snapshot()
            code = "KQ_JOB_NOT_FOUND" if job is None else "KQ_BAD_STATE"
            with pytest.raises(redis.ResponseError, match=code):
                self.engine.run("promote", self.now, 1, "1", jid)
            assert self._snapshot() == before
            return
        assert int(self.engine.run("promote", self.now, 1, "1", jid)) == 1
        self._to_wait(job)

    @rule(index=st.integers(0, 40), prefer=st.sampled_from(["completed", "dlq", "failed", None]))
    def retry(self, index: int, prefer: str | None) -> None:
        jid = self._pick(index, prefer)
        if jid is None:
            return
        job = self.jobs.get(jid)
        if job is None or job.state not in FINISHED:
            before = self._snapshot()
            code = "KQ_JOB_NOT_FOUND" if job is None else "KQ_BAD_STATE"
            with pytest.raises(redis.ResponseError, match=code):
                self.engine.run("retry", self.now, "ids", jid)
            assert self._snapshot() == before
            return
        moved = self.engine.run("retry", self.now, "ids", jid)
        assert [m.decode() for m in moved] == [jid]
        self._requeue(job)

    @rule(limit=st.integers(1, 3))
    def replay(self, limit: int) -> None:
        moved = [m.decode() for m in self.engine.run("replay", self.now, limit)]
        expected = sorted(self._in("dlq"), key=lambda j: (j.finished_at, j.id))[:limit]
        assert moved == [j.id for j in expected]
        for j in expected:
            self._requeue(j)

    @rule(index=st.integers(0, 40))
    def remove(self, index: int) -> None:
        jid = self._pick(index)
        if jid is None:
            return
        job = self.jobs.get(jid)
        (status,) = self.engine.run("remove", self.now, jid)
        if job is None:
            assert status == b"missing"
        elif job.state == "active":
            assert status == b"active"
        else:
            assert status == b"removed"
            self._delete(jid)

    @rule(index=st.integers(0, 40))
    def cancel(self, index: int) -> None:
        jid = self._pick(index)
        if jid is None:
            return
        job = self.jobs.get(jid)
        (status,) = self.engine.run("cancel", self.now, jid)
        if job is None:
            assert status == b"missing"
        elif job.state in ("waiting", "delayed"):
            assert status == b"removed"
            self._delete(jid)
        elif job.state == "active":
            assert status == b"flagged"
            job.cancel = True
        else:
            assert status == b"finished"

    @rule(pause=st.sampled_from([True, False, False, False]))
    def pause(self, pause: bool) -> None:
        self.engine.run("pause", self.now, "1" if pause else "0")
        self.paused = pause

    # ------------------------------------------------------------------ invariants
    @invariant()
    def redis_matches_model(self) -> None:
        keys = self.engine.keys
        ids = sorted({*self.jobs, *self.removed}, key=int)
        pipe = self.client.pipeline(transaction=False)
        for jid in ids:
            pipe.hgetall(keys.job(jid))
            for s in SETS:
                pipe.zscore(getattr(keys, s), jid)
        for s in SETS:
            pipe.zcard(getattr(keys, s))
        pipe.get(keys.lease)
        replies = pipe.execute()
        per_job = 1 + len(SETS)
        for i, jid in enumerate(ids):
            raw, *scores = replies[i * per_job : (i + 1) * per_job]
            h = {k.decode(): v.decode() for k, v in raw.items()}
            member_of = {s: sc for s, sc in zip(SETS, scores, strict=True) if sc is not None}
            job = self.jobs.get(jid)
            if job is None:
                assert not h, f"removed job {jid} still has a hash: {h}"
                assert not member_of, f"removed job {jid} still in {member_of}"
                continue
            assert h.get("st") == job.state, (jid, h.get("st"), job)
            expected_set = SET_OF_STATE[job.state]
            assert list(member_of) == [expected_set], (jid, job.state, member_of)
            assert member_of[expected_set] == job.score(), (jid, member_of, job)
            attempts = int(h["a"])
            assert attempts >= 0, (jid, attempts)
            assert attempts == job.attempts, (jid, attempts, job)
            assert int(h["s"]) == job.stalls, (jid, h["s"], job)
            if job.state == "active":
                assert h.get("lt") == str(job.token), (jid, h.get("lt"), job)
            else:
                assert "lt" not in h, (jid, h)
            assert ("cx" in h) == job.cancel, (jid, h, job)
            if job.state == "completed":
                assert h.get("r") == job.result
        cards = replies[len(ids) * per_job : len(ids) * per_job + len(SETS)]
        assert sum(cards) == len(self.jobs), "a state set holds an unknown job"
        lease = replies[-1]
        assert int(lease or 0) == self.lease_counter


@pytest.mark.timeout(600)  # many examples: wall time scales with the machine
@pytest.mark.redis_only
def test_transitions_state_machine(redis_url: str) -> None:
    machine = type("BoundQueueMachine", (QueueMachine,), {"url": redis_url})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=50,
            stateful_step_count=80,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
            print_blob=True,
        ),
    )
