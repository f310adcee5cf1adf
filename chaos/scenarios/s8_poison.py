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

Issue 19 (one bad job must never hurt another) adds these classes; in each, the poison
jobs run side by side with good jobs that finish at the same moment, so their outcomes
share the workers' finish batches. Invariant of every one: each good job completes
exactly once (worker logs), no job is in two state sets, no worker traceback:

    exc-text     exceptions whose message, cause or context holds a lone surrogate
                 (``b"r-\xff.csv"`` decoded with surrogateescape), control characters
                 and ANSI escapes in a message, an exception whose ``__str__`` raises,
                 a NonRetryableError with a surrogate: each dead-lettered with a reason
                 that is valid UTF-8, after at most ``attempts`` runs
    log-text     job.log / update_progress with surrogates, control characters, a
                 100 kB line, NaN, 300-deep nesting, 2**64: the job completes; its log
                 lines read back as valid UTF-8
    huge-delay   RetryLater with sys.maxsize, 1e17, 2**64, inf and NaN ms and
                 RateLimited(sys.maxsize, scope="job"): delayed (far ahead) or
                 completed, never dead-lettered, never in two sets; the queue keeps
                 working. Then issue 19's RateLimited(sys.maxsize) (whole-queue hold)
                 among nine good jobs of the same batch: all nine complete once
    backoff      a custom backoff returning 1e30, inf, NaN, -1 or a string: the job is
                 dead-lettered with a reason or delayed far ahead
    results      results JSON cannot carry (a surrogate string, 2**64, 300-deep
                 nesting, a set; NaN): dead-lettered with a reason (NaN: or completed)
    numeric-ids  caller-chosen numeric job ids equal to the next automatic ids,
                 interleaved with automatic ones: every add returns a fresh id, every
                 job keeps its own data, none is lost or run twice
    promote      more than 8,000 due delayed jobs (80 of them LIFO) moved by one
                 ``promote_delayed(limit=10_000)``: no job in wait and delayed at once,
                 and every job then runs exactly once
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections import Counter
from typing import Any

import orjson
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from kitium_queue import JobQueue, KitiumQueueError, PayloadTooLargeError, SyncJobQueue
from kitium_queue.keys import QueueKeys
from kitium_queue.options import DEFAULT_TIMEOUT_MS

from ..core import Context, Result, scenario
from ..infra import Fleet, Timeout, wait_for
from ..ledger import Ledger, check, snapshot, stream
from ._common import closing_checks, stop_fleet, tracebacks, wait_final

LEASE: dict[str, Any] = {"concurrency": 4, "lock_duration": 1000, "lock_renew": 500,
                         "stalled_interval": 200, "max_stalled": 2}
FAST_RETRY: dict[str, Any] = {"attempts": 2, "backoff": {"type": "fixed", "delay": 50}}
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
               case_damage, case_hanging, case_exc_text, case_log_text, case_huge_delay,
               case_backoff, case_results, case_numeric_ids, case_promote):
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
    kinds = (("async", "hang", "work"), ("thread", "hang-sync", "sync"))
    cases = [Case(ctx, url, f"hanging-{kind}", workers=1, concurrency=1,
                  lock_duration=2000, lock_renew=1000) for kind, _, _ in kinds]
    for c, (kind, hang_name, next_name) in zip(cases, kinds, strict=True):
        c.ready()
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


# ---------------------------------------------------------------------- issue 19 classes

SYNC_MS = 200  # every job of a case sleeps this long, so outcomes land in one batch


def _good(c: Case, n: int) -> list[str]:
    return [c.add("work", {"ms": SYNC_MS}, tag="good", expect="completed") for _ in range(n)]


def _settle(c: Case, ids: list[str], timeout: float) -> bool:
    """Wait until ``ids`` are finished; False (not an exception) when they are not."""
    try:
        c.wait(timeout, ids=ids)
    except (Timeout, AssertionError):
        return False
    return True


def _starts(c: Case) -> Counter[str]:
    return Counter(ln.job_id for ln in c.fleet.lines() if ln.event == "start")


