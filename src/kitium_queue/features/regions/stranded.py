"""Stranded work: what a former primary acknowledged but never replicated.

When a region that was the primary comes back after a failover, its outbox still holds
the entries its secondaries never applied: jobs it accepted that the new primary does
not have, outcomes it recorded that the new primary does not know (the job may run, or
have run, again there), requeues. ``collect`` reads them, compares each with the new
primary, and records what is really missing there as a *stranded* record in the new
primary's copy (``rg:stranded``, one hash ``rg:str:<id>`` per job, with the job as it
was, payload included), and the erasures it never replicated of jobs the new primary
still holds (without any of their data). Nothing stranded is ever run or dropped
silently: an operator lists the records (``GlobalQueueManager.stranded()``, ``kitium-queue regions
stranded``) and re-submits them (a job keeps its id, so a second re-submission adds
nothing; an outcome is applied if the job has not run again yet) or discards them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ...limits import get_logger
from ...outbox import OutboxEntry
from ...queue import JobQueue
from .copying import APPLIED, apply, end_entry, export
from .lua import ENTRY
from .record import RegionCopy

__all__ = ["StrandedJob", "collect", "discard", "held", "listing", "resubmit"]

log = get_logger(__name__)

_INDEX = "rg:stranded"
_PAGE = 500
_TERMINAL = {"completed", "failed", "dlq"}


def _s(v: Any) -> str:
    return v.decode(errors="replace") if isinstance(v, (bytes, bytearray)) else str(v)


@dataclass(frozen=True, slots=True)
class StrandedJob:
    """One stranded record.

    Attributes:
        id: the job's id (the same in every region).
        kind: ``"job"``: accepted by ``region`` and never replicated (the current primary
            does not have it); ``"outcome"``: it ended at ``region`` (``state``) but the
            current primary did not hear of it (``here``: its state there: it may run,
            or have run, again); ``"requeue"``: it was put back to wait at ``region``;
            ``"erasure"``: it was erased at ``region`` (its subject's erasure, a
            retention period that ended) and the current primary still holds it (the
            record keeps no data, subject or idempotency key of it; ``state`` reads
            ``"erased"``).
        region: the former primary it was stranded on; ``epoch``: the epoch it was
            accepted in there.
        name: the job name; ``state``: its state at ``region``; ``here``: its state
            where the record is kept (``recorded_in``) when it was detected.
        created_ms / detected_ms: when it was created, and found stranded.
    """

    id: str
    kind: str
    region: str
    epoch: int | None
    name: str
    state: str
    here: str
    created_ms: int
    detected_ms: int
    recorded_in: str

    def as_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__slots__}


async def _unapplied(q: JobQueue, group: str) -> list[OutboxEntry]:
    """Entries of ``q``'s outbox that ``group`` did not acknowledge (all of them when
    the group does not exist)."""
    client = await q.client()
    key = q.keys.extra("outbox")
    try:
        groups = await client.xinfo_groups(key)
    except Exception:  # no outbox: nothing was ever written
        return []
    info = next((g for g in groups if _s(g["name"]) == group), None)
    out: list[OutboxEntry] = []
    start = "-"
    if info is not None:
        pending = await client.xpending_range(key, group, "-", "+", 10_000)
        for p in pending:
            got = await client.xrange(key, p["message_id"], p["message_id"])
            out += [OutboxEntry.parse(i, raw) for i, raw in got]
        start = "(" + _s(info["last-delivered-id"])
    while True:
        got = await client.xrange(key, start, "+", count=_PAGE)
        out += [OutboxEntry.parse(i, raw) for i, raw in got]
        if len(got) < _PAGE:
            break
        start = "(" + _s(got[-1][0])
    return [e for e in out if e.topic == "rg"]


async def collect(primary: RegionCopy, old: RegionCopy, epoch: int | None) -> list[StrandedJob]:
    """Record, in ``primary``'s copy, what ``old`` (a former primary of ``epoch``) holds
    that ``primary`` lacks (see the module docstring); returns the records written."""
    entries = await _unapplied(old.lane, f"rg:{primary.name}")
    adds: list[str] = []
    ends: dict[str, OutboxEntry] = {}
    reqs: list[str] = []
    erased: set[str] = set()
    for e in entries:
        op, jid = _s(e.fields.get("op", b"")), _s(e.fields.get("id", b""))
        if not jid:
            continue
        if op == "add":
            adds.append(jid)
        elif op == "end":
            ends[jid] = e
        elif op == "req":
            reqs.append(jid)
        elif op == "erase":
            erased.add(jid)
    ids = list(dict.fromkeys([*adds, *ends, *reqs, *erased]))
    if not ids:
        return []
    here = {_s(r["id"]): r for r in await export(primary.lane, ids)}
    there = {_s(r["id"]): r for r in await export(old.lane, ids)}
    now = int(time.time() * 1000)
    client = await primary.lane.client()
    recorded: list[StrandedJob] = []
    for jid in ids:
        h, t = here.get(jid), there.get(jid)
        h_state = "missing" if h is None or _s(h["op"]) == "gone" else _s(h["state"])
        kind = ""
        row: dict[str, Any] = {}
        if jid in erased:
            if h is None or h_state == "missing":
                continue  # nothing of it there to erase
            # Erased there, not here: the record holds no data (nor its subject or
            # idempotency key); re-submitted, it erases the job here, and from here
            # everywhere else.
            kind = "erasure"
            row = {"op": "erase", "id": jid, "name": h["name"], "state": "erased"}
            row["created"] = h["created"]
        elif h_state == "missing" and t is not None and _s(t["op"]) != "gone":
            kind, row = "job", dict(t)
        elif jid in ends and h_state not in _TERMINAL and h_state != "missing":
            kind = "outcome"
            row = dict(zip(ENTRY, end_entry(primary.lane, ends[jid].fields), strict=True))
        elif jid in reqs and h_state in _TERMINAL and t is not None and _s(t["op"]) != "gone":
            kind, row = "requeue", {**t, "op": "req"}
        if not kind:
            continue
        epoch_s = _s(row.get("epoch", "")) or (str(epoch) if epoch is not None else "")
        meta = {
            "kind": kind,
            "region": old.name,
            "ep0": epoch_s,
            "here": h_state,
            "detected": now,
        }
        key = primary.lane.keys.extra(f"rg:str:{jid}")
        pipe = client.pipeline(transaction=True)
        pipe.delete(key)
        pipe.hset(key, mapping={**{k: row.get(k, "") for k in ENTRY}, **meta})
        pipe.zadd(primary.lane.keys.extra(_INDEX), {jid: now})
        await pipe.execute()
        recorded.append(_parse(jid, {**row, **meta}, primary.name))
    erasures = sum(1 for r in recorded if r.kind == "erasure")
    if erasures:
        log.error(
            "queue %s: region %s erased %d job(s) as the primary (epoch %s) and never "
            "replicated those erasures: region %s, and the regions following it, still "
            "hold those jobs; recorded as stranded erasures there: re-submit them "
            "(GlobalQueueManager.resubmit_stranded() or 'kitium-queue regions resubmit') "
            "to erase them everywhere",
            primary.queue_name,
            old.name,
            erasures,
            epoch,
            primary.name,
        )
    if recorded:
        log.warning(
            "queue %s: region %s held %d job(s), outcome(s) or erasure(s) it had accepted as "
            "the primary "
            "(epoch %s) that were never replicated; recorded as stranded in region %s "
            "(list them with GlobalQueueManager.stranded() or 'kitium-queue regions "
            "stranded', re-submit or discard them)",
            primary.queue_name,
            old.name,
            len(recorded),
            epoch,
            primary.name,
        )
    return recorded


def _parse(jid: str, h: Mapping[str, Any], where: str) -> StrandedJob:
    def num(v: Any) -> int:
        text = _s(v)
        return int(text) if text.lstrip("-").isdigit() else 0

    ep = _s(h.get("ep0", h.get("epoch", "")))
    return StrandedJob(
        id=jid,
        kind=_s(h.get("kind", "")),
        region=_s(h.get("region", "")),
        epoch=int(ep) if ep.isdigit() else None,
        name=_s(h.get("name", "")),
        state=_s(h.get("state", "")),
        here=_s(h.get("here", "")),
        created_ms=num(h.get("created", 0)),
        detected_ms=num(h.get("detected", 0)),
        recorded_in=where,
    )


async def listing(copy: RegionCopy, limit: int = 1000) -> list[StrandedJob]:
    """The stranded records kept in ``copy``, oldest first."""
    client = await copy.lane.client()
    ids = await client.zrange(copy.lane.keys.extra(_INDEX), 0, limit - 1)
    out = []
    for raw in ids:
        jid = _s(raw)
        h = await client.hgetall(copy.lane.keys.extra(f"rg:str:{jid}"))
        if h:
            out.append(_parse(jid, {_s(k): v for k, v in h.items()}, copy.name))
    return out


async def held(copy: RegionCopy, ids: Sequence[str]) -> set[str]:
    """Those of ``ids`` that ``copy`` keeps a stranded record of."""
    ids = list(dict.fromkeys(ids))
    if not ids:
        return set()
    client = await copy.lane.client()
    pipe = client.pipeline(transaction=False)
    for jid in ids:  # ZSCORE, not ZMSCORE: Redis before 6.2 has no ZMSCORE
        pipe.zscore(copy.lane.keys.extra(_INDEX), jid)
    scores = await pipe.execute()
    return {jid for jid, score in zip(ids, scores, strict=True) if score is not None}


async def _forget(copy: RegionCopy, jid: str) -> None:
    client = await copy.lane.client()
    pipe = client.pipeline(transaction=True)
    pipe.delete(copy.lane.keys.extra(f"rg:str:{jid}"))
    pipe.zrem(copy.lane.keys.extra(_INDEX), jid)
    await pipe.execute()


async def resubmit(copy: RegionCopy, primary: JobQueue, ids: Sequence[str]) -> dict[str, str]:
    """Apply stranded records of ``copy`` to the current primary's queue ``primary``.

    A job is added with its id (``"added"``, or ``"exists"`` if it is there already),
    unless its idempotency key names another job there (``"duplicate"``: its producer
    added it again after the failover, as told to; the record goes); an outcome ends the
    job there if it has not run again (``"ended"``; ``"exists"``: it had, it ran twice);
    a requeue puts it back to wait (``"requeued"``); an erasure erases the job there, in
    any state, and from there at every other region (``"erased"``; ``"gone"``: the job is
    not there any more, and a job that took its id since, created at another time, is
    left alone). Applied records are deleted; the others (``"refused"``) are kept.
    """
    client = await copy.lane.client()
    out: dict[str, str] = {}
    for jid in ids:
        h = await client.hgetall(copy.lane.keys.extra(f"rg:str:{jid}"))
        if not h:
            out[jid] = "unknown"
            continue
        fields = {_s(k): v for k, v in h.items()}
        kind = _s(fields.get("kind", ""))
        row = [fields.get(k, b"") for k in ENTRY]
        if kind == "job":
            # It keeps its id, creation time and the epoch that first accepted it.
            row[ENTRY.index("op")] = "put"
            if await _key_taken(primary, jid, _s(fields.get("ikey", b""))):
                # Added again there under its idempotency key (another id): a second
                # job for that key would run it twice.
                out[jid] = "duplicate"
                await _forget(copy, jid)
                continue
        if kind == "erasure" and not await _same_job(primary, jid, fields.get("created")):
            # The job it was recorded for is gone there; a job that took its id since
            # (another creation time) is another job, never erased for this one.
            out[jid] = "gone"
            await _forget(copy, jid)
            continue
        (status,) = await apply(primary, [row])
        out[jid] = status
        if status in APPLIED:
            await _forget(copy, jid)
    return out


async def _key_taken(primary: JobQueue, jid: str, ikey: str) -> bool:
    """Whether ``primary`` holds idempotency key ``ikey`` for another job than ``jid``
    (``add_job`` with that key would return that job's id)."""
    if not ikey:
        return False
    held = await (await primary.client()).get(primary.keys.idempotency(ikey))
    return held is not None and _s(held) != jid


async def _same_job(primary: JobQueue, jid: str, created: Any) -> bool:
    """Whether ``primary`` holds job ``jid`` created at ``created`` (a stranded
    erasure's record: the job the erasing region had)."""
    (row,) = await export(primary, [jid])
    return _s(row["op"]) != "gone" and _s(row["created"]) == _s(created)


async def discard(copy: RegionCopy, ids: Sequence[str]) -> int:
    """Delete stranded records of ``copy`` without applying them; how many existed."""
    client = await copy.lane.client()
    n = 0
    for jid in ids:
        if await client.zscore(copy.lane.keys.extra(_INDEX), jid) is not None:
            n += 1
        await _forget(copy, jid)
    return n
