"""``kitium-queue schedules ...`` and ``kitium-queue breakers ...``: list, show and change
a queue's schedules and circuit breakers. Both belong to one physical queue (a
partitioned APP names one of its queues: ``module:attribute.queues.N``).
``kitium-queue parked rebuild``: the repair of parked sets damaged by hand, on every
queue of APP (``parked list`` and ``parked show`` are in ``parking.py``), and
``kitium-queue jobs orphans``: job records no state set lists, found and put back."""

from __future__ import annotations

import json
from typing import Any

import click

from .base import json_option, members, redis_option, row, text_field, with_queue, with_single_queue
from .jobs import jobs
from .output import output, when

__all__ = ["breakers", "parked", "schedules"]


# ---------------------------------------------------------------------- schedules
@click.group()
def schedules() -> None:
    """List, pause, resume and remove the queue's schedules."""


@schedules.command("list")
@click.argument("app")
@json_option
@redis_option
def schedules_list(app: str, as_json: bool, redis: str | None) -> None:
    """List schedules: id, job name, timing, state, next run (UTC), runs so far."""
    out = output(as_json)

    async def act(q: Any) -> None:
        items = await q.get_schedules()
        if as_json:
            out.json([s.to_dict() for s in items])
            return
        if not items:
            out.line(f"no schedules in queue '{text_field(q.name)}'")
            return
        rows = []
        for s in items:
            timing = (
                f"cron {s.cron} ({s.tz})"
                if s.cron
                else "-"
                if s.every_ms is None
                else f"every {s.every_ms} ms"
            )
            state = "paused" if s.paused else "finished" if s.finished else "active"
            rows.append(
                [s.id, s.job_name, timing, state, when(s.next_run_at), s.runs, s.skipped, s.damaged]
            )
        if out.rich:
            # A record damaged by hand says what is wrong in a column of its own.
            columns = ["id", "job", "timing", "state", "next run", "runs", "skipped", "damaged"]
            n = 8 if any(s.damaged for s in items) else 7
            out.table(columns[:n], [r[:n] for r in rows])
        else:
            for r in rows:
                damaged = [] if r[7] is None else [f"damaged={r[7]}"]
                out.line(*r[:4], f"next={r[4]}", f"runs={r[5]}", f"skipped={r[6]}", *damaged)

    with_single_queue(app, redis, act)


def _schedule_action(verb: str, method: str, done: str, what: str) -> Any:
    # The help is given to click here: a docstring set after the decorators ran would
    # never reach ``--help``.
    @schedules.command(verb, help=f"{what} Exit 1 if APP has no schedule SCHEDULE_ID.")
    @click.argument("app")
    @click.argument("schedule_id")
    @json_option
    @redis_option
    def command(app: str, schedule_id: str, as_json: bool, redis: str | None) -> None:
        async def act(q: Any) -> bool:
            ok: bool = await getattr(q, method)(schedule_id)
            return ok

        if not with_single_queue(app, redis, act):
            raise click.ClickException(f"schedule '{text_field(schedule_id)}' not found")
        if as_json:
            click.echo(json.dumps({"action": done, "schedule_id": schedule_id}))
        else:
            click.echo(f"{done} {text_field(schedule_id)}")

    return command


schedules_pause = _schedule_action(
    "pause",
    "pause_schedule",
    "paused",
    "Stop schedule SCHEDULE_ID of APP from firing (its jobs already enqueued stay).",
)
schedules_resume = _schedule_action(
    "resume",
    "resume_schedule",
    "resumed",
    "Resume paused schedule SCHEDULE_ID of APP at its next tick from now.",
)
schedules_remove = _schedule_action(
    "remove",
    "remove_schedule",
    "removed",
    "Delete schedule SCHEDULE_ID of APP (its jobs already enqueued stay).",
)


# ---------------------------------------------------------------------- breakers
@click.group()
def breakers() -> None:
    """List, show, reset and open the queue's circuit breakers."""


_BREAKER_COLUMNS = [
    "id",
    "state",
    "since",
    "requests",
    "failures",
    "rate",
    "held",
    "next probe",
    "job name",
]


def _breaker_fields(st: Any) -> list[object]:
    return [
        st.config.id,
        f"{st.state.value} (damaged)" if st.damaged else st.state,
        when(st.since_ms),
        st.requests,
        st.failures,
        f"{st.failure_rate:g}%",
        st.held_jobs,
        when(st.next_probe_ms),
        st.config.job_name or "-",
    ]