def _good_once(c: Case, res: Result, label: str, good: list[str]) -> dict[str, Any]:
    """Every good job completed, and its processor ran exactly once."""
    snap = snapshot(c.client, c.keys)
    starts = _starts(c)
    wrong = {j: (snap.state(j), starts[j]) for j in good
             if snap.state(j) != "completed" or starts[j] != 1}
    res.expect(f"{label}: every good job completed exactly once", not wrong,
               dict(list(wrong.items())[:6]))
    return {"good_jobs": len(good), "good_not_completed_once": len(wrong)}


def _consistent(c: Case, res: Result, label: str) -> None:
    chk = check(snapshot(c.client, c.keys), None, final=False)
    res.expect(f"{label}: no job in two state sets or out of every set", chk.ok,
               chk.summary()["problems"])


def _utf8_reason(snap: Any, jid: str) -> str | None:
    """The job's reason if it is non-empty, valid UTF-8; else None."""
    raw = (snap.jobs.get(jid) or {}).get("e")
    if not raw:
        return None
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return None


def _due_in_ms(c: Case, jid: str, now_ms: int) -> float | None:
    due = c.client.hget(c.keys.job(jid), "due")
    return float(due) - now_ms if due is not None else None


EXC_MODES = ("exc-cause", "exc-message", "exc-context", "exc-control", "exc-str", "nonretryable")


def case_exc_text(ctx: Context, res: Result, url: str) -> dict[str, Any]:
    c = Case(ctx, url, "exc-text").ready()
    poison = {m: c.add("poison", {"mode": m, "ms": SYNC_MS}, tag=m, expect="dlq", **FAST_RETRY)
              for m in EXC_MODES}
    good = _good(c, ctx.pick(10, 40))
    settled = _settle(c, [*poison.values(), *good], ctx.pick(30, 60))
    res.expect("exc-text: every job finished within the wait", settled)
    out = _good_once(c, res, "exc-text", good)
    snap = snapshot(c.client, c.keys)
    starts = _starts(c)
    per_mode = {}
    for mode, jid in poison.items():
        reason = _utf8_reason(snap, jid)
        per_mode[mode] = {"state": snap.state(jid), "runs": starts[jid],
                          "reason": ascii(reason)[:120] if reason else None}
        res.expect(f"exc-text ({mode}): dead-lettered with a valid UTF-8 reason",
                   snap.state(jid) == "dlq" and reason is not None, per_mode[mode])
        res.expect(f"exc-text ({mode}): at most {FAST_RETRY['attempts']} runs",
                   starts[jid] <= FAST_RETRY["attempts"], starts[jid])
    _consistent(c, res, "exc-text")
    c.close(res)
    return {**out, "poison": per_mode}


def case_log_text(ctx: Context, res: Result, url: str) -> dict[str, Any]:
    c = Case(ctx, url, "log-text").ready()
    poison = [c.add("poison", {"mode": "log", "ms": SYNC_MS}, tag="log", expect="completed")
              for _ in range(3)]
    good = _good(c, ctx.pick(8, 30))
    settled = _settle(c, [*poison, *good], ctx.pick(30, 60))
    res.expect("log-text: every job finished within the wait", settled)
    out = _good_once(c, res, "log-text", good)
    snap = snapshot(c.client, c.keys)
    lines: dict[str, Any] = {}
    for jid in poison:
        raw = c.client.lrange(c.keys.logs(jid), 0, -1)
        try:
            lines[jid] = [bytes(x).decode("utf-8") for x in raw]
        except UnicodeDecodeError:
            lines[jid] = None
    refused = sum(1 for ln in c.fleet.lines() if ln.event == "refused")
    res.expect("log-text: the logging jobs completed",
               all(snap.state(j) == "completed" for j in poison),
               {j: (snap.state(j), snap.reason(j)[:120]) for j in poison})
    res.expect("log-text: their log lines read back as valid UTF-8",
               all(v is not None for v in lines.values()))
    _consistent(c, res, "log-text")
    c.close(res)
    return {**out, "log_lines_kept": {j: len(v or []) for j, v in lines.items()},
            "calls_refused_with_a_library_error": refused}


HUGE_DELAYS = (("retry-later", "maxsize"), ("retry-later", "1e17"), ("retry-later", "2**64"),
               ("retry-later", "inf"), ("retry-later", "nan"), ("rate-limited", "maxsize"))


