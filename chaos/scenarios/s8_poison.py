"""Item 8: poison input and damaged keys.

Each case runs on its own queue with its own workers (2 workers x 4 slots, lease 1 s,
renewed every 500 ms, sweep every 200 ms) so that one case cannot hide another:

    payloads     Hypothesis-generated payloads written straight into waiting jobs' 'd'
                 field: undecodable ones are dead-lettered on their first claim with an
                 "undecodable payload" reason, decodable ones complete; workers survive
    fields       Hypothesis-generated garbage in the other fields of waiting jobs
                 (stalls, attempts, timestamps, options, name, priority, state, ...):
                 every job still ends completed or dead-lettered with a reason, nothing
                 stuck, workers survive, the queue keeps working
    unknown      a job name no worker has a processor for: retried ``attempts`` times,
                 then dead-lettered with a reason naming the missing processor
    raising      a job that always raises: exactly ``attempts`` runs, spaced by the
                 configured exponential backoff (checked on the run timestamps)
    hanging      a job that never returns, on a 1-slot worker: the timeout fails it and
                 frees the slot for the next job (short form: 1 s timeout; long form:
                 the default timeout, 300 s); the same with a plain (thread) function
    oversized    a payload above max_payload_bytes: PayloadTooLargeError at enqueue,
                 nothing written
    damage       keys deleted or altered while jobs wait or run: a waiting job's hash,
                 its 'd' field, its wait-set entry, the whole wait set, the active set,
                 a running job's lease token, a running job's hash, a delayed job's hash
"""

from __future__ import annotations

import contextlib
import itertools
import random
import time
from collections import Counter
from typing import Any

import orjson
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from kitium_queue import PayloadTooLargeError, SyncJobQueue
from kitium_queue.keys import QueueKeys
from kitium_queue.options import DEFAULT_TIMEOUT_MS

from ..core import Context, Result, scenario
from ..infra import Fleet, wait_for
from ..ledger import Ledger, check, snapshot, stream
from ._common import closing_checks, stop_fleet, tracebacks, wait_final

LEASE = {"concurrency": 4, "lock_duration": 1000, "lock_renew": 500, "stalled_interval": 200,
         "max_stalled": 2}
FAST_RETRY = {"attempts": 2, "backoff": {"type": "fixed", "delay": 50}}
FUZZ_FIELDS = ("s", "a", "ts", "o", "n", "p", "q", "st", "lt", "e", "due", "pg", "ik")


def examples(strategy: st.SearchStrategy[Any], n: int, seed: int) -> list[Any]:
    """``n`` examples of ``strategy`` from Hypothesis (deterministic for a seed)."""
    out: list[Any] = []

    @settings(max_examples=n, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), derandomize=True)
    @given(strategy)
    def collect(x: Any) -> None:
        out.append(x)

    random.seed(seed)
    collect()
    return out[:n]


NASTY = [
    b"", b"\x00", b"\xff", b"\xff\xfe\x00", b"{", b'{"a":', b"[" * 2000, b"[" * 1100 + b"]" * 1100,
    b"NaN", b"Infinity", b'{"a":1} trailing', b"\xef\xbb\xbf{}", b'"\\ud800"', b"1" * 400,
    b"'single'", b"{'a': 1}", b"\x80\x81", b"true false", b"\"unterminated",
]

payload_strategy = st.one_of(
    st.sampled_from(NASTY),
    st.binary(max_size=64),
    st.text(max_size=32).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.builds(lambda v, cut: orjson.dumps(v)[:cut],
              st.dictionaries(st.text(max_size=5),
                              st.integers(-(2**63), 2**63 - 1) | st.text(max_size=5),
                              max_size=3),
              st.integers(0, 40)),
)
field_strategy = st.tuples(st.sampled_from(FUZZ_FIELDS),
                           st.one_of(st.binary(max_size=12), st.sampled_from(
                               [b"", b"-1", b"1e400", b"99999999999999999999", b"nan", b"0x10",
                                b" 1", b"\xff", b"active", b"completed"])))


