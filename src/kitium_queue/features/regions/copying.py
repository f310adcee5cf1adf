"""Moving jobs between copies of a queue: export (``rg_export.lua``), apply
(``rg_apply.lua``), and the bulk moves built on them: a full snapshot of one copy into
another, and a merge of the copies one region added since a point in time."""

from __future__ import annotations

import time
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

import orjson

from ...jobspec import FEATURE_HOWTO
from ...limits import get_logger, printable
from ...outcomes import keep_args
from ...queue import JobQueue
from .lua import ENTRY, rows

__all__ = [
    "APPLIED",
    "MARGIN_MS",
    "NOTE_EVERY_S",
    "apply",
    "end_entry",
    "export",
    "merge_since",
    "missing_features",
    "snapshot",
]

#: Statuses of rg_apply.lua that mean the copy now holds the job as the source had it.
APPLIED = frozenset({"added", "ended", "requeued", "exists", "gone", "erased"})
#: Slack on the time comparisons between regions (creation times vs. positions).
MARGIN_MS = 2000
_EXPORT_MAX = 1000
_APPLY_MAX = 500
_PAGE = 500
#: How often (s) a copy of the queue that lacks a feature its copies need says so again.
NOTE_EVERY_S = 60.0
_OPTS, _ID = ENTRY.index("opts"), ENTRY.index("id")
# Per copy of the queue: option -> when its missing feature was last logged (monotonic).
_NOTED: weakref.WeakKeyDictionary[JobQueue, dict[str, float]] = weakref.WeakKeyDictionary()

log = get_logger(__name__)


def _s(v: Any) -> str:
    return v.decode(errors="replace") if isinstance(v, (bytes, bytearray)) else str(v)


