"""What flow control holds now, read for people: the declarations of a queue in this
process and the counters of their keys in Redis (``flow_state``). The dashboard's Parked
tab and ``kitium-queue limits`` show it; nothing here writes, and reading does not
enable flow control on a queue that has not declared it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from redis.exceptions import ResponseError

from ..limits import clip, reply_text
from ..serverclock import execute_with_clock
from .flowcontrol import (
    FEATURE,
    OPTION_NAMES,
    concurrency_key,
    concurrency_owners_key,
    rate_key,
)

__all__ = ["MAX_FLOW_KEYS", "flow_declared", "flow_state"]

#: Flow-control keys of each kind whose counters ``flow_state`` reads at most.
MAX_FLOW_KEYS = 100


def _whole(value: Any) -> int | None:
    """A counter field read from Redis as a whole number, or None (absent or damaged)."""
    try:
        return int(float(reply_text(value)))
    except (TypeError, ValueError, OverflowError):
        return None


def flow_declared(queue: Any) -> bool:
    """Whether flow control (``queue.flow``) was declared on ``queue`` in this process
    (asked without enabling it)."""
    spec = queue.jobspec.get(OPTION_NAMES[1])
    return spec is not None and spec.feature == FEATURE


def _damage(reply: Any) -> str | None:
    """The error a pipeline reply reports (a key of another type), else None."""
    return clip(str(reply), 200) if isinstance(reply, Exception) else None


async def flow_state(
    queue: Any, blockers: Iterable[str] = (), most: int = MAX_FLOW_KEYS
) -> dict[str, Any]:
    """Flow control of ``queue`` as declared in this process (not enabled by asking)
    and the counters of its keys: those of its exact declarations, of ``blockers``
    (``'cc:<key>'``, ``'rl:<key>'``: the names of ``ParkStats.top``) and of one page of
    the running jobs' keys, at most ``most`` of each kind. One round trip (two with
    concurrency caps); a key damaged outside kitium-queue is reported, never raised.

    Returns JSON-ready values: ``declared``; ``now_ms`` (the Redis clock);
    ``rate_limits`` (``pattern``, ``max``, ``duration`` in ms); ``concurrency_limits``
    (``pattern``, ``max``); ``global_cap`` (None: none); ``active`` (jobs running in
    the queue, which the global cap counts; None when ``active_damaged``);
    ``park_rate_limited``; ``owners_damaged`` (the hash of running jobs' keys holds
    another type); ``counters``, one per key: ``kind`` ``concurrency`` (``limit``: the
    cap that applies, ``running``) or ``rate`` (``max`` and ``duration`` of the limit
    that applies, ``held_ms``: what is left of a ``RateLimited`` hold, ``started`` and
    ``window_ends_ms`` of the open window), with ``full`` and ``damaged``. A value
    that does not apply or cannot be read is None."""
    if isinstance(most, bool) or not isinstance(most, int) or most < 1:
        raise ValueError(f"most must be an int >= 1, got {most!r:.100}")
    flow = queue.flow if flow_declared(queue) else None
    rates: dict[str, Any] = dict(flow.rate_limits) if flow else {}
    caps: dict[str, int] = dict(flow.concurrency_limits) if flow else {}
    keys = queue.keys
    client = await queue.client()
    cc = [p for p in caps if not p.endswith("*")]
    rl = [p for p in rates if not p.endswith("*")]
    for name in blockers:  # the keys jobs are parked behind
        kind, _, key = name.partition(":")
        into = cc if kind == "cc" else rl if kind == "rl" else None
        if into is not None and key not in into:
            into.append(key)
    owners_damaged = None
    if caps:
        try:  # one page of the running jobs' keys
            _, page = await client.hscan(concurrency_owners_key(keys), 0, count=most)
            cc.extend(k for k in dict.fromkeys(map(reply_text, page.values())) if k not in cc)
        except ResponseError as exc:
            owners_damaged = _damage(exc)
    cc, rl = cc[:most], rl[:most]
    pipe = client.pipeline(transaction=False)
    pipe.zcard(keys.active)
    for k in cc:
        pipe.scard(concurrency_key(keys, k))
    for k in rl:
        pipe.hmget(rate_key(keys, k), "w", "n")
        pipe.pttl(keys.hold(k))
    got, clock = await execute_with_clock(
        client, pipe, cluster=queue.connection.is_cluster, raise_on_error=False
    )
    got.insert(0, clock)
    now = int(got[0][0]) * 1000 + int(got[0][1]) // 1000
    counters: list[dict[str, Any]] = []
    for k, reply in zip(cc, got[2 : 2 + len(cc)], strict=True):
        cap, bad = flow.limit_of(k, caps) if flow else None, _damage(reply)
        running = None if bad else int(reply)
        full = cap is not None and running is not None and running >= cap
        counters.append(
            {"kind": "concurrency", "key": k, "limit": cap, "running": running}
            | {"full": full, "damaged": bad}
        )
    replies = got[2 + len(cc) :]
    for i, k in enumerate(rl):
        window, held = replies[2 * i], replies[2 * i + 1]
        lim = flow.limit_of(k, rates) if flow else None
        row: dict[str, Any] = {
            "kind": "rate",
            "key": k,
            "max": None if lim is None else lim.max,
            "duration": None if lim is None else lim.duration,
            "held_ms": None,
            "started": None,
            "window_ends_ms": None,
            "full": False,
            "damaged": _damage(window) or _damage(held),
        }
        if row["damaged"] is None:
            opened, used = _whole(window[0]), _whole(window[1]) or 0
            if isinstance(held, int) and held > 0:
                row.update(held_ms=held, full=True)
            elif lim is not None and opened is not None and opened <= now < opened + lim.duration:
                row.update(started=used, window_ends_ms=opened + lim.duration)
                row["full"] = used >= lim.max
        counters.append(row)
    active = got[1]
    return {
        "declared": flow is not None,
        "now_ms": now,
        "rate_limits": [
            {"pattern": p, "max": r.max, "duration": r.duration}
            for p, r in list(rates.items())[:most]
        ],
        "concurrency_limits": [{"pattern": p, "max": c} for p, c in list(caps.items())[:most]],
        "global_cap": flow.global_concurrency if flow else None,
        "active": None if _damage(active) else int(active),
        "active_damaged": _damage(active),
        "park_rate_limited": bool(flow and flow.park_rate_limited),
        "owners_damaged": owners_damaged,
        "counters": counters,
    }