class Case:
    """One isolated queue + workers + ledger for a poison case."""

    def __init__(self, ctx: Context, url: str, name: str, *, workers: int = 2,
                 **settings_: Any) -> None:
        self.ctx = ctx
        self.name = name
        self.prefix = ctx.prefix()
        self.keys = QueueKeys(name, self.prefix)
        self.client = ctx.client(url)
        self.producer: SyncJobQueue = ctx.producer(url, name, self.prefix)
        self.ledger = Ledger()
        self.fleet: Fleet = ctx.fleet(url, name, self.prefix, **{**LEASE, **settings_})
        self.workers = [self.fleet.start(f"{name}-{i + 1}") for i in range(workers)]

    def ready(self) -> Case:
        for w in self.workers:
            w.wait_ready()
        return self

    def add(self, name: str, data: Any = None, tag: str = "", expect: str = "final",
            **opts: Any) -> str:
        jid = self.producer.add_job(name, data, remove_on_complete=False, **opts)
        self.ledger.record([jid], tag=tag or name, expect=expect)
        return jid

    def wait(self, timeout: float, ids: list[str] | None = None) -> float:
        return wait_final(self.ctx, self.client, self.keys, timeout,
                          ids=ids if ids is not None else self.ledger.ids())

    def close(self, res: Result, *, ignore: tuple[str, ...] = ()) -> dict[str, Any]:
        _, dup = closing_checks(self.ctx, res, self.client, self.keys, self.fleet,
                                label=self.name, ledger=self.ledger, ignore=ignore)
        tb = tracebacks(self.fleet)
        res.expect(f"{self.name}: no traceback in worker logs", not tb, tb[:2])
        stop_fleet(res, self.fleet, label=f"{self.name} workers")
        return dup


@scenario("poison", 8, "Poison input: fuzzed payloads and fields, unknown names, raising, "
                       "hanging, oversized, damaged keys")
def run(ctx: Context, res: Result) -> None:
    srv = ctx.redis()
    cases: dict[str, Any] = {}
    res.figures["cases"] = cases
    for fn in (case_oversized, case_unknown, case_raising, case_payloads, case_fields,
               case_damage, case_hanging):
        name = fn.__name__.removeprefix("case_")
        try:
            cases[name] = fn(ctx, res, srv.url)
        except Exception as exc:
            res.expect(f"{name}: case ran to the end", False, f"{type(exc).__name__}: {exc}")
            cases[name] = {"error": f"{type(exc).__name__}: {exc}"}
    res.figures["fuzzed_payloads"] = cases.get("payloads", {}).get("fuzzed")
    res.figures["fuzzed_fields"] = cases.get("fields", {}).get("fuzzed")


# ---------------------------------------------------------------------- oversized


def case_oversized(ctx: Context, res: Result, url: str) -> dict[str, Any]:
    prefix = ctx.prefix()
    keys = QueueKeys("oversized", prefix)
    q = ctx.producer(url, "oversized", prefix)
    client = ctx.client(url)
    limit = q.queue.max_payload_bytes
    ok_id = q.add_job("work", {"x": "y"})
    before = (client.get(keys.id), client.zcard(keys.wait), client.xlen(keys.events))
    errors = []
    for what, call in (
        ("add_job", lambda: q.add_job("work", {"blob": "x" * limit})),
        ("add_jobs (one oversized among good ones)",
         lambda: q.add_jobs([("work", {"i": 1}), ("work", {"blob": "x" * limit}),
                             ("work", {"i": 2})])),
    ):
        try:
            call()
            errors.append(f"{what}: accepted")
        except PayloadTooLargeError as exc:
            res.expect(f"oversized: {what} raises PayloadTooLargeError", True, str(exc)[:120])
    after = (client.get(keys.id), client.zcard(keys.wait), client.xlen(keys.events))
    res.expect("oversized: rejected before anything was written", before == after and not errors,
               {"before": before, "after": after, "errors": errors})
    del ok_id
    return {"max_payload_bytes": limit, "rejected": 2, "written": 0}