def _breaker_row(st: Any) -> str:
    f = _breaker_fields(st)
    return row(
        f[0],
        f[1],
        f"since={f[2]}",
        f"requests={f[3]}",
        f"failures={f[4]}",
        f"rate={f[5]}",
        f"held={f[6]}",
        f"next_probe={f[7]}",
        f"job_name={f[8]}",
    )


def _show_breakers(as_json: bool, items: list[Any]) -> None:
    out = output(as_json)
    if out.rich:
        out.table(_BREAKER_COLUMNS, [_breaker_fields(st) for st in items])
    else:
        for st in items:
            click.echo(_breaker_row(st))
    for st in items:  # what is damaged in Redis, and how to repair it
        if st.damaged:
            click.echo(row("damaged", st.config.id, st.damaged))


def _manager(q: Any) -> Any:
    from ..features.breakers import CircuitBreakerManager

    return CircuitBreakerManager(q, events=False)


@breakers.command("list")
@click.argument("app")
@json_option
@redis_option
def breakers_list(app: str, as_json: bool, redis: str | None) -> None:
    """List breakers: id, state, since (UTC), window counts, held jobs, next probe."""

    async def act(q: Any) -> None:
        items = await _manager(q).list_breakers()
        if as_json:
            click.echo(json.dumps([s.to_dict() for s in items], indent=2))
        elif not items:
            click.echo(f"no circuit breakers in queue '{text_field(q.name)}'")
        else:
            _show_breakers(False, items)

    with_single_queue(app, redis, act)


@breakers.command("show")
@click.argument("app")
@click.argument("breaker_id")
@click.option(
    "-n",
    "--history",
    "limit",
    type=click.IntRange(0, 10_000),
    default=10,
    show_default=True,
    help="State changes shown, newest first.",
)
@json_option
@redis_option
def breakers_show(app: str, breaker_id: str, limit: int, as_json: bool, redis: str | None) -> None:
    """Show one breaker: its definition, state, counts and latest state changes."""
    out = output(as_json)

    async def act(q: Any) -> None:
        m = _manager(q)
        st = await m.get_stats(breaker_id)
        hist = await m.history(breaker_id, limit)
        if as_json:
            out.json({**st.to_dict(), "history": [h.to_dict() for h in hist]})
            return
        _show_breakers(False, [st])
        th = st.config.failure_threshold
        out.line(
            "threshold",
            f"{th.percentage:g}% of >= {th.min_requests}",
            f"window={st.config.window}ms",
            f"timeout={st.config.timeout}ms",
            f"probes={st.config.half_open_probes}",
            f"probe_timeout={st.config.probe_timeout}ms",
        )
        out.line("reason", st.reason or "-")
        out.table(
            ["at", "change", "reason"],
            [[when(h.at_ms), f"{h.from_state} -> {h.to_state}", h.reason] for h in hist],
        )

    with_single_queue(app, redis, act)


@breakers.command("reset")
@click.argument("app")
@click.argument("breaker_id")
@click.option("--reason", default="", help="Recorded with the state change.")
@json_option
@redis_option
def breakers_reset(
    app: str, breaker_id: str, reason: str, as_json: bool, redis: str | None
) -> None:
    """Close BREAKER_ID now; the jobs it held go back to wait."""
    st = with_single_queue(app, redis, lambda q: _manager(q).reset(breaker_id, reason))
    if as_json:
        click.echo(json.dumps(st.to_dict(), indent=2))
    else:
        _show_breakers(False, [st])


@breakers.command("open")
@click.argument("app")
@click.argument("breaker_id")
@click.option(
    "--duration", type=int, default=None, help="ms to stay open (default: the breaker's timeout)."
)
@click.option("--reason", default="", help="Recorded with the state change.")
@json_option
@redis_option
def breakers_open(
    app: str, breaker_id: str, duration: int | None, reason: str, as_json: bool, redis: str | None
) -> None:
    """Open BREAKER_ID now: its bound jobs are held until it half-opens."""
    st = with_single_queue(
        app, redis, lambda q: _manager(q).force_open(breaker_id, duration, reason)
    )
    if as_json:
        click.echo(json.dumps(st.to_dict(), indent=2))
    else:
        _show_breakers(False, [st])


