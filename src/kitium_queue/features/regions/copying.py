"""Moving jobs between copies of a queue: export (``rg_export.lua``), apply
(``rg_apply.lua``), and the bulk moves built on them: a full snapshot of one copy into
another, and a merge of the copies one region added since a point in time."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

import orjson

from ...outcomes import keep_args
from ...queue import JobQueue
from .lua import ENTRY, rows

__all__ = [
    "APPLIED",
    "MARGIN_MS",
    "apply",
    "end_entry",
    "export",
    "merge_since",
    "snapshot",
]

#: Statuses of rg_apply.lua that mean the copy now holds the job as the source had it.
APPLIED = frozenset({"added", "ended", "requeued", "exists", "gone"})
#: Slack on the time comparisons between regions (creation times vs. positions).
MARGIN_MS = 2000
_EXPORT_MAX = 1000
_APPLY_MAX = 500
_PAGE = 500


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


async def apply(
    q: JobQueue,
    entries: Sequence[Sequence[Any]],
    *,
    pos: str = "",
    src: str = "",
    cutoff: int = 0,
    floor: int | None = None,
) -> list[str]:
    """Apply ``entries`` to copy ``q``; one status per entry. ``pos``/``src``: the
    replication position recorded once the last chunk is applied; ``floor``: the ``at``
    of entries without one (default: now, this process's clock)."""
    if floor is None:
        floor = now_ms()
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
    source: JobQueue, target: JobQueue, ids: Sequence[str], *, op: str = "put"
) -> dict[str, int]:
    """Copy jobs ``ids`` from ``source`` to ``target`` as they are now; counts per status."""
    counts: dict[str, int] = {}
    for chunk in _chunks(list(ids), _APPLY_MAX):
        got = await export(source, chunk)
        entries = [as_entry(r, op) for r in got if _s(r["op"]) != "gone"]
        for status in await apply(target, entries):
            counts[status] = counts.get(status, 0) + 1
    return counts


async def _copy_pages(
    source: JobQueue,
    target: JobQueue,
    page: Callable[[int], Awaitable[list[Any]]],
    counts: dict[str, int],
) -> None:
    """Copy the ids ``page(offset)`` gives, page after page, adding up the statuses."""
    offset = 0
    while True:
        ids = await page(offset)
        if not ids:
            return
        offset += len(ids)
        for k, v in (await copy_ids(source, target, [_s(i) for i in ids])).items():
            counts[k] = counts.get(k, 0) + v
        if len(ids) < _PAGE:
            return


async def merge_since(source: JobQueue, target: JobQueue, since_ms: int) -> dict[str, int]:
    """Copy into ``target`` every job ``source`` received as a copy (its index) created
    at or after ``since_ms`` (less ``MARGIN_MS``); counts per status."""
    client = await source.client()
    key = source.keys.extra("rg:idx")
    low = max(0, since_ms - MARGIN_MS)
    counts: dict[str, int] = {}

    async def page(offset: int) -> list[Any]:
        return list(await client.zrangebyscore(key, low, "+inf", start=offset, num=_PAGE))

    await _copy_pages(source, target, page, counts)
    return counts


async def snapshot(source: JobQueue, target: JobQueue) -> dict[str, int]:
    """Copy every job of ``source`` (every state, parked ones too) into ``target``."""
    client = await source.client()
    k = source.keys
    blockers = await client.zrange(k.parked_index, 0, -1)
    sets = [k.wait, k.delayed, k.active, k.completed, k.failed, k.dlq]
    sets += [k.parked(_s(b)) for b in blockers]
    counts: dict[str, int] = {}
    for key in sets:

        async def page(offset: int, key: str = key) -> list[Any]:
            return list(await client.zrange(key, offset, offset + _PAGE - 1))

        await _copy_pages(source, target, page, counts)
    return counts