# ---------------------------------------------------------------------- unknown name


def case_unknown(ctx: Context, res: Result, url: str) -> dict[str, Any]:
    c = Case(ctx, url, "unknown").ready()
    jid = c.add("no-such-job", {"x": 1}, expect="dlq", **FAST_RETRY)
    good = c.add("work", {"ms": 1}, expect="completed")
    c.wait(20)
    snap = snapshot(c.client, c.keys)
    reason = snap.reason(jid)
    runs = [ln for ln in c.fleet.lines() if ln.job_id == jid and ln.event == "start"]
    res.expect("unknown: dead-lettered with a reason naming the missing processor",
               snap.state(jid) == "dlq" and "no processor registered" in reason, reason[:200])
    res.expect("unknown: attempts spent = configured attempts",
               int(snap.jobs[jid]["a"] or 0) == FAST_RETRY["attempts"], snap.jobs[jid]["a"])
    res.expect("unknown: a known job next to it completes", snap.state(good) == "completed")
    c.close(res)
    return {"state": snap.state(jid), "attempts": int(snap.jobs[jid]["a"] or 0),
            "processor_runs": len(runs), "reason": reason[:160]}


# ---------------------------------------------------------------------- raising


def case_raising(ctx: Context, res: Result, url: str) -> dict[str, Any]:
    c = Case(ctx, url, "raising").ready()
    attempts, base = 4, 200
    jid = c.add("fail", {}, expect="dlq", attempts=attempts,
                backoff={"type": "exponential", "delay": base, "max_delay": 10_000})
    c.wait(30)
    snap = snapshot(c.client, c.keys)
    starts = sorted(ln.t for ln in c.fleet.lines() if ln.job_id == jid and ln.event == "start")
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(starts)]
    want = [base * 2 ** i / 1000 for i in range(attempts - 1)]
    bad = [(g, w) for g, w in zip(gaps, want, strict=False) if not (w - 0.01 <= g <= w + 0.5)]
    res.expect(f"raising: exactly {attempts} runs", len(starts) == attempts, len(starts))
    res.expect("raising: runs spaced by the exponential backoff (200, 400, 800 ms)",
               len(gaps) == attempts - 1 and not bad, {"gaps_s": gaps, "backoff_s": want})
    res.expect("raising: dead-lettered with the error as reason",
               snap.state(jid) == "dlq" and "RuntimeError" in snap.reason(jid),
               snap.reason(jid)[:160])
    res.expect("raising: attempts recorded = attempts", int(snap.jobs[jid]["a"] or 0) == attempts)
    c.close(res)
    return {"attempts": attempts, "runs": len(starts), "gaps_s": gaps, "backoff_s": want,
            "reason": snap.reason(jid)[:120]}


# ---------------------------------------------------------------------- fuzzed payloads