def case_huge_delay(ctx: Context, res: Result, url: str) -> dict[str, Any]:
    c = Case(ctx, url, "huge-delay").ready()
    poison = {f"{mode} {delay}": c.add("poison", {"mode": mode, "delay": delay, "ms": SYNC_MS,
                                                  "scope": "job"},
                                       tag=f"{mode} {delay}", expect="any")
              for mode, delay in HUGE_DELAYS}
    good = _good(c, ctx.pick(10, 30))
    settled = _settle(c, good, ctx.pick(30, 60))
    res.expect("huge-delay: the good jobs finished within the wait", settled)
    # The deferred jobs settle too: delayed far ahead, or (small/NaN delays) completed.
    with contextlib.suppress(AssertionError):
        wait_for(lambda: all(_deferred_settled(c, j) for j in poison.values()), 20,
                 what="the deferred jobs to settle")
    out = _good_once(c, res, "huge-delay", good)
    snap = snapshot(c.client, c.keys)
    per: dict[str, Any] = {}
    for label, jid in poison.items():
        due_in = _due_in_ms(c, jid, snap.now_ms)
        per[label] = {"state": snap.state(jid), "due_in_days": None if due_in is None
                      else round(due_in / 86_400_000, 1)}
        res.expect(f"huge-delay ({label}): delayed far ahead or completed, not dead-lettered",
                   snap.state(jid) == "completed"
                   or (snap.state(jid) == "delayed" and due_in is not None and due_in > 60_000),
                   per[label])
    _consistent(c, res, "huge-delay")
    after = [c.add("work", {"ms": 1}, tag="after", expect="completed") for _ in range(4)]
    res.expect("huge-delay: the queue keeps working afterwards", _settle(c, after, 20))
    c.close(res, ignore=tuple(j for j in poison.values() if snap.state(j) == "delayed"))

    # Issue 19 item 3 verbatim: RateLimited(sys.maxsize) holding the whole queue, among
    # nine good jobs whose outcomes share its finish batch.
    h = Case(ctx, url, "huge-hold", workers=1, concurrency=10).ready()
    h.producer.pause()
    held = h.add("poison", {"mode": "rate-limited", "delay": "maxsize", "ms": SYNC_MS},
                 tag="RateLimited(sys.maxsize)", expect="any")
    nine = [h.add("work", {"ms": SYNC_MS}, tag="good", expect="completed") for _ in range(9)]
    h.producer.resume()
    res.expect("huge-hold: the nine good jobs finished within the wait", _settle(h, nine, 30))
    hold = _good_once(h, res, "huge-hold", nine)
    snap = snapshot(h.client, h.keys)
    res.expect("huge-hold: the rate-limited job is delayed (not dead-lettered, not in two sets)",
               snap.state(held) == "delayed"
               and [s for s, m in snap.sets.items() if held in m] == ["delayed"],
               {"state": snap.state(held),
                "sets": [s for s, m in snap.sets.items() if held in m]})
    _consistent(h, res, "huge-hold")
    pttl = h.client.pttl(h.keys.hold())
    h.close(res, ignore=(held,))
    return {**out, "deferred": per, "hold": {**hold, "hold_pttl_days":
                                             round(pttl / 86_400_000, 1) if pttl > 0 else pttl}}