# ---------------------------------------------------------------------- parked
def _echo_reports(done: list[tuple[str, Any]]) -> None:
    """A repair's report per queue as JSON: one object, or a list for several queues."""
    items = [{"queue": name, **r.to_dict()} for name, r in done]
    click.echo(json.dumps(items[0] if len(items) == 1 else items, indent=2))


@click.group()
def parked() -> None:
    """Parked jobs (pending behind a blocker): list, show, repair their sets."""


@parked.command("rebuild")
@click.argument("app")
@click.option("--blocker", default=None, help="Only the jobs parked behind this blocker.")
@click.option("--dry-run", is_flag=True, help="Write nothing; report what a run would do.")
@click.option(
    "--keep-parked",
    is_flag=True,
    help="Leave the jobs put back in their sets (default: on to wait, where each is "
    "parked again if its blocker still holds). Only when every blocker is live.",
)
@json_option
@redis_option
def parked_rebuild(
    app: str,
    blocker: str | None,
    dry_run: bool,
    keep_parked: bool,
    as_json: bool,
    redis: str | None,
) -> None:
    """Rebuild APP's parked sets from the job records: after a blocker's set was
    overwritten with another type or deleted (slot-errors names it: 'damaged:<key>'),
    its jobs stay pending for ever. Each is put back, the damaged set replaced, the
    counts recomputed (parking.rebuild_parked). Every queue of a partitioned APP."""
    from ..parking import rebuild_parked

    async def act(q: Any) -> list[tuple[str, Any]]:
        return [
            (m.name, await rebuild_parked(m, blocker, dry_run=dry_run, release=not keep_parked))
            for m in members(q)
        ]

    done = with_queue(app, redis, act)
    if as_json:
        _echo_reports(done)
        return
    for name, r in done:
        after = "-" if r.total_after is None else r.total_after
        click.echo(
            row(
                "dry run" if r.dry_run else "rebuilt",
                name,
                f"pending={r.pending}",
                f"restored={r.restored}",
                f"released={r.released}",
                f"skipped={r.skipped}",
                f"sets={r.sets_rebuilt}",
                f"damaged={r.damaged_replaced}",
                f"index_fixed={r.index_fixed}",
                f"total={r.total_before}->{after}",
            )
        )
        for key in r.damaged_keys:
            click.echo(row("damaged key", key, "would be replaced" if r.dry_run else "replaced"))


# ---------------------------------------------------------------------- orphans
@jobs.command("orphans")
@click.argument("app")
@click.option("--repair", is_flag=True, help="Put each one back where its status says.")
@click.option(
    "--lease-ms",
    type=int,
    default=None,
    help="Lease given back to a running one (default: the queue's lock_duration).",
)
@json_option
@redis_option
def jobs_orphans(
    app: str, repair: bool, lease_ms: int | None, as_json: bool, redis: str | None
) -> None:
    """Find APP's job records that no state set lists (a set evicted or deleted, a
    script refused part-way by an ACL rule): no worker runs them and no listing shows
    them. Reports them (nothing written); --repair puts each back where its status
    says (orphans.find_orphans). Every queue of a partitioned APP."""
    from ..orphans import find_orphans

    async def act(q: Any) -> list[tuple[str, Any]]:
        return [
            (m.name, await find_orphans(m, repair=repair, lease_ms=lease_ms)) for m in members(q)
        ]

    done = with_queue(app, redis, act)
    if as_json:
        _echo_reports(done)
        return
    for name, r in done:
        statuses = ",".join(f"{s}:{n}" for s, n in sorted(r.by_status.items())) or "-"
        click.echo(
            row(
                "put back" if r.repaired else "found",
                name,
                f"examined={r.examined}",
                f"orphans={r.orphans}",
                f"by_status={statuses}",
                f"parked={r.parked}",
                f"unknown={r.unknown}",
                f"damaged={r.damaged}",
            )
        )
        for job_id in r.job_ids:
            click.echo(row("orphan", text_field(job_id)))
        if r.orphans > len(r.job_ids):  # the report lists the first LISTED
            click.echo(row("more", f"{r.orphans - len(r.job_ids)} orphans not listed"))
        for job_id in r.other_ids:
            click.echo(row("left alone", text_field(job_id)))
        if r.parked:
            click.echo(row("hint", f"kitium-queue parked rebuild {app} (parked jobs)"))
        if r.orphans and not r.repaired:
            click.echo(row("hint", f"kitium-queue jobs orphans {app} --repair"))