def case_payloads(ctx: Context, res: Result, url: str) -> dict[str, Any]:
    n = ctx.pick(40, 300)
    blobs = examples(payload_strategy, n, seed=8)
    c = Case(ctx, url, "payloads")
    c.producer.pause()
    c.ready()
    expect: dict[str, str] = {}
    for blob in blobs:
        jid = c.add("work", {"ms": 0}, tag="fuzzed")
        c.client.hset(c.keys.job(jid), "d", blob)
        try:
            orjson.loads(blob)
            expect[jid] = "completed"
        except orjson.JSONDecodeError:
            expect[jid] = "dlq"
    c.producer.resume()
    c.wait(ctx.pick(30, 90))
    after = [c.add("work", {"ms": 1}, tag="after", expect="completed") for _ in range(4)]
    c.wait(20)
    snap = snapshot(c.client, c.keys)
    wrong = {j: (snap.state(j), e, snap.reason(j)[:80]) for j, e in expect.items()
             if snap.state(j) != e or (e == "dlq" and "undecodable payload" not in snap.reason(j))}
    starts = Counter(ln.job_id for ln in c.fleet.lines() if ln.event == "start")
    res.expect("payloads: undecodable -> dlq 'undecodable payload', decodable -> completed",
               not wrong, dict(list(wrong.items())[:5]))
    res.expect("payloads: undecodable payloads never reach the processor",
               not any(starts[j] for j, e in expect.items() if e == "dlq"))
    res.expect("payloads: workers alive and still working",
               all(w.alive() for w in c.workers) and all(snap.state(j) == "completed"
                                                         for j in after))
    claims = Counter(e.job_id for e in stream(c.client, c.keys.events) if e.event == "job-started")
    res.expect("payloads: dead-lettered on the first claim",
               all(claims[j] == 1 for j, e in expect.items() if e == "dlq"))
    c.close(res)
    kinds = Counter(expect.values())
    undecodable = [b for b in blobs if not _decodes(b)]
    return {"fuzzed": n, "undecodable": kinds["dlq"], "decodable": kinds["completed"],
            "examples_undecodable": [repr(b[:24]) for b in dict.fromkeys(undecodable)][:8]}


def _decodes(blob: bytes) -> bool:
    try:
        orjson.loads(blob)
    except orjson.JSONDecodeError:
        return False
    return True


# ---------------------------------------------------------------------- fuzzed fields


def case_fields(ctx: Context, res: Result, url: str) -> dict[str, Any]:
    n = ctx.pick(40, 260)
    damage = examples(field_strategy, n, seed=9)
    c = Case(ctx, url, "fields")
    c.producer.pause()
    c.ready()
    done: dict[str, tuple[str, bytes]] = {}
    for field_, value in damage:
        jid = c.add("work", {"ms": 5}, tag=f"field {field_}", **FAST_RETRY)
        c.client.hset(c.keys.job(jid), field_, value)
        done[jid] = (field_, value)
    c.producer.resume()
    try:
        c.wait(ctx.pick(30, 90))
        finished = True
    except AssertionError:
        finished = False
    snap = snapshot(c.client, c.keys)
    outcome: dict[str, Counter[str]] = {}
    reasons: dict[str, set[str]] = {}
    stuck = {}
    for jid, (field_, value) in done.items():
        stt = snap.state(jid) or "missing"
        outcome.setdefault(field_, Counter())[stt] += 1
        if stt in ("dlq", "failed"):
            reasons.setdefault(field_, set()).add(snap.reason(jid)[:90])
        if stt not in ("completed", "dlq", "failed"):
            stuck[jid] = (field_, value, stt)
    res.expect("fields: every damaged job finished (completed or dead-lettered)",
               finished and not stuck, {j: (f, repr(v), s) for j, (f, v, s) in
                                        list(stuck.items())[:8]})
    after = [c.add("work", {"ms": 1}, tag="after", expect="completed") for _ in range(4)]
    with contextlib.suppress(AssertionError):
        c.wait(15, ids=after)
    snap = snapshot(c.client, c.keys)
    res.expect("fields: workers alive and the queue still works afterwards",
               all(w.alive() for w in c.workers) and all(snap.state(j) == "completed"
                                                         for j in after),
               {"alive": [w.alive() for w in c.workers],
                "after": [snap.state(j) for j in after]})
    c.close(res, ignore=tuple(stuck))
    return {"fuzzed": n, "outcome_by_field": {f: dict(v) for f, v in sorted(outcome.items())},
            "dead_letter_reasons_by_field": {f: sorted(v) for f, v in sorted(reasons.items())},
            "stuck": len(stuck)}


# ---------------------------------------------------------------------- damaged keys