def _deferred_settled(c: Case, jid: str) -> bool:
    snap_state = c.client.hget(c.keys.job(jid), "st")
    if snap_state == b"completed":
        return True
    if snap_state != b"delayed":
        return False
    t = c.client.time()
    due_in = _due_in_ms(c, jid, int(t[0]) * 1000 + int(t[1]) // 1000)
    return due_in is not None and due_in > 60_000


BACKOFFS = ("1e30", "inf", "nan", -1, "abc")


def case_backoff(ctx: Context, res: Result, url: str) -> dict[str, Any]:
    c = Case(ctx, url, "backoff").ready()
    poison: dict[str, str] = {}
    refused: dict[str, str] = {}
    for value in BACKOFFS:
        try:
            poison[str(value)] = c.add(
                "poison", {"mode": "backoff", "backoff": value, "ms": SYNC_MS},
                tag=f"backoff {value}", expect="any", attempts=2,
                backoff={"type": "custom", "strategy": "from-data",
                         "max_delay": 315_360_000_000})  # ten years
        except KitiumQueueError as exc:
            refused[str(value)] = f"{type(exc).__name__}: {exc}"[:160]
    good = _good(c, ctx.pick(10, 30))
    res.expect("backoff: the good jobs finished within the wait",
               _settle(c, good, ctx.pick(30, 60)))
    with contextlib.suppress(AssertionError):
        wait_for(lambda: all(c.client.hget(c.keys.job(j), "st") in (b"dlq", b"delayed")
                             for j in poison.values()), 20, what="the poison jobs to settle")
    out = _good_once(c, res, "backoff", good)
    snap = snapshot(c.client, c.keys)
    per: dict[str, Any] = {}
    for label, jid in poison.items():
        due_in = _due_in_ms(c, jid, snap.now_ms)
        reason = _utf8_reason(snap, jid)
        per[label] = {"state": snap.state(jid), "reason": ascii(reason)[:100] if reason else None,
                      "due_in_days": None if due_in is None else round(due_in / 86_400_000, 1)}
        res.expect(f"backoff ({label}): dead-lettered with a reason, or delayed far ahead",
                   (snap.state(jid) == "dlq" and reason is not None)
                   or (snap.state(jid) == "delayed" and due_in is not None and due_in > 60_000),
                   per[label])
    _consistent(c, res, "backoff")
    c.close(res, ignore=tuple(j for j in poison.values() if snap.state(j) == "delayed"))
    return {**out, "poison": per, "refused_at_enqueue": refused}


RESULTS = ("surrogate", "int", "deep", "set", "nan")


def case_results(ctx: Context, res: Result, url: str) -> dict[str, Any]:
    c = Case(ctx, url, "results").ready()
    poison = {r: c.add("poison", {"mode": "result", "result": r, "ms": SYNC_MS}, tag=r,
                       expect="final")
              for r in RESULTS}
    good = _good(c, ctx.pick(10, 30))
    settled = _settle(c, [*poison.values(), *good], ctx.pick(30, 60))
    res.expect("results: every job finished within the wait", settled)
    out = _good_once(c, res, "results", good)
    snap = snapshot(c.client, c.keys)
    per: dict[str, Any] = {}
    for kind, jid in poison.items():
        reason = _utf8_reason(snap, jid)
        per[kind] = {"state": snap.state(jid), "reason": ascii(reason)[:120] if reason else None}
        ok = snap.state(jid) == "dlq" and reason is not None
        if kind == "nan":  # storing NaN as null, or refusing it: both keep other jobs safe
            ok = ok or snap.state(jid) == "completed"
        res.expect(f"results ({kind}): dead-lettered with a reason", ok, per[kind])
    _consistent(c, res, "results")
    c.close(res)
    return {**out, "poison": per}


def case_numeric_ids(ctx: Context, res: Result, url: str) -> dict[str, Any]:
    c = Case(ctx, url, "numeric-ids")
    c.producer.pause()
    c.ready()
    n = ctx.pick(30, 300)
    made: dict[str, int] = {}
    collisions: list[tuple[int, str, str]] = []
    refused: Counter[str] = Counter()
    for i in range(n):
        data = {"ms": 1, "i": i}
        try:
            if i % 3 == 0:
                # The next automatic id is the sequence number after this call's own.
                jid = c.producer.add_job("work", data, job_id=str(i + 2),
                                         remove_on_complete=False)
                kind = "chosen"
            else:
                jid = c.producer.add_job("work", data, remove_on_complete=False)
                kind = "auto"
        except KitiumQueueError as exc:
            refused[type(exc).__name__] += 1
            continue
        if jid in made:
            collisions.append((i, kind, jid))
        made[jid] = i
        c.ledger.record([jid], tag=kind)
    res.expect("numeric-ids: every add returned a fresh id (no automatic id met a chosen one)",
               not collisions, collisions[:8])
    wrong = {}
    for jid, i in made.items():
        raw = c.client.hget(c.keys.job(jid), "d")
        try:
            got = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            got = raw
        if not isinstance(got, dict) or got.get("i") != i:
            wrong[jid] = (i, got)
    res.expect("numeric-ids: every job holds the data it was added with", not wrong,
               dict(list(wrong.items())[:6]))
    c.producer.resume()
    res.expect("numeric-ids: every job finished within the wait",
               _settle(c, list(made), ctx.pick(30, 60)))
    starts = _starts(c)
    twice = {j: starts[j] for j in made if starts[j] > 1}
    res.expect("numeric-ids: no job ran twice", not twice, dict(list(twice.items())[:6]))
    _consistent(c, res, "numeric-ids")
    c.close(res)
    return {"adds": n, "jobs": len(made), "collisions": len(collisions),
            "refused": dict(refused), "ran_twice": len(twice)}


def _promote(url: str, name: str, prefix: str, limit: int) -> tuple[int | str, bool]:
    """``promote_delayed(limit)`` in a queue of its own: (count or error text, whether
    the call returned or raised a KitiumQueueError)."""
    async def go() -> tuple[int | str, bool]:
        q = JobQueue(name, redis=url, prefix=prefix, events_max_len=1_000_000)
        try:
            return await q.promote_delayed(limit), True
        except KitiumQueueError as exc:
            return f"{type(exc).__name__}: {exc}"[:200], True
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"[:200], False
        finally:
            await q.close()

    return asyncio.run(go())


def case_promote(ctx: Context, res: Result, url: str) -> dict[str, Any]:
    prefix, name = ctx.prefix(), "promote"
    keys = QueueKeys(name, prefix)
    client = ctx.client(url)
    producer = ctx.producer(url, name, prefix)
    ledger = Ledger()
    n, lifo = ctx.pick(3000, 20000), 80  # several script calls of 1000 either way
    delay_ms = 500
    jobs = [("work", {"ms": 0}, {"delay": delay_ms, "lifo": i < lifo,
                                 "remove_on_complete": False}) for i in range(n)]
    ids: list[str] = []
    for i in range(0, n, 1000):
        ids += ledger.record(producer.add_jobs(jobs[i:i + 1000]), tag="due")
    wait_for(lambda: _all_due(client, keys), 30, what="every delayed job to be due")
    t0 = time.monotonic()
    first, library = _promote(url, name, prefix, 10_000)
    first_s = round(time.monotonic() - t0, 3)
    snap = snapshot(client, keys)
    chk = check(snap, None, final=False)
    both = [j for j in ids if j in snap.sets["wait"] and j in snap.sets["delayed"]]
    res.expect(f"promote: promote_delayed(limit=10_000) over {n} due jobs returns a count or "
               "raises a KitiumQueueError", library, first)
    res.expect("promote: no job in wait and delayed at once", not both and chk.ok,
               {"in_both": len(both), "problems": chk.summary()["problems"]})
    calls = 1
    while client.zcard(keys.delayed) and calls < 100:  # the rest, however the limit is cut
        _promote(url, name, prefix, 1000)
        calls += 1
    fleet = ctx.fleet(url, name, prefix, **LEASE)
    for w in [fleet.start(f"promote-{i + 1}") for i in range(2)]:
        w.wait_ready()
    try:
        wait_final(ctx, client, keys, ctx.pick(90, 240), ids=ids)
        finished = True
    except AssertionError:
        finished = False
    res.expect("promote: every promoted job finished", finished)
    starts = Counter(ln.job_id for ln in fleet.lines() if ln.event == "start")
    twice = {j: starts[j] for j in ids if starts[j] > 1}
    res.expect("promote: every job ran exactly once", not twice and all(starts[j] for j in ids),
               {"ran_twice": len(twice), "never_ran": sum(1 for j in ids if not starts[j])})
    closing_checks(ctx, res, client, keys, fleet, label="promote", ledger=ledger)
    tb = tracebacks(fleet)
    res.expect("promote: no traceback in worker logs", not tb, tb[:2])
    stop_fleet(res, fleet, label="promote workers")
    return {"due_jobs": n, "lifo": lifo, "first_call": first, "first_call_s": first_s,
            "promote_calls": calls, "ran_twice": len(twice)}


def _all_due(client: Any, keys: QueueKeys) -> bool:
    t = client.time()
    now_ms = int(t[0]) * 1000 + int(t[1]) // 1000
    last = client.zrange(keys.delayed, -1, -1, withscores=True)
    return bool(last) and last[0][1] <= now_ms
