"""``kitium-queue parked list|show`` and ``kitium-queue limits``: the parked jobs of a
queue and its flow control, as the dashboard's Parked tab shows them.

The data comes from the functions the dashboard calls (``parking.park_stats``,
``parking.blocker_sets``, ``parking.parked_in``, ``features.flowstate.flow_state``), after
the queue's read guards (``get_stats``; ``get_jobs_by_status`` for the ids). ``--json``
prints what they return, with ``queue`` naming the queue; a partitioned APP is read
queue by queue (a list in JSON, the queue's name in every plain row). Blocker names,
keys and ids come from Redis, so in text output every field is escaped (``text_field``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import click

from ..errors import DamagedKeyError
from ..parking import ParkStats, blocker_sets, park_stats, parked_in
from ..queries import check_reads
from .base import json_option, members, redis_option, with_queue
from .manage import parked
from .output import Output, output, when

__all__ = ["limits", "parked_list", "parked_show"]


def _one_or_all(items: list[dict[str, Any]]) -> Any:
    return items[0] if len(items) == 1 else items


async def _stats(q: Any, top: int) -> ParkStats:
    """``park_stats``, or a clear error when a score of the index or the timers was
    written by hand as something that is no whole number (``inf``)."""
    try:
        return await park_stats(q, top)
    except (ValueError, OverflowError) as exc:
        raise click.ClickException(
            f"the parked index {q.keys.parked_index} or the timers {q.keys.park_timers} of "
            f"queue '{q.name}' hold a score that is no whole number ({exc}), written "
            "outside kitium-queue: delete the damaged one, then run kitium-queue parked "
            "rebuild APP"
        ) from None


def _slot_rows(errors: dict[str, str]) -> list[tuple[str, str, str]]:
    """Slot errors as (what, when, message), damaged keys first."""
    rows = []
    for name, value in sorted(errors.items(), key=lambda e: (not e[0].startswith("damaged:"), e)):
        stamp, _, text = value.partition(" ")
        known = stamp.isdigit() and len(stamp) <= 15
        rows.append((name, when(int(stamp)) if known else "-", text if known else value))
    return rows


# ---------------------------------------------------------------------- parked list
def _limit(default: int, what: str) -> Callable[[Any], Any]:
    """The ``-n/--limit`` option of a listing."""
    return click.option(
        "-n",
        "--limit",
        type=click.IntRange(1, 10_000),
        default=default,
        show_default=True,
        help=what,
    )


@parked.command("list")
@click.argument("app")
@_limit(50, "Blockers listed, the largest first.")
@json_option
@redis_option
def parked_list(app: str, limit: int, as_json: bool, redis: str | None) -> None:
    """List the blockers holding the most parked jobs of APP, with their counts and the
    state of each one's set (ok, missing or damaged, with the repair), the totals and
    the slot errors (a 'damaged:<key>' entry names a key to repair)."""
    out = output(as_json)

    async def act(q: Any) -> list[tuple[Any, ParkStats, list[Any]]]:
        parts = members(q)
        await check_reads(parts, "get_stats", {})
        found = []
        for m in parts:
            stats = await _stats(m, limit)
            found.append((m, stats, await blocker_sets(m, stats.top)))
        return found

    found = with_queue(app, redis, act)
    if as_json:
        docs = [
            {"queue": m.name, "stats": asdict(s), "blockers": [b.to_dict() for b in sets]}
            for m, s, sets in found
        ]
        out.json(_one_or_all(docs))
        return
    for m, s, sets in found:
        _print_list(out, m.name, s, sets)


def _print_list(out: Output, name: str, s: ParkStats, sets: list[Any]) -> None:
    rows = [[b.name, "-" if b.count is None else b.count, b.state, b.repair or ""] for b in sets]
    errors = _slot_rows(s.slot_errors)
    if out.rich:
        out.fields(
            [
                ("parked", s.total),
                ("blockers", s.blockers),
                ("timers", s.timers),
                ("next timer", when(s.next_timer_ms)),
            ],
            title=f"queue {name}",
        )
        # The repair in a column of its own when a set needs one.
        n = 4 if any(b.repair for b in sets) else 3
        columns = ["blocker", "parked", "set", "repair"][:n]
        out.table(columns, [r[:n] for r in rows], empty="no parked jobs")
        if errors:
            out.table(["slot error", "at", "message"], errors, title="slot errors")
        return
    out.line(
        "parked",
        name,
        f"total={s.total}",
        f"blockers={s.blockers}",
        f"timers={s.timers}",
        f"next_timer={when(s.next_timer_ms)}",
    )
    for r in rows:
        out.line("blocker", name, *r[:3], *r[3:] if r[3] else ())
    for what, at, message in errors:
        out.line("slot-error", name, what, at, message)


# ---------------------------------------------------------------------- parked show
@parked.command("show")
@click.argument("app")
@click.argument("blocker")
@_limit(100, "Ids listed.")
@click.option(
    "--offset", type=click.IntRange(0, 2**40), default=0, help="Ids skipped first (paging)."
)
@json_option
@redis_option
def parked_show(
    app: str, blocker: str, limit: int, offset: int, as_json: bool, redis: str | None
) -> None:
    """List the ids of the jobs parked behind BLOCKER in APP ('cc:<key>', 'g:<group>',
    ...: as 'parked list' names it), in the order they return to wait, and the state
    of its set. Exit 1, with the repair, when the set is damaged."""
    if not blocker:
        raise click.BadParameter("give a blocker, as 'parked list' names it", param_hint="BLOCKER")
    out = output(as_json)

    async def act(q: Any) -> list[dict[str, Any]]:
        parts = members(q)
        await check_reads(parts, "get_stats", {})
        args = {"status": "pending", "limit": limit, "offset": offset}
        await check_reads(parts, "get_jobs_by_status", args)
        docs = []
        for m in parts:
            (b,) = await blocker_sets(m, [blocker])
            ids = [] if b.state == "damaged" else await parked_in(m, blocker, limit + 1, offset)
            docs.append(
                {"queue": m.name, **b.to_dict(), "offset": offset, "limit": limit}
                | {"ids": ids[:limit], "more": len(ids) > limit}
            )
        return docs

    docs = with_queue(app, redis, act)
    if as_json:
        out.json(_one_or_all(docs))
    else:
        for d in docs:
            _print_show(out, d)
    for d in docs:  # after the output: what is wrong, and what to do
        if d["state"] == "damaged":
            raise DamagedKeyError("", d["key"], d["found"], "zset")


def _print_show(out: Output, d: dict[str, Any]) -> None:
    count = "-" if d["count"] is None else d["count"]
    more = d["offset"] + d["limit"] if d["more"] else None
    if out.rich:
        pairs: list[tuple[str, object]] = [
            ("blocker", d["name"]),
            ("parked", count),
            ("set", d["state"]),
        ]
        if d["repair"]:
            pairs.append(("repair", d["repair"]))
        if more is not None:
            pairs.append(("more", f"--offset {more}"))
        out.fields(pairs, title=f"queue {d['queue']}")
        out.table(["id"], [[i] for i in d["ids"]], empty="no ids" if d["offset"] else None)
        return
    extra = [d["repair"]] if d["repair"] else []
    out.line("blocker", d["queue"], d["name"], f"parked={count}", f"set={d['state']}", *extra)
    for i in d["ids"]:
        out.line("id", d["queue"], i)
    if more is not None:
        out.line("more", d["queue"], f"--offset {more}")


# ---------------------------------------------------------------------- limits
@click.command("limits")
@click.argument("app")
@json_option
@redis_option
def limits(app: str, as_json: bool, redis: str | None) -> None:
    """Show APP's flow control: the rate limits, concurrency caps and global cap it
    declares (in code, in APP's module), the jobs running now, and the counters of
    the keys with running or parked jobs (full, or damaged with the error)."""
    from ..features.flowstate import MAX_FLOW_KEYS, flow_state

    out = output(as_json)

    async def act(q: Any) -> list[dict[str, Any]]:
        parts = members(q)
        await check_reads(parts, "get_stats", {})
        docs = []
        for m in parts:
            try:
                top = [name for name, _ in (await park_stats(m, MAX_FLOW_KEYS)).top]
            except (ValueError, OverflowError):  # an index damaged by hand: 'parked list'
                top = []
            docs.append({"queue": m.name, **await flow_state(m, top, MAX_FLOW_KEYS)})
        return docs

    docs = with_queue(app, redis, act)
    if as_json:
        out.json(_one_or_all(docs))
        return
    for d in docs:
        _print_limits(out, d)
    if not any(d["declared"] for d in docs):
        click.echo(
            "note: APP declares no flow control (set_rate_limit, set_concurrency_limit, "
            "set_global_concurrency in its module): no limits to show",
            err=True,
        )


def _counter_text(c: dict[str, Any], now: int) -> tuple[str, str]:
    """A counter's limit and what it is at now."""
    if c["kind"] == "concurrency":
        cap = "-" if c["limit"] is None else f"{c['limit']} running"
        return cap, "-" if c["running"] is None else f"{c['running']} running"
    lim = "-" if c["max"] is None else f"{c['max']} per {c['duration']} ms"
    if c["held_ms"] is not None:
        return lim, f"held by RateLimited for {c['held_ms']} ms more"
    if c["window_ends_ms"] is None:
        return lim, "no window open" if c["damaged"] is None else "-"
    return lim, f"{c['started']} started; window ends in {c['window_ends_ms'] - now} ms"


def _print_limits(out: Output, d: dict[str, Any]) -> None:
    name = d["queue"]
    cap = d["global_cap"] or "none"
    running = d["active"] if d["active_damaged"] is None else f"damaged: {d['active_damaged']}"
    decls = [
        ["rate limit", r["pattern"], f"{r['max']} per {r['duration']} ms"] for r in d["rate_limits"]
    ]
    decls += [
        ["concurrency cap", c["pattern"], f"{c['max']} running"] for c in d["concurrency_limits"]
    ]
    if d["global_cap"]:
        decls.append(["global cap", "-", f"{d['global_cap']} running"])
    counters = []
    for c in d["counters"]:
        limit, now = _counter_text(c, d["now_ms"])
        state = f"damaged: {c['damaged']}" if c["damaged"] else "full" if c["full"] else "ok"
        counters.append([c["kind"], c["key"], limit, now, state])
    owners = d["owners_damaged"]
    if out.rich:
        pairs: list[tuple[str, object]] = [
            ("declared", "yes" if d["declared"] else "no"),
            ("global cap", cap),
            ("running now", running),
            ("rate-limited jobs parked", "yes" if d["park_rate_limited"] else "no"),
        ]
        if owners:
            pairs.append(("owners of running jobs", f"damaged: {owners}"))
        out.fields(pairs, title=f"flow control of queue {name}")
        out.table(["declaration", "pattern", "limit"], decls, empty="no limits declared")
        if counters:
            out.table(["kind", "key", "limit", "now", "state"], counters, title="counters")
        return
    out.line(
        "flow",
        name,
        f"declared={'yes' if d['declared'] else 'no'}",
        f"global_cap={cap}",
        f"running={running}",
        f"park_rate_limited={'yes' if d['park_rate_limited'] else 'no'}",
    )
    for r in decls:
        out.line(r[0].replace(" ", "-"), name, *r[1:])
    if owners:
        out.line("damaged", name, "owners of running jobs", owners)
    for r in counters:
        out.line("counter", name, *r)
