"""The ledger of acknowledged enqueues and the checker every chaos scenario ends with.

* :class:`Ledger` records every id an ``add_job``/``add_jobs`` call returned (an
  acknowledged enqueue), when it was acknowledged and how it is expected to end.
* :func:`snapshot` reads a queue's six state sets and every job hash's fields in **one
  Lua call**, so the picture is atomic even while workers run.
* :func:`check` compares a snapshot with the ledger:

  - *lost*: an acknowledged id with no record at all, or (``final=True``) not finished:
    every acknowledged job must end completed, or dead-lettered/failed with a reason;
  - *consistency*: every id in exactly one state set, matching its hash's ``st``; no
    job both completed and queued; no active job without a lease (``st=active`` but not
    in the active set, or no lease token); no lease overdue by more than ``stale_ms``
    while workers run (nobody recovered it); no hash in no state set at all; no
    dead-lettered job without a reason.

* :func:`duplicates` counts, per job, recorded completions (``job-completed`` events in
  the durable stream, written atomically with the transition: must never exceed one),
  runs (``start`` lines of the worker logs) and successful runs (``finish`` lines).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from .infra import LogLine

__all__ = [
    "Ack", "Check", "Ledger", "Snapshot", "check", "duplicates", "merge", "snapshot", "stream",
]

SETS = ("wait", "active", "delayed", "completed", "failed", "dlq")
STATE_OF = {
    "wait": "waiting",
    "active": "active",
    "delayed": "delayed",
    "completed": "completed",
    "failed": "failed",
    "dlq": "dlq",
}
FIELDS = ("st", "lt", "e", "a", "s", "r")

_SNAPSHOT_LUA = """
local out = {}
local t = redis.call('TIME')
out[1] = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 1, #KEYS do
  out[#out + 1] = redis.call('ZRANGE', KEYS[i], 0, -1, 'WITHSCORES')
end
local jobs = {}
local cursor = '0'
repeat
  local r = redis.call('SCAN', cursor, 'MATCH', ARGV[1], 'COUNT', 1000)
  cursor = r[1]
  for _, k in ipairs(r[2]) do
    if redis.call('TYPE', k)['ok'] == 'hash' then
      local f = redis.call('HMGET', k, 'st', 'lt', 'e', 'a', 's', 'r')
      jobs[#jobs + 1] = k
      for j = 1, 6 do jobs[#jobs + 1] = f[j] end
    end
  end
until cursor == '0'
out[#out + 1] = jobs
return out
"""


@dataclass(slots=True)
class Ack:
    t: float  # real time the enqueue was acknowledged
    expect: str  # completed | dlq | final (completed or dead-lettered) | any
    tag: str = ""


class Ledger:
    """Acknowledged enqueues (thread-safe)."""

    def __init__(self) -> None:
        self.acked: dict[str, Ack] = {}
        self._lock = threading.Lock()

    def record(self, ids: Iterable[str], *, expect: str = "completed", tag: str = "",
               t: float | None = None) -> list[str]:
        t = time.time() if t is None else t
        ids = list(ids)
        with self._lock:
            for i in ids:
                self.acked[i] = Ack(t, expect, tag)
        return ids

    def ids(self, tag: str | None = None) -> list[str]:
        with self._lock:
            return [i for i, a in self.acked.items() if tag is None or a.tag == tag]

    def __len__(self) -> int:
        return len(self.acked)


@dataclass(slots=True)
class Snapshot:
    now_ms: int  # Redis clock
    sets: dict[str, dict[str, float]]  # set name -> {id: score}
    jobs: dict[str, dict[str, bytes | None]]  # id -> fields st, lt, e, a, s, r
    taken_at: float = 0.0  # real time just before the snapshot was read

    def state(self, jid: str) -> str | None:
        rec = self.jobs.get(jid)
        if rec is None or rec["st"] is None:
            return None
        st = rec["st"]
        return st.decode() if isinstance(st, bytes) else None

    def counts(self) -> dict[str, int]:
        return {s: len(m) for s, m in self.sets.items()} | {"hashes": len(self.jobs)}

    def result(self, jid: str) -> Any:
        raw = (self.jobs.get(jid) or {}).get("r")
        if not raw:
            return None
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None

    def reason(self, jid: str) -> str:
        raw = (self.jobs.get(jid) or {}).get("e")
        return raw.decode(errors="replace") if raw else ""


def snapshot(client: Any, keys: Any) -> Snapshot:
    """Atomic picture of a queue (``client``: a synchronous ``redis.Redis``)."""
    set_keys = [getattr(keys, s) for s in SETS]
    pattern = keys.job("*")
    t_before = time.time()
    raw = client.eval(_SNAPSHOT_LUA, len(set_keys), *set_keys, pattern)
    now_ms = int(raw[0])
    sets: dict[str, dict[str, float]] = {}
    for name, flat in zip(SETS, raw[1 : 1 + len(SETS)], strict=True):
        sets[name] = {flat[i].decode(): float(flat[i + 1]) for i in range(0, len(flat), 2)}
    jobs: dict[str, dict[str, bytes | None]] = {}
    flat = raw[1 + len(SETS)]
    head = len(keys.job(""))
    width = 1 + len(FIELDS)
    for i in range(0, len(flat), width):
        jid = flat[i].decode()[head:]
        jobs[jid] = dict(zip(FIELDS, flat[i + 1 : i + width], strict=True))
    return Snapshot(now_ms, sets, jobs, t_before)


@dataclass(slots=True)
class Check:
    """What :func:`check` found. ``ok`` when no problem of any kind was found."""

    final: bool
    counts: dict[str, int]
    problems: dict[str, list[str]] = field(default_factory=dict)
    unacknowledged: int = 0  # job hashes the ledger does not know (e.g. an add that failed)
    max_overdue_ms: int = 0  # largest lease overdue (ms) seen on an active job

    @property
    def ok(self) -> bool:
        return not any(self.problems.values())

    def add(self, kind: str, what: str) -> None:
        self.problems.setdefault(kind, []).append(what)

    def summary(self, limit: int = 5) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "final": self.final,
            "counts": self.counts,
            "unacknowledged_jobs": self.unacknowledged,
            "max_lease_overdue_ms": self.max_overdue_ms,
            "problems": {k: {"count": len(v), "examples": v[:limit]}
                         for k, v in self.problems.items() if v},
        }


def check(
    snap: Snapshot,
    ledger: Ledger | None = None,
    *,
    final: bool = True,
    stale_ms: int | None = None,
    ignore: Iterable[str] = (),
) -> Check:
    """Check a snapshot (see the module docstring). ``final``: the run is over and every
    acknowledged job must be finished. ``stale_ms``: flag leases overdue by more than
    this (only meaningful while live workers should be recovering them). ``ignore``: ids
    whose damage a scenario inflicted on purpose and accounts for itself."""
    skip = set(ignore)
    res = Check(final=final, counts=snap.counts())
    membership: dict[str, list[str]] = {}
    for name, members in snap.sets.items():
        for jid in members:
            membership.setdefault(jid, []).append(name)
    for jid in set(membership) | set(snap.jobs):
        if jid in skip:
            continue
        in_sets = membership.get(jid, [])
        st = snap.state(jid)
        if len(in_sets) > 1:
            res.add("in_several_sets", f"{jid}: {in_sets}")
        if "completed" in in_sets and set(in_sets) & {"wait", "delayed", "active"}:
            res.add("completed_and_queued", f"{jid}: {in_sets}")
        if jid not in snap.jobs:
            res.add("set_member_without_record", f"{jid} in {in_sets}")
            continue
        if not in_sets:
            res.add("record_in_no_set", f"{jid}: st={st}")
        elif len(in_sets) == 1 and STATE_OF[in_sets[0]] != st:
            res.add("set_state_mismatch", f"{jid}: in {in_sets[0]}, st={st}")
        rec = snap.jobs[jid]
        if st == "active":
            if "active" not in in_sets:
                res.add("active_without_lease", f"{jid}: st=active, not in the active set")
            elif not rec["lt"]:
                res.add("active_without_lease", f"{jid}: in active set, no lease token")
            else:
                overdue = snap.now_ms - int(snap.sets["active"][jid])
                res.max_overdue_ms = max(res.max_overdue_ms, overdue)
                if stale_ms is not None and overdue > stale_ms:
                    res.add("stale_lease", f"{jid}: lease overdue by {overdue} ms")
        if st in ("dlq", "failed") and not rec["e"]:
            res.add("dead_without_reason", jid)
    if ledger is not None:
        known = set(ledger.acked)
        res.unacknowledged = len(set(snap.jobs) - known)
        for jid, ack in list(ledger.acked.items()):
            if jid in skip or ack.t >= snap.taken_at:
                continue  # acknowledged after the snapshot began: not necessarily in it
            st = snap.state(jid)
            if st is None:
                res.add("lost", f"{jid} ({ack.tag or 'job'}, acknowledged at {ack.t:.3f}): "
                                "no record")
                continue
            if not final:
                continue
            if st not in ("completed", "dlq", "failed"):
                res.add("lost", f"{jid} ({ack.tag or 'job'}): still {st} at the end")
            elif ack.expect == "completed" and st != "completed":
                res.add("unexpected_outcome", f"{jid} ({ack.tag}): {st}: {snap.reason(jid)}")
            elif ack.expect == "dlq" and st not in ("dlq", "failed"):
                res.add("unexpected_outcome", f"{jid} ({ack.tag}): {st}, expected dlq")
    return res


def merge(checks: Iterable[Check]) -> Check:
    """One Check holding the problems of several (e.g. one per fault of a run)."""
    checks = list(checks)
    out = Check(final=False, counts=checks[-1].counts if checks else {})
    for c in checks:
        for kind, items in c.problems.items():
            out.problems.setdefault(kind, []).extend(items)
        out.unacknowledged = max(out.unacknowledged, c.unacknowledged)
        out.max_overdue_ms = max(out.max_overdue_ms, c.max_overdue_ms)
    return out


# ---------------------------------------------------------------------- stream


@dataclass(frozen=True, slots=True)
class StreamEvent:
    ms: int  # Redis clock, from the entry id
    event: str
    job_id: str
    fields: dict[str, str]


def stream(client: Any, key: str, start: str = "-") -> list[StreamEvent]:
    """Every entry of a queue's durable event stream (paged)."""
    out: list[StreamEvent] = []
    cursor = start
    while True:
        page = client.xrange(key, cursor, "+", count=10_000)
        if not page:
            return out
        for eid, f in page:
            fields = {k.decode(): v.decode(errors="replace") for k, v in f.items()}
            out.append(StreamEvent(int(eid.split(b"-")[0]), fields.get("e", ""),
                                   fields.get("id", ""), fields))
        last = page[-1][0].decode()
        ms, seq = last.split("-")
        cursor = f"{ms}-{int(seq) + 1}"
        if len(page) < 10_000:
            return out


def events_of(events: Sequence[StreamEvent], name: str) -> Counter[str]:
    return Counter(e.job_id for e in events if e.event == name)


def duplicates(events: Sequence[StreamEvent], lines: Sequence[LogLine],
               ids: Iterable[str] | None = None) -> dict[str, Any]:
    """Duplicate figures over ``ids`` (default: every job seen)."""
    completed = events_of(events, "job-completed")
    starts = Counter(ln.job_id for ln in lines if ln.event == "start")
    finishes = Counter(ln.job_id for ln in lines if ln.event == "finish")
    scope = set(ids) if ids is not None else set(completed) | set(starts)
    dup_recorded = sorted(j for j in scope if completed[j] > 1)
    rerun = sorted(j for j in scope if starts[j] > 1)
    dup_success = sorted(j for j in scope if finishes[j] > 1)
    # A claim after the job's first recorded completion (stream order): a finished job
    # ran again.
    done: set[str] = set()
    again_set: set[str] = set()
    for e in events:
        if e.event == "job-completed":
            done.add(e.job_id)
        elif e.event == "job-started" and e.job_id in done and e.job_id in scope:
            again_set.add(e.job_id)
    again = sorted(again_set)
    return {
        "claims_after_completion": len(again),
        "claims_after_completion_examples": again[:5],
        "duplicate_recorded_completions": len(dup_recorded),
        "duplicate_recorded_examples": dup_recorded[:5],
        "jobs_run_more_than_once": len(rerun),
        "extra_runs": sum(max(0, starts[j] - 1) for j in scope),
        "jobs_completed_by_processor_more_than_once": len(dup_success),
        "extra_successful_runs": sum(max(0, finishes[j] - 1) for j in scope),
    }