def _chunks(items: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def now_ms() -> int:
    return int(time.time() * 1000)


async def export(q: JobQueue, ids: Sequence[str]) -> list[dict[str, Any]]:
    """The jobs ``ids`` of copy ``q`` as entries (op ``put``, or ``gone``)."""
    out: list[dict[str, Any]] = []
    for chunk in _chunks(list(ids), _EXPORT_MAX):
        out += rows(await q.run("rg_export", list(chunk)))
    return out


def as_entry(row: Mapping[str, Any], op: str | None = None) -> list[Any]:
    """An exported row as the fields ``rg_apply.lua`` takes (``op`` replaced)."""
    values = [row.get(name, "") for name in ENTRY]
    if op is not None and _s(values[0]) != "gone":
        values[0] = op
    return values


def end_entry(
    q: JobQueue, fields: Mapping[str, bytes], at: int | str = "", seq: int | str = ""
) -> list[Any]:
    """The entry of an outbox ``end`` (fields of release.lua) written at ``at`` (its
    outbox entry ``<at>-<seq>``): the copy's retention is the one the job's options
    give on this queue."""
    outcome = _s(fields.get("oc", b"removed"))
    raw = fields.get("o", b"")
    try:
        opts = orjson.loads(raw) if raw else {}
        if not isinstance(opts, dict):
            opts = {}
    except orjson.JSONDecodeError:
        opts = {}
    policy = q.policy_for(opts)
    keep = policy.keep_completed if outcome == "completed" else policy.keep_failed
    count, age = keep_args(keep)
    values: dict[str, Any] = {
        "op": "end",
        "id": fields.get("id", b""),
        "name": fields.get("n", b""),
        "opts": raw,
        "priority": fields.get("p", b"0"),
        "lifo": "0",
        "created": fields.get("ts", b""),
        "state": outcome,
        "epoch": fields.get("ep", b""),
        "ikey": fields.get("ik", b""),
        "ittl": fields.get("ittl", b"0"),
        "payload": fields.get("pl", b""),
        "finished": now_ms(),
        "keep_count": count,
        "keep_age": age,
        "at": at,
        "seq": seq,
    }
    return [values.get(name, "") for name in ENTRY]


def missing_features(q: JobQueue, entries: Sequence[Sequence[Any]]) -> dict[str, str]:
    """The feature options (``jobspec.FEATURE_HOWTO``: ``workflow_id``,
    ``message_group_id``...) that jobs of ``entries`` carry and copy ``q`` does not
    declare in this process, each with one such job's id. Such a copy is stored as a
    plain job: ``q``'s scripts have none of that feature's fragments, so nothing of what
    the feature keeps beside its jobs is recorded for it (a workflow's step would not
    wait for its parents there)."""
    lacking = [o for o in FEATURE_HOWTO if o != "region" and q.jobspec.get(o) is None]
    found: dict[str, str] = {}
    if not lacking:
        return found
    for e in entries:
        raw = e[_OPTS]
        if not raw:
            continue
        text = raw if isinstance(raw, (bytes, bytearray)) else str(raw).encode()
        for o in lacking:
            if o not in found and b'"' + o.encode() + b'":' in text:
                found[o] = _s(e[_ID])
    return found


def _note_missing(q: JobQueue, entries: Sequence[Sequence[Any]], region: str) -> None:
    """Log (an error, at most every ``NOTE_EVERY_S`` per copy and feature) the features
    ``missing_features`` finds: a failover to that region would run such jobs without
    them."""
    found = missing_features(q, entries)
    if not found:
        return
    # One line per way to enable (workflow_id and depends_on: one feature).
    by_howto: dict[str, dict[str, str]] = {}
    for option, jid in found.items():
        by_howto.setdefault(FEATURE_HOWTO[option][1], {})[option] = jid
    now = time.monotonic()
    noted = _NOTED.setdefault(q, {})
    where = f"region {region}" if region else "a copy"
    for how, options in by_howto.items():
        if now - noted.get(how, -NOTE_EVERY_S) < NOTE_EVERY_S:
            continue
        feature = FEATURE_HOWTO[next(iter(options))][0]
        noted[how] = now
        log.error(
            "queue %s: %s stores copies of jobs with %s (job %s, and maybe others), which "
            "need %s; that feature is not enabled on that region's queue in this process, "
            "so the copies are kept as plain jobs, without what the feature records "
            "beside them (a workflow's steps there would not wait for their parents after "
            "a failover to it). Enable it on every region's queue as on the primary's "
            "(%s, the queue being manager.region(name).lane, or through queue_options), "
            "in every process of the regions",
            printable(q.name),
            where,
            " and ".join(f"option {o!r}" for o in options),
            printable(next(iter(options.values()))),
            feature,
            how,
        )


async def apply(
    q: JobQueue,
    entries: Sequence[Sequence[Any]],
    *,
    pos: str = "",
    src: str = "",
    cutoff: int = 0,
    floor: int | None = None,
    region: str = "",
) -> list[str]:
    """Apply ``entries`` to copy ``q``; one status per entry. ``pos``/``src``: the
    replication position recorded once the last chunk is applied; ``floor``: the ``at``
    of entries without one (default: now, this process's clock); ``region``: ``q``'s
    region, named when its queue lacks a feature the copies need (``missing_features``,
    logged as an error)."""
    if floor is None:
        floor = now_ms()
    if entries:
        _note_missing(q, entries, region)
    out: list[str] = []
    chunks = list(_chunks(list(entries), _APPLY_MAX)) or [[]]
    dlq = "1" if q.dlq.enabled else "0"
    for n, chunk in enumerate(chunks):
        last = n == len(chunks) - 1
        flat = [x for e in chunk for x in e]
        reply = await q.run("rg_apply", [dlq, pos if last else "", src, cutoff, floor, *flat])
        out += [_s(x) for x in reply]
    return out


async def copy_ids(
    source: JobQueue, target: JobQueue, ids: Sequence[str], *, op: str = "put", region: str = ""
) -> dict[str, int]:
    """Copy jobs ``ids`` from ``source`` to ``target`` (region ``region``) as they are
    now; counts per status."""
    counts: dict[str, int] = {}
    for chunk in _chunks(list(ids), _APPLY_MAX):
        got = await export(source, chunk)
        entries = [as_entry(r, op) for r in got if _s(r["op"]) != "gone"]
        for status in await apply(target, entries, region=region):
            counts[status] = counts.get(status, 0) + 1
    return counts


async def _copy_pages(
    source: JobQueue,
    target: JobQueue,
    page: Callable[[int], Awaitable[list[Any]]],
    counts: dict[str, int],
    region: str = "",
) -> None:
    """Copy the ids ``page(offset)`` gives, page after page, adding up the statuses."""
    offset = 0
    while True:
        ids = await page(offset)
        if not ids:
            return
        offset += len(ids)
        got = await copy_ids(source, target, [_s(i) for i in ids], region=region)
        for k, v in got.items():
            counts[k] = counts.get(k, 0) + v
        if len(ids) < _PAGE:
            return


async def merge_since(
    source: JobQueue, target: JobQueue, since_ms: int, region: str = ""
) -> dict[str, int]:
    """Copy into ``target`` (region ``region``) every job ``source`` received as a copy
    (its index) created at or after ``since_ms`` (less ``MARGIN_MS``); counts per
    status."""
    client = await source.client()
    key = source.keys.extra("rg:idx")
    low = max(0, since_ms - MARGIN_MS)
    counts: dict[str, int] = {}

    async def page(offset: int) -> list[Any]:
        return list(await client.zrangebyscore(key, low, "+inf", start=offset, num=_PAGE))

    await _copy_pages(source, target, page, counts, region)
    return counts


async def snapshot(source: JobQueue, target: JobQueue, region: str = "") -> dict[str, int]:
    """Copy every job of ``source`` (every state, parked ones too) into ``target``
    (region ``region``)."""
    client = await source.client()
    k = source.keys
    blockers = await client.zrange(k.parked_index, 0, -1)
    sets = [k.wait, k.delayed, k.active, k.completed, k.failed, k.dlq]
    sets += [k.parked(_s(b)) for b in blockers]
    counts: dict[str, int] = {}
    for key in sets:

        async def page(offset: int, key: str = key) -> list[Any]:
            return list(await client.zrange(key, offset, offset + _PAGE - 1))

        await _copy_pages(source, target, page, counts, region)
    return counts