def case_damage(ctx: Context, res: Result, url: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    c = Case(ctx, url, "damage", max_stalled=5)
    k, cl = c.keys, c.client
    c.producer.pause()
    c.ready()
    # -- while waiting
    w_hash = c.add("work", {"ms": 1}, tag="waiting hash deleted", expect="dlq")
    cl.delete(k.job(w_hash))
    w_data = c.add("work", {"ms": 1}, tag="waiting 'd' corrupted", expect="dlq")
    cl.hset(k.job(w_data), "d", b"\xff not json")
    w_zrem = c.add("work", {"ms": 1}, tag="removed from the wait set")
    cl.zrem(k.wait, w_zrem)
    d_hash = c.add("work", {"ms": 1}, tag="delayed hash deleted", expect="dlq", delay=300)
    cl.delete(k.job(d_hash))
    c.producer.resume()
    c.wait(20, ids=[w_hash, w_data, d_hash])
    snap = snapshot(cl, k)
    for jid, label, want in ((w_hash, "waiting job's hash deleted", "job record missing"),
                             (w_data, "waiting job's 'd' corrupted", "undecodable payload"),
                             (d_hash, "delayed job's hash deleted", "job record missing")):
        out[label] = {"state": snap.state(jid), "reason": snap.reason(jid)[:120]}
        res.expect(f"damage: {label} -> dead-lettered with a reason",
                   snap.state(jid) == "dlq" and want in snap.reason(jid), out[label])
    # A job taken out of the wait set is invisible to every worker: nothing in the engine
    # looks at a job record that no state set points to.
    c_zrem = check(snap, None, final=False)
    flagged = any(w_zrem in x for x in c_zrem.problems.get("record_in_no_set", []))
    out["removed from the wait set"] = {
        "state": snap.state(w_zrem), "in a state set": any(w_zrem in m for m in
                                                           snap.sets.values()),
        "engine": "not detected: the record stays 'waiting' and no worker ever sees it",
        "checker": "flagged as record_in_no_set" if flagged else "not flagged"}
    res.expect("damage: a job removed from the wait set is flagged by the checker", flagged)

    # -- the whole wait set deleted
    c.producer.pause()
    gone = [c.add("work", {"ms": 1}, tag="wait set deleted") for _ in range(3)]
    cl.delete(k.wait)
    c.producer.resume()
    snap = snapshot(cl, k)
    c_all = check(snap, None, final=False)
    orphans = [j for j in gone if any(j in x for x in c_all.problems.get("record_in_no_set", []))]
    out["wait set deleted"] = {"jobs": len(gone), "flagged_by_checker": len(orphans),
                               "engine": "not detected: the records stay 'waiting', unseen"}
    res.expect("damage: jobs of a deleted wait set are flagged by the checker",
               len(orphans) == len(gone), orphans)

    # -- while running: long jobs on one worker, a second worker to take over
    running = [c.add("work", {"first_ms": 4000, "ms": 50}, tag=t, expect=e) for t, e in (
        ("active set deleted, then worker killed", "completed"),
        ("running job's lease token altered", "completed"),
        ("running job's hash deleted", "dlq"),
    )]
    act_del, lt_alt, h_del = running
    wait_for(lambda: _spread(c, running), 20, what="the long jobs to start")
    t0 = time.time()
    cl.delete(k.active)
    # The next renewal (every 500 ms) must put the running jobs' leases back.
    try:
        wait_for(lambda: all(cl.zscore(k.active, j) is not None for j in running), 3,
                 what="the leases to be renewed back into the active set")
        restored = round(time.time() - t0, 3)
    except AssertionError:
        restored = None
    out["active set deleted, then worker killed"] = {"leases back in active set after_s":
                                                     restored}
    res.expect("damage: a deleted active set is rebuilt by the next lease renewal",
               restored is not None and restored <= 1.0, restored)
    cl.hset(k.job(lt_alt), "lt", "999999")
    cl.delete(k.job(h_del))
    owner = next(w for w in c.workers if act_del in w.running_jobs())
    owner.kill()
    c.fleet.start("damage-3").wait_ready()
    try:
        c.wait(30, ids=running)
    except AssertionError as exc:
        out["not finished"] = str(exc)[:300]
    snap = snapshot(cl, k)
    runs = c.fleet.runs()
    for jid in running:
        label = c.ledger.acked[jid].tag
        out[label] = {**out.get(label, {}), "state": snap.state(jid),
                      "reason": snap.reason(jid)[:120], "runs": len(runs.get(jid, []))}
    res.expect("damage: active set deleted + worker killed -> recovered and completed",
               snap.state(act_del) == "completed", out["active set deleted, then worker killed"])
    res.expect("damage: lease token altered -> the run is abandoned, the job recovered and "
               "completed", snap.state(lt_alt) == "completed",
               out["running job's lease token altered"])
    res.expect("damage: running job's hash deleted -> dead-lettered with a reason",
               snap.state(h_del) == "dlq" and "record missing" in snap.reason(h_del),
               out["running job's hash deleted"])
    c.close(res, ignore=(w_zrem, *gone))
    return out


def _spread(c: Case, ids: list[str]) -> bool:
    """All of ``ids`` are running (on any of the case's workers)."""
    running = set().union(*(w.running_jobs() for w in c.workers))
    return set(ids) <= running


# ---------------------------------------------------------------------- hanging


def case_hanging(ctx: Context, res: Result, url: str) -> dict[str, Any]:
    timeout_ms = None if ctx.long else 1000
    effective = timeout_ms or DEFAULT_TIMEOUT_MS
    out: dict[str, Any] = {"timeout_ms": effective,
                           "timeout_source": "job option" if timeout_ms else "default"}
    opts = {"attempts": 1} | ({"timeout": timeout_ms} if timeout_ms else {})
    # Both kinds at once (each on its own 1-slot worker): the long form waits out the
    # default timeout only once.
    runs = {}
    for kind, hang_name, next_name in (("async", "hang", "work"),
                                       ("thread", "hang-sync", "sync")):
        c = Case(ctx, url, f"hanging-{kind}", workers=1, concurrency=1,
                 lock_duration=2000, lock_renew=1000).ready()
        hung = c.add(hang_name, {"ms": effective + 4000}, tag="hang", expect="dlq", **opts)
        wait_for(lambda c=c, hung=hung: hung in c.workers[0].running_jobs(), 20,
                 what="the hanging job to start")
        nxt = c.add(next_name, {"ms": 10}, tag="next", expect="completed")
        runs[kind] = (c, hung, nxt)
    for kind, (c, hung, nxt) in runs.items():
        c.wait(effective / 1000 + 30)
        snap = snapshot(c.client, c.keys)
        lines = c.fleet.lines()
        t_hang = next(ln.t for ln in lines if ln.job_id == hung and ln.event == "start")
        t_next = next(ln.t for ln in lines if ln.job_id == nxt and ln.event == "start")
        dead_ms = next((e.ms for e in stream(c.client, c.keys.events)
                        if e.event == "job-dlq" and e.job_id == hung), None)
        fig = {
            "hung_job": snap.state(hung), "reason": snap.reason(hung)[:120],
            "failed_after_s": round(dead_ms / 1000 - t_hang, 3) if dead_ms else None,
            "next_job_started_after_s": round(t_next - t_hang, 3),
            "next_job": snap.state(nxt),
        }
        out[kind] = fig
        res.expect(f"hanging ({kind}): failed by the timeout, dead-lettered with a reason",
                   snap.state(hung) == "dlq" and "timeout" in snap.reason(hung), fig)
        res.expect(f"hanging ({kind}): the slot is freed at the timeout (next job starts "
                   "within timeout + 1 s)", t_next - t_hang <= effective / 1000 + 1, fig)
        res.expect(f"hanging ({kind}): the next job completes", snap.state(nxt) == "completed")
        c.close(res)
    return out
